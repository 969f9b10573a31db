"""The ``edgemm`` command line: a click group whose commands load lazily.

``edgemm --help`` imports neither torch nor onnxruntime. User errors (:class:`EdgemmError`) print
``Error:`` and ``Hint:`` lines and exit with their code; anything else is a bug and keeps its
traceback.

``-v`` / ``-vv`` / ``-q`` are accepted before the command and after it (``edgemm -v predict`` and
``edgemm predict -v`` mean the same); :mod:`edgemm.cli.output` turns them into log levels, and
draws progress on stderr when it is a terminal.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import click

from edgemm import __version__, progress
from edgemm.cli import output
from edgemm.errors import EdgemmError
from edgemm.fsio import os_error

# name → (module, attribute, one-line help); modules are imported only when the command runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("edgemm.cli.train_cmd", "train", "Fine-tune a fusion model or a Hugging Face classifier (digit-match reference by default)."),
    "export": ("edgemm.cli.export_cmd", "export", "Export a checkpoint to a verified, torch-free bundle."),
    "predict": ("edgemm.cli.predict_cmd", "predict", "Run a bundle on text / image / audio inputs."),
    "inspect": ("edgemm.cli.inspect_cmd", "inspect", "Show a bundle's manifest: inputs, artifacts, validation."),
    "verify": ("edgemm.cli.verify_cmd", "verify", "Check a bundle's hashes and re-run its golden set here."),
    "bench": ("edgemm.cli.bench_cmd", "bench", "Benchmark a bundle beside PyTorch, torch.compile and Optimum."),
    "serve": ("edgemm.cli.serve_cmd", "serve", "Serve a bundle as a local API and kiosk page (torch-free)."),
    "keygen": ("edgemm.cli.deploy_cmd", "keygen", "Create an Ed25519 key pair for signing archives."),
    "pack": ("edgemm.cli.deploy_cmd", "pack", "Pack a bundle into one signed .edgemm archive."),
    "install": ("edgemm.cli.deploy_cmd", "install", "Install a signed archive on a device, atomically."),
    "build-engine": ("edgemm.cli.build_engine_cmd", "build_engine", "Build TensorRT engines for a bundle on this device."),
    "triton": ("edgemm.cli.triton_cmd", "triton", "Write a Triton Inference Server model repository for a bundle."),
}


VERBOSE_HELP = ("More on stderr: -v info (the artifact chosen and why, variant outcomes) and other "
                "libraries' warnings; -vv debug.")
QUIET_HELP = "Errors only on stderr: no warnings, no progress. The result still prints."


class LazyGroup(click.Group):
    """A group that imports each command's module on first use (fast, torch-free ``--help``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, from the table (nothing is imported)."""
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """Import the named command's module and return the command (None for an unknown name)."""
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return _with_output_options(getattr(importlib.import_module(module), attr))

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; an :class:`EdgemmError` becomes ``Error:`` / ``Hint:`` and its exit code.

        An :class:`OSError` that the machine caused (:data:`edgemm.fsio.ENVIRONMENTAL`: full disk,
        file size limit, permissions, read-only filesystem, wrong kind of path, address in use)
        is shown the same way, as its typed error, wherever it surfaced.

        With ``--json``, every outcome is one JSON document on stdout: a user error's, a usage
        error's (click's own, exit 2) and a bug's (``E_INTERNAL``, exit 1; its traceback still
        goes to stderr).
        """
        # Read before the subcommand consumes them: a usage error can precede --json's callback.
        raw_args = list(ctx.args)
        try:
            try:
                return super().invoke(ctx)
            finally:
                progress.finish()  # no half-drawn line before an error, a JSON document or a traceback
        except EdgemmError as exc:
            raise UserFacingError(exc, as_json=_wants_json(ctx, raw_args)) from exc
        except click.UsageError as exc:
            if _wants_json(ctx, raw_args):
                emit_json({"ok": False, "error": {"code": "E_USAGE", "message": exc.format_message(),
                                                  "hint": _usage_hint(exc), "details": {}}})
            raise
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            # A full disk, a file size limit, a permission, a read-only filesystem, a port in use:
            # the machine's fault wherever it surfaced, so never a traceback. Others are bugs.
            mapped = os_error(exc) if isinstance(exc, OSError) else None
            if mapped is not None:
                raise UserFacingError(mapped, as_json=_wants_json(ctx, raw_args)) from exc
            if _wants_json(ctx, raw_args):
                emit_json({"ok": False, "error": internal_error(exc)})
            raise

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text comes from COMMANDS so listing commands imports nothing.
        """The command list in ``--help``, from the table, so listing them imports nothing."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, info[2]) for name, info in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgemm")
@click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """edgemm: multimodal fusion models → verified, torch-free edge bundles."""
    obj = ctx.ensure_object(dict)
    obj["verbose"] = obj.get("verbose", 0) + verbose
    obj["quiet"] = obj.get("quiet", False) or quiet
    _apply_output(ctx)


def _apply_output(ctx: click.Context) -> None:
    """Set log levels and progress from the ``-v`` / ``-q`` seen so far (before or after the command)."""
    root = ctx.find_root()
    obj = root.ensure_object(dict)
    if obj.get("quiet") and obj.get("verbose"):
        raise click.UsageError("-q (errors only) and -v (more output) ask for opposite things.", ctx=ctx)
    current = obj.get("output")
    if current is None:
        current = obj["output"] = output.Output()
        root.call_on_close(current.restore)
    current.apply(-1 if obj.get("quiet") else obj.get("verbose", 0), command=root.invoked_subcommand)


def _more_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:
        obj = ctx.find_root().ensure_object(dict)
        obj["verbose"] = obj.get("verbose", 0) + value
        _apply_output(ctx)


def _quieter(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().ensure_object(dict)["quiet"] = True
        _apply_output(ctx)


def _with_output_options(command: click.Command) -> click.Command:
    """``command`` accepting ``-v`` / ``-q`` after its name too, as the group does before it."""
    if not any(param.name in ("verbose", "quiet") for param in command.params):
        command.params += [
            click.Option(["-v", "--verbose"], count=True, expose_value=False, is_eager=True,
                         callback=_more_verbose, help=VERBOSE_HELP),
            click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True,
                         callback=_quieter, help=QUIET_HELP),
        ]
    return command


class UserFacingError(click.ClickException):
    """An :class:`EdgemmError` shown as ``Error:`` / ``Hint:`` (and one JSON document with --json)."""

    def __init__(self, error: EdgemmError, *, as_json: bool = False):
        super().__init__(error.message)
        self.error = error
        self.exit_code = error.exit_code
        self.as_json = as_json

    def show(self, file: Any = None) -> None:
        """Print the error: ``Error:`` / ``Hint:`` on stderr, plus one JSON document on stdout with ``--json``."""
        if self.as_json:
            emit_json({"ok": False, "error": self.error.to_dict()})
        click.echo(f"Error: {self.error.message}", err=True)
        if self.error.hint:
            click.echo(f"Hint: {self.error.hint}", err=True)


def _wants_json(ctx: click.Context, raw_args: list[str]) -> bool:
    """Whether the command line asked for ``--json`` (seen by its callback, or among the raw args)."""
    if (ctx.obj or {}).get("json"):
        return True
    before_separator = raw_args[: raw_args.index("--")] if "--" in raw_args else raw_args
    return "--json" in before_separator


def _usage_hint(exc: click.UsageError) -> str:
    command = exc.ctx.command_path if exc.ctx is not None else "edgemm"
    return f"See `{command} --help`."


def internal_error(exc: BaseException) -> dict[str, Any]:
    """The ``--json`` error document of a bug in edgemm (``E_INTERNAL``); its traceback goes to stderr."""
    return {
        "code": "E_INTERNAL",
        "message": f"Internal error: {type(exc).__name__}: {exc}",
        "hint": "This is a bug in edgemm. The traceback is on stderr; please report it with the command you ran.",
        "details": {"exception": type(exc).__name__},
    }


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        root = ctx.find_root()
        root.ensure_object(dict)["json"] = True
        # Whatever a library prints while the command runs goes to stderr, not into the document.
        # (The root context: it is closed even when a later option fails to parse.)
        root.with_resource(output.json_stdout())
    return value


def json_option(func: Any) -> Any:
    """``--json``: print exactly one JSON document on stdout (errors included)."""
    return click.option("--json", "as_json", is_flag=True, is_eager=True, callback=_remember_json,
                        help="Print one JSON document on stdout.")(func)


def warn(message: str) -> None:
    """Print ``Warning: message`` on stderr, unless ``-q`` asked for errors only."""
    if output.verbosity() >= 0:
        with progress.suspended():
            click.echo(f"Warning: {message}", err=True)


def emit_json(document: Any) -> None:
    """Print exactly one JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=_json_default), file=output.document_stream())


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the CLI and exits with its code."""
    cli.main(args=argv, prog_name="edgemm")
