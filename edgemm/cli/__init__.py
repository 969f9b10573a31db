"""The ``edgemm`` command line: a click group whose commands load lazily.

``edgemm --help`` imports neither torch nor onnxruntime. User errors (:class:`EdgemmError`) print
``Error:`` and ``Hint:`` lines and exit with their code; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from typing import Any

import click

from edgemm import __version__
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
        return getattr(importlib.import_module(module), attr)

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
            return super().invoke(ctx)
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
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """edgemm: multimodal fusion models → verified, torch-free edge bundles."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgemm").setLevel(logging.INFO if verbose == 0 else level)
    ctx.ensure_object(dict)


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
        ctx.find_root().ensure_object(dict)["json"] = True
    return value


def json_option(func: Any) -> Any:
    """``--json``: print exactly one JSON document on stdout (errors included)."""
    return click.option("--json", "as_json", is_flag=True, is_eager=True, callback=_remember_json,
                        help="Print one JSON document on stdout.")(func)


def emit_json(document: Any) -> None:
    """Print exactly one JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the CLI and exits with its code."""
    cli.main(args=argv, prog_name="edgemm")
