"""Where in the user's code an exporter warning or error comes from, and the exporters' noise.

Tracing records one path through ``forward()``. A Python ``if`` / ``int()`` / ``float()`` on a
tensor is frozen to what the example inputs did: torch says so with a ``TracerWarning`` (legacy
exporter) or refuses with a data-dependent guard error (dynamo exporter). Both are reported with
the *user's* ``file:line`` — the frame in the model's own code, not torch's — and never swallowed.
The same shape checks also fire inside transformers, torch and edgemm's own building blocks
(``if num_channels != self.num_channels``); those are library code tested on its own, so they go
to the debug log with the rest of the exporters' output.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import linecache
import logging
import os
import re
import sys
import sysconfig
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger("edgemm.export")

# Packages whose code is not the user's: shape checks in them are tested library behaviour.
LIBRARY_PACKAGES = ("torch", "transformers", "edgemm", "onnx", "onnxscript", "numpy", "timm", "torchvision",
                    "torchaudio", "open_clip", "safetensors", "tokenizers", "huggingface_hub", "accelerate",
                    "optimum", "functorch", "sympy")
# TracerWarnings that mean "this trace may be wrong for other inputs" (a constant from
# torch.tensor(...) is not one: its value is the same every call unless another warning fires).
_HAZARD = "might cause the trace to be incorrect"


@dataclass(frozen=True)
class CodeLocation:
    """A line of Python source: file, line number and the code on it."""

    file: str
    line: int
    code: str = ""

    @property
    def short(self) -> str:
        """``file.py:12`` for messages (relative to the working directory where possible)."""
        path = Path(self.file)
        with contextlib.suppress(ValueError):
            path = path.resolve().relative_to(Path.cwd().resolve())
        return f"{path}:{self.line}"

    def to_record(self) -> dict[str, Any]:
        """Manifest record: base name only, so a shipped bundle carries no local paths."""
        return {"where": f"{Path(self.file).name}:{self.line}", "code": self.code}


@dataclass(frozen=True)
class TracerHazard:
    """One tracer warning raised from the user's code."""

    location: CodeLocation
    message: str

    def describe(self) -> str:
        """``model.py:12 `if x.sum() > 0:` — Converting a tensor to a Python boolean …``."""
        code = f" `{self.location.code}`" if self.location.code else ""
        return f"{self.location.short}{code}: {first_sentence(self.message)}"

    def to_record(self) -> dict[str, Any]:
        """The manifest's record of an accepted hazard (``validation.tracer_warnings``)."""
        return {**self.location.to_record(), "message": first_sentence(self.message)}


def first_sentence(text: str) -> str:
    """The first sentence of a (long) warning or error text."""
    text = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return (match.group(1) if match else text)[:300]


class UserCode:
    """Tells the user's source files from library files (torch, transformers, edgemm, stdlib …).

    Args:
        module: The model being exported: the files defining its submodules' classes are the
            user's, unless they belong to a library package (a transformers ``BertModel`` inside
            the user's model is library code).
    """

    def __init__(self, module: Any = None):
        self._libraries, self._installed = _library_dirs()
        self._user: set[str] = set()
        modules = module.modules() if hasattr(module, "modules") else [module] if module is not None else []
        for sub in modules:
            with contextlib.suppress(TypeError, OSError):
                source = inspect.getsourcefile(type(sub))
                # A model class installed with pip (site-packages) is still the user's code.
                if source and not _under(_norm(source), self._libraries):
                    self._user.add(_norm(source))

    def is_user(self, filename: str | None) -> bool:
        """Whether ``filename`` is the user's code (their model's files or any file outside libraries)."""
        if not filename or filename.startswith("<"):
            return False
        path = _norm(filename)
        return path in self._user or not _under(path, self._libraries + self._installed)

    def innermost(self, tb: TracebackType | None) -> CodeLocation | None:
        """The innermost frame of a traceback that is the user's code."""
        found = None
        for frame in traceback.extract_tb(tb):
            if self.is_user(frame.filename):
                found = CodeLocation(frame.filename, frame.lineno or 0, (frame.line or "").strip())
        return found

    def locate_error(self, exc: BaseException) -> CodeLocation | None:
        """Where in the user's code an exception (or one it was raised from) happened."""
        best = None
        for link in exception_chain(exc):
            best = self.innermost(link.__traceback__) or best
        if best is not None:
            return best
        # torch.export in strict mode reports the user's frame only in its message.
        for link in exception_chain(exc):
            for file, line in re.findall(r'File "([^"]+)", line (\d+)', str(link)):
                if self.is_user(file):
                    best = location(file, int(line))
        return best


def first_line(exc: BaseException) -> str:
    """The informative line of an exporter error (torch wraps the cause in a long preamble)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1:]
        if after:
            return after[0][:500]
    return lines[0][:500]


def location(file: str, line: int) -> CodeLocation:
    """A :class:`CodeLocation` with its source line read from the file."""
    return CodeLocation(file, line, linecache.getline(file, line).strip())


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _under(path: str, folders: tuple[str, ...]) -> bool:
    return any(path == d or path.startswith(d + os.sep) for d in folders)


def _library_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the library packages' and the standard library's folders, site-packages folders)."""
    paths = sysconfig.get_paths()
    libraries = {_norm(paths[key]) for key in ("stdlib", "platstdlib") if paths.get(key)}
    for name in LIBRARY_PACKAGES:
        for folder in getattr(sys.modules.get(name), "__path__", None) or []:
            libraries.add(_norm(folder))
    installed = {_norm(paths[key]) for key in ("purelib", "platlib") if paths.get(key)}
    return tuple(sorted(libraries)), tuple(sorted(installed - libraries))


@dataclass
class ExporterOutput:
    """What the exporter said while it ran: the user's tracer hazards and everything else."""

    hazards: list[TracerHazard] = field(default_factory=list)
    library_warnings: int = 0
    text: str = ""


@contextlib.contextmanager
def capture_exporter_output(user: UserCode) -> Iterator[ExporterOutput]:
    """Collect tracer warnings from the user's code; keep the rest of the exporters' output off the terminal.

    The exporters' prints, logs and other warnings go to the debug log (``-vv``). A
    ``TracerWarning`` raised from the user's code is collected (with its file and line) for the
    caller to refuse or record; one raised inside a library is counted and logged at debug.
    """
    captured = ExporterOutput()
    sink = io.StringIO()
    seen: set[tuple[str, int]] = set()
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level

    def on_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        text = str(message)
        if category.__name__ == "TracerWarning" and _HAZARD in text:
            if user.is_user(filename):
                if (filename, lineno) not in seen:
                    seen.add((filename, lineno))
                    captured.hazards.append(TracerHazard(location(filename, lineno), text))
                return
            captured.library_warnings += 1
        sink.write(f"{category.__name__} at {filename}:{lineno}: {first_sentence(text)}\n")

    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("always")
        warnings.showwarning = on_warning
        torch_logger.setLevel(logging.ERROR)
        try:
            yield captured
        finally:
            torch_logger.setLevel(level)
            captured.text = sink.getvalue()
            if captured.text:
                log.debug("exporter output:\n%s", captured.text)
            if captured.library_warnings:
                log.debug("%d tracer warning(s) from library code (shape checks in torch / transformers), "
                          "not from the model's own code", captured.library_warnings)
