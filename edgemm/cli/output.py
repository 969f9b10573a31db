"""What a command writes besides its result: log levels for ``-v`` / ``-q``, third-party noise,
progress on a terminal, and a stdout that holds nothing but the JSON document under ``--json``.

Verbosity (``-q`` is -1, ``-v`` 1, ``-vv`` 2):

=========  ==================  =============================================  ==========
verbosity  edgemm's loggers    other libraries (onnxruntime, nncf, openvino,  progress
                               transformers, Python warnings)
=========  ==================  =============================================  ==========
-1 (-q)    errors              errors                                         never
0          warnings            errors                                         on a TTY
1 (-v)     info                warnings                                       on a TTY
2 (-vv)    debug               warnings                                       on a TTY
=========  ==================  =============================================  ==========

A daemon's own lifecycle (``edgemm serve``: loaded, reloaded, rolled back, requests) is its
output, so its logger stays at info at verbosity 0; ``-q`` still silences it.

Standard library only: ``edgemm --help`` and ``predict`` load this module.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import IO, Any

from edgemm import progress

FORMAT = "%(levelname)s %(name)s: %(message)s"
# Commands whose log is their output (a daemon's journal): logger → level at verbosity 0.
DAEMON_LOGGERS: dict[str, dict[str, int]] = {"serve": {"edgemm.serve": logging.INFO}}
_NNCF = "nncf"
_ORT_SEVERITY = {True: 2, False: 3}  # onnxruntime's default logger: warnings with -v, else errors
_ORT_DEFAULT_SEVERITY = 2

_EDGEMM_LEVEL = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_OTHERS_LEVEL = {-1: logging.ERROR, 0: logging.ERROR, 1: logging.WARNING, 2: logging.WARNING}


def levels(verbosity: int, command: str | None = None) -> dict[str, int]:
    """The level of each logger edgemm sets for a verbosity (``""`` is the root logger).

    Args:
        verbosity: -1 (``-q``), 0, 1 (``-v``), 2 or more (``-vv``).
        command: The subcommand, for :data:`DAEMON_LOGGERS`.

    Returns:
        ``{logger name: level}``: ``edgemm``, the root (every other library), ``nncf``,
        ``transformers`` and ``py.warnings`` (Python's warnings).
    """
    verbosity = max(-1, min(2, verbosity))
    others = _OTHERS_LEVEL[verbosity]
    table = {"": others, "edgemm": _EDGEMM_LEVEL[verbosity], _NNCF: others, "transformers": others,
             "py.warnings": others}
    if verbosity == 0:
        table.update(DAEMON_LOGGERS.get(command or "", {}))
    return table


_verbosity = 0


def verbosity() -> int:
    """The verbosity of the command running now: -1 (``-q``), 0, 1 (``-v``) or 2 (``-vv``)."""
    return _verbosity


class Output:
    """The process's logging and progress set up for one command, undone by :meth:`restore`.

    Undoing matters where the CLI runs inside another program (click's ``CliRunner``, a
    notebook calling ``main``): its handler, levels and hooks do not outlive the command.
    """

    def __init__(self) -> None:
        self.handler: progress.ProgressHandler | None = None
        self.saved_levels: dict[str, int] = {}
        self.captured_warnings = False
        self.saved_env: dict[str, str | None] = {}
        self.hooks: _AfterImport | None = None
        self.undo: dict[str, Callable[[], None]] = {}

    def apply(self, verbosity: int, *, command: str | None = None, stream: IO[str] | None = None) -> None:
        """Set logging, third-party noise and progress for ``verbosity`` (again: replaces the last)."""
        global _verbosity
        stream = stream or sys.stderr
        _verbosity = verbosity
        table = levels(verbosity, command)
        for name, level in table.items():
            logger = logging.getLogger(name)
            self.saved_levels.setdefault(name, logger.level)
            logger.setLevel(level)
        root = logging.getLogger()
        if self.handler is not None:
            root.removeHandler(self.handler)
        self.handler = progress.ProgressHandler(stream)
        self.handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(self.handler)
        if not self.captured_warnings:
            logging.captureWarnings(True)  # Python warnings become records of "py.warnings"
            self.captured_warnings = True
        # transformers reads this once, when its logging is first set up (lazily, later).
        self._set_env("TRANSFORMERS_VERBOSITY", "warning" if verbosity >= 1 else "error")
        if self.hooks is None:
            self.hooks = _AfterImport()
            sys.meta_path.insert(0, self.hooks)
        self.hooks.after("transformers", lambda _module: self._tame("transformers", _tame_transformers,
                                                                    table["transformers"]))
        self.hooks.after(_NNCF, lambda _module: self._tame(_NNCF, _tame_nncf, table[_NNCF]))
        self.hooks.after("onnxruntime", lambda module: self._tame("onnxruntime", _tame_onnxruntime, module,
                                                                   verbosity >= 1))
        progress.configure(enabled=verbosity >= 0 and progress.is_terminal(stream), stream=stream)

    def restore(self) -> None:
        """Undo :meth:`apply`: handler, levels, warnings capture, environment, import hooks, progress."""
        global _verbosity
        _verbosity = 0
        progress.finish()
        progress.configure(enabled=False)
        if self.hooks is not None:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self.hooks)
            self.hooks = None
        for undo in self.undo.values():
            with contextlib.suppress(Exception):
                undo()
        self.undo.clear()
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler = None
        for name, level in self.saved_levels.items():
            logging.getLogger(name).setLevel(level)
        self.saved_levels.clear()
        if self.captured_warnings:
            logging.captureWarnings(False)
            self.captured_warnings = False
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.saved_env.clear()

    def _tame(self, name: str, tame: Callable[..., Callable[[], None]], *args: Any) -> None:
        undo = tame(*args)
        self.undo.setdefault(name, undo)  # the first undo restores the library's own setup

    def _set_env(self, key: str, value: str) -> None:
        if key not in self.saved_env:
            if key in os.environ:  # the user's own choice wins
                return
            self.saved_env[key] = None
        os.environ[key] = value


def _tame_transformers(level: int) -> Callable[[], None]:
    # transformers has its own stderr handler and does not propagate: route it through ours so
    # its records respect the progress line, at the level the verbosity gives.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity(level)
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()

    def undo() -> None:
        hf_logging.disable_propagation()
        hf_logging.enable_default_handler()

    return undo


def _tame_nncf(level: int) -> Callable[[], None]:
    # nncf logs INFO lines to *stdout* through its own handler: that would break --json.
    logger = logging.getLogger(_NNCF)
    handlers, propagate = list(logger.handlers), logger.propagate
    for handler in handlers:
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(level)

    def undo() -> None:
        for handler in handlers:
            logger.addHandler(handler)
        logger.propagate = propagate

    return undo


def _tame_onnxruntime(module: ModuleType, warnings: bool) -> Callable[[], None]:
    setter = getattr(module, "set_default_logger_severity", None)
    if setter is not None:
        setter(_ORT_SEVERITY[warnings])
    return lambda: setter(_ORT_DEFAULT_SEVERITY) if setter is not None else None


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback once a module has been imported (at once if it already is).

    Heavy libraries are imported lazily, deep inside a command, and some configure their
    logging at import (nncf adds a stdout handler): the callback fixes that right after.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Callable[[ModuleType], None]] = {}

    def after(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        """Call ``callback(module)`` once ``name`` is imported (now, if it already is)."""
        module = sys.modules.get(name)
        if module is not None:
            self.pending.pop(name, None)
            _safely(callback, module)
        else:
            self.pending[name] = callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        """Find ``fullname`` with the other finders and wrap its loader when a callback waits for it."""
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ThenLoader(spec.loader, self.pending.pop(fullname))
        return spec


class _ThenLoader(importlib.abc.Loader):
    """A loader that runs the real one, puts it back in the module's spec, then the callback."""

    def __init__(self, inner: Any, callback: Callable[[ModuleType], None]):
        self.inner = inner
        self.callback = callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        """The real loader's module (None: the default)."""
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        """Execute the module with the real loader, then run the callback."""
        module.__loader__ = self.inner
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner
        self.inner.exec_module(module)
        _safely(self.callback, module)


def _safely(callback: Callable[[ModuleType], None], module: ModuleType) -> None:
    try:
        callback(module)
    except Exception as exc:  # quieting a library must never break the command
        logging.getLogger("edgemm.cli").debug("could not quiet %s: %s", module.__name__, exc)


# -- --json: stdout holds the one document ------------------------------------------------------

_json_stdout: IO[str] | None = None


@contextlib.contextmanager
def json_stdout() -> Iterator[None]:
    """While a ``--json`` command runs, anything printed to ``sys.stdout`` goes to stderr.

    Libraries print (calibrators, nncf's progress, a user's factory): only :func:`document_stream`
    reaches the real stdout, so it holds exactly one JSON document.
    """
    global _json_stdout
    if _json_stdout is not None:
        yield
        return
    _json_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = _json_stdout
        _json_stdout = None


def document_stream() -> IO[str]:
    """Where the JSON document goes: the real stdout, also while :func:`json_stdout` is active."""
    return _json_stdout if _json_stdout is not None else sys.stdout
