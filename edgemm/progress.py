"""Progress on stderr for the steps that take a while: a spinner for stages, a counter for loops.

Library code marks its slow steps and loops::

    with progress.stage("Exporting to ONNX"):
        ...
    for feed in progress.track(feeds, label="batches"):
        ...

Nothing is drawn unless :func:`configure` turned progress on, which the command line does only
when stderr is a terminal and ``-q`` was not given: off a terminal (pipes, log files, CI,
``--json`` captured by a program) not one byte is written. Turned off, :func:`stage` and
:func:`track` cost an attribute read, so they are safe in any loop.

One line is drawn and redrawn in place, never wider than the terminal (a narrow one gets a
shorter line, never a wrapped one). Log records share stderr with it: :class:`ProgressHandler`
clears the line before a record prints and redraws it after, so no record lands in a
half-drawn bar. A top-level stage that took longer than :data:`KEEP_AFTER_S` leaves one line
saying how long it took.

This module imports only the standard library: the torch-free edge side (bench) uses it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")

TICK_S = 0.1           # how often the spinner and the elapsed time are redrawn
KEEP_AFTER_S = 1.0     # a top-level stage that took longer leaves a line with its time
BAR_WIDTH = 20
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_ASCII_SPINNER = "|/-\\"
_CLEAR = "\r\x1b[2K"   # carriage return, erase the whole line


class Stage:
    """A step in progress: its label, when it began and, for a loop, how far it got.

    Attributes:
        label: What is happening, e.g. ``"Quantizing int8"``.
        total: How many items the step has (None: not a counted loop).
        done: How many items are finished.
        start: ``time.monotonic()`` when the step began.
    """

    __slots__ = ("done", "is_step", "label", "start", "total")

    def __init__(self, label: str, total: int | None = None, *, is_step: bool = False):
        self.label = label
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.is_step = is_step

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more items as finished."""
        self.done += count

    def update(self, label: str) -> None:
        """Say what the step is doing now (the line shows it at the next redraw)."""
        self.label = label


class _Renderer:
    """The one progress line on a terminal: a stack of stages, a ticker thread, a lock."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.lock = threading.RLock()
        self.stack: list[Stage] = []
        self.shown = False
        self.frame = 0
        self.spinner = _SPINNER if _encodes(stream, _SPINNER + "›…✓") else _ASCII_SPINNER
        self.ascii = self.spinner is _ASCII_SPINNER
        self.ticker: threading.Thread | None = None
        self.stop = threading.Event()
        self.drawn_at = 0.0

    # -- the stack ---------------------------------------------------------------------------

    def push(self, stage: Stage) -> None:
        with self.lock:
            self.stack.append(stage)
            # A ticker told to stop may still be finishing its last wait: start a fresh one.
            if self.ticker is None or not self.ticker.is_alive() or self.stop.is_set():
                self.stop = threading.Event()
                self.ticker = threading.Thread(target=self._tick, args=(self.stop,), name="edgemm-progress",
                                               daemon=True)
                self.ticker.start()
            # A new line is drawn at once; stages opened in a tight loop wait for the ticker.
            if len(self.stack) == 1 or time.monotonic() - self.drawn_at >= TICK_S / 2:
                self.draw()

    def pop(self, stage: Stage, *, succeeded: bool) -> None:
        with self.lock:
            top_level = bool(self.stack) and self.stack[0] is stage
            if stage in self.stack:
                self.stack.remove(stage)
            elapsed = time.monotonic() - stage.start
            if top_level and succeeded and elapsed >= KEEP_AFTER_S:
                self.clear()
                done = "*" if self.ascii else "✓"
                self._write(_fit(f"{done} {stage.label} ({_seconds(elapsed)})", self.width()) + "\n")
            if self.stack:
                self.draw()
            else:
                self.clear()
                self.stop.set()

    def end_step(self, *, succeeded: bool) -> None:
        """Close the open :func:`step` and whatever was left open inside it."""
        with self.lock:
            steps = [i for i, s in enumerate(self.stack) if s.is_step]
            if not steps:
                return
            inner = self.stack[steps[-1]:]
            for leftover in reversed(inner[1:]):
                self.pop(leftover, succeeded=False)
            self.pop(inner[0], succeeded=succeeded)

    def reset(self) -> None:
        with self.lock:
            self.stack.clear()
            self.clear()
            self.stop.set()

    # -- drawing -----------------------------------------------------------------------------

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(TICK_S):
            with self.lock:
                if stop.is_set():
                    return
                self.frame += 1
                self.draw()

    def width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            given = os.environ.get("COLUMNS", "")
            columns = int(given) if given.isdigit() else 80
        return max(0, columns - 1)  # the last column would wrap on some terminals

    def draw(self) -> None:
        if not self.stack:
            return
        line = render(self.stack, self.width(), spinner=self.spinner[self.frame % len(self.spinner)],
                      ascii_only=self.ascii)
        self._write(_CLEAR + line)
        self.shown = True
        self.drawn_at = time.monotonic()

    def clear(self) -> None:
        if self.shown:
            self._write(_CLEAR)
            self.shown = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken terminal: progress is not worth an error
            self.stack.clear()
            self.stop.set()


_renderer: _Renderer | None = None
_configure_lock = threading.Lock()


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is a terminal that can redraw a line (not a pipe, a file or ``TERM=dumb``)."""
    try:
        return bool(stream is not None and stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError, OSError):
        return False


def configure(*, enabled: bool, stream: IO[str] | None = None) -> None:
    """Turn progress on or off for this process.

    Args:
        enabled: Draw progress. The command line passes ``is_terminal(sys.stderr) and not quiet``;
            library users get none unless they turn it on.
        stream: Where to draw (default: ``sys.stderr`` as it is now; kept, so that code which
            redirects ``sys.stderr`` for a while does not swallow the line).
    """
    global _renderer
    with _configure_lock:
        if _renderer is not None:
            _renderer.reset()
        _renderer = _Renderer(stream or sys.stderr) if enabled else None


def enabled() -> bool:
    """Whether progress is being drawn."""
    return _renderer is not None


@contextlib.contextmanager
def stage(label: str, *, total: int | None = None) -> Iterator[Stage]:
    """Show ``label`` with a spinner and the elapsed time while the block runs.

    Args:
        label: What is happening, in a few words (``"Quantizing int8"``).
        total: For a loop written by hand: its item count; call ``.advance()`` on the yielded
            :class:`Stage` per item and the line shows ``done/total`` and a bar.

    Yields:
        The :class:`Stage` (usable whether or not progress is drawn).
    """
    current = Stage(label, total)
    renderer = _renderer
    if renderer is None:
        yield current
        return
    renderer.push(current)
    succeeded = False
    try:
        yield current
        succeeded = True
    finally:
        renderer.pop(current, succeeded=succeeded)


def step(label: str) -> Stage:
    """End the step open now, if any, and begin this one: the phases of a long operation,
    marked only at their boundaries (no block to indent).

    The last step ends at the next :func:`step`, when the enclosing :func:`steps` block ends,
    or at :func:`finish`. Steps do not nest: inside one, use :func:`stage` and :func:`track`.

    Args:
        label: What the phase does (``"Checking parity with PyTorch"``).

    Returns:
        The step's :class:`Stage` (``advance`` / ``update`` work on it).
    """
    current = Stage(label, is_step=True)
    renderer = _renderer
    if renderer is not None:
        with renderer.lock:
            renderer.end_step(succeeded=True)
            renderer.push(current)
    return current


@contextlib.contextmanager
def steps() -> Iterator[None]:
    """A block whose :func:`step` calls end with it (the last one leaves its line on success)."""
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        renderer = _renderer
        if renderer is not None:
            renderer.end_step(succeeded=succeeded)


def track(iterable: Iterable[T], total: int | None = None, label: str = "") -> Iterable[T]:
    """Iterate ``iterable`` while the line counts the items: ``label 12/45 [#####·····]``.

    Args:
        iterable: What to loop over.
        total: Its length (default: ``len(iterable)`` where it has one; else a bare counter).
        label: What the items are (``"batches"``, ``"epoch 2/6"``).

    Returns:
        ``iterable`` itself when progress is off, else an iterator over the same items.
    """
    if _renderer is None:
        return iterable
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return _tracked(iterable, total, label)


def _tracked(iterable: Iterable[T], total: int | None, label: str) -> Iterator[T]:
    with stage(label, total=total) as current:
        for item in iterable:
            yield item
            current.advance()


def finish() -> None:
    """Forget every stage still open and clear the line (before an error or the result prints)."""
    renderer = _renderer
    if renderer is not None:
        renderer.reset()


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Clear the progress line while the block writes to the terminal, and redraw it after."""
    renderer = _renderer
    if renderer is None:
        yield
        return
    with renderer.lock:
        renderer.clear()
        try:
            yield
        finally:
            renderer.draw()


class ProgressHandler(logging.Handler):
    """A logging handler that writes records to a stream without tearing the progress line.

    The stream is fixed when the handler is made, as :class:`logging.StreamHandler` does, so a
    library that redirects ``sys.stderr`` for a while (the ONNX exporters' chatter is captured
    that way) does not swallow edgemm's own records.
    """

    def __init__(self, stream: IO[str] | None = None):
        super().__init__()
        self.stream = stream or sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        """Clear the progress line, write the record, redraw the line."""
        try:
            text = self.format(record) + "\n"
            with suspended():
                self.stream.write(text)
                self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


# -- rendering (pure functions) ---------------------------------------------------------------


def render(stack: list[Stage], width: int, *, spinner: str = "⠋", ascii_only: bool = False,
           now: float | None = None) -> str:
    """The progress line for a stack of stages, at most ``width`` terminal columns wide.

    Shows the spinner, every stage's label (outermost first) with its own ``done/total`` when it
    counts, a bar when the innermost stage counts, and the outermost stage's elapsed time. What
    does not fit goes in this order: the bar, the elapsed time, the start of the labels (the
    innermost stay).
    """
    if width <= 0 or not stack:
        return ""
    now = time.monotonic() if now is None else now
    sep = " > " if ascii_only else " › "
    labels = sep.join(s.label + _count(s) for s in stack if s.label or _count(s)).strip()
    counted = stack[-1]  # a bar only for the innermost stage: it is what moves
    bar = ""
    if counted.total:
        filled = round(BAR_WIDTH * min(counted.done, counted.total) / counted.total)
        bar = " [" + "#" * filled + ("." if ascii_only else "·") * (BAR_WIDTH - filled) + "]"
    elapsed = "  " + _clock(now - stack[0].start)
    head = f"{spinner} "
    for parts in ((labels, bar, elapsed), (labels, "", elapsed), (labels, "", "")):
        line = head + "".join(parts)
        if _width(line) <= width:
            return line
    room = width - _width(head)
    if room >= 2:
        return head + _clip_left(labels, room, "..." if ascii_only else "…")
    return _fit(head.strip(), width)


def _count(stage: Stage) -> str:
    if stage.total:
        return f" {min(stage.done, stage.total)}/{stage.total}"
    return f" {stage.done}" if stage.done else ""


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else _clock(seconds)


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(_char_width(c) for c in text)


def _fit(text: str, width: int) -> str:
    """``text`` cut at ``width`` columns (its end dropped)."""
    out, used = [], 0
    for char in text:
        used += _char_width(char)
        if used > width:
            break
        out.append(char)
    return "".join(out)


def _clip_left(text: str, width: int, ellipsis: str) -> str:
    """``text`` in ``width`` columns, its start replaced by ``ellipsis`` if it is too wide."""
    if _width(text) <= width:
        return text
    room = width - _width(ellipsis)
    if room <= 0:
        return _fit(text[-1:], width)
    out, used = [], 0
    for char in reversed(text):
        used += _char_width(char)
        if used > room:
            break
        out.append(char)
    return ellipsis + "".join(reversed(out))


def _encodes(stream: IO[str], text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
