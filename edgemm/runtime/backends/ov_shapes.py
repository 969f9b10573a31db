"""Static-shape compiles of an OpenVINO IR for the input shapes a kiosk keeps sending.

OpenVINO runs an IR with dynamic axes (batch, text length) by inferring shapes and placing
memory node by node on every call; compiled for one exact shape it does that once. On the
reference model (2-core EPYC, INT8) the static compile answered 1.34x faster at batch 1, 1.13x
at batch 8 and 1.15x at batch 32 (``benchmarks/results/cpu-amd-epyc-2c/openvino-levers.md``);
on BERT-base + ViT-B/16 sizes 1.02-1.04x (its time is in the matrix products). A kiosk sends the same few
shapes all day (its question cards' answers have a handful of lengths, its pictures one size),
so :class:`ShapeSpecializer` compiles for a shape once it has been seen a few times:

* in a background thread, so no request waits for a compile (~0.5 s for the reference model);
* checked before use: the first request of that shape after the compile runs both graphs, and
  the static one is adopted only if every output agrees with the dynamic one within the
  artifact precision's tolerance (:meth:`Tolerance.for_precision`, top-1 included); otherwise
  that shape stays on the dynamic graph for good, with a warning;
* bounded: a few shapes kept (least recently used leave first), a lifetime budget of compiles
  (a server whose shapes never repeat stops trying), and memory: each static compile holds its
  own copy of the compiled model, ~100 MB for the reference model's 23 MB IR at batch 1 or 8
  (measured RSS), so shapes are kept only as far as :data:`MEMORY_BUDGET_BYTES` reaches at
  :data:`COST_PER_WEIGHT_BYTE` times the IR's weights (the reference model: 2; BERT-base +
  ViT-B/16 sizes, 2-4 % to gain: none), and no compile starts while the machine has less than
  twice that free (``MemAvailable``).

``EDGEMM_OPENVINO_SHAPES``: ``0`` turns it off; a number sets how many shapes are kept, whatever
the memory estimate says. Engine-neutral and torch-free: the compile itself is a function the
OpenVINO backend passes in (:func:`edgemm.runtime.backends.openvino.static_compiler`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.compare import Tolerance, compare, top1_agreement
from edgemm.errors import UsageError

log = logging.getLogger("edgemm.runtime")

ENV = "EDGEMM_OPENVINO_SHAPES"
#: Most static compiles kept per IR (fewer where the memory budget says so).
DEFAULT_ENTRIES = 4
#: Sightings of a shape before it is compiled for.
DEFAULT_AFTER = 3
#: Memory all static compiles of one IR may take, estimated.
MEMORY_BUDGET_BYTES = 256 * 2**20
#: Estimated memory of one static compile per byte of the IR's weights (measured 4.3: ~100 MB
#: RSS per compile of the reference model's 23 MB ``ov-int8``, 2-core EPYC, OpenVINO 2026.4).
COST_PER_WEIGHT_BYTE = 4.5
#: Shapes whose sightings are counted (least recently seen forgotten first).
_SEEN_LIMIT = 256

Signature = tuple[tuple[str, tuple[int, ...]], ...]
#: Compiles the model for one signature (raises on failure: that shape stays dynamic).
StaticCompiler = Callable[[Signature], Any]


def configured_entries() -> int | None:
    """How many static compiles to keep per IR, from ``EDGEMM_OPENVINO_SHAPES`` (0: off; None:
    unset, the memory budget decides).

    Raises:
        UsageError: The variable is set to something other than a count.
    """
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{ENV}={raw!r} is not a count of shapes.",
                         hint="Use 0 (no static-shape compiles) or how many shapes to keep, e.g. 4.")
    return value


def specializer_for(xml: Path, compile_static: StaticCompiler, precision: str) -> ShapeSpecializer | None:
    """A :class:`ShapeSpecializer` for the IR ``xml`` (its weights size the memory estimate),
    or None where it is turned off or not one static compile fits the memory budget."""
    explicit = configured_entries()
    if explicit == 0:
        return None
    try:
        weights = xml.with_suffix(".bin").stat().st_size
    except OSError:
        weights = 0
    cost = int(COST_PER_WEIGHT_BYTE * weights)
    entries = explicit if explicit is not None else min(DEFAULT_ENTRIES, MEMORY_BUDGET_BYTES // max(cost, 1))
    if entries == 0:
        log.debug("no static-shape compiles for %s: one would take ~%d MB", xml.name, cost >> 20)
        return None
    return ShapeSpecializer(compile_static, Tolerance.for_precision(precision), entries=entries, cost=cost,
                            label=xml.name)


def available_memory() -> int | None:
    """``MemAvailable`` in bytes (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def signature(feed: dict[str, np.ndarray]) -> Signature:
    """The shapes of a feed, by input name (dtypes are fixed by the graph and checked before)."""
    return tuple(sorted((name, tuple(int(d) for d in value.shape)) for name, value in feed.items()))


def agree(static: dict[str, np.ndarray], dynamic: dict[str, np.ndarray], tolerance: Tolerance) -> bool:
    """Whether the static compile's outputs are the dynamic one's: same shapes and dtypes; floats
    pass the project's output comparison (:func:`~edgemm.bundle.compare.compare`: elementwise
    within ``tolerance``, cosine, finite) and pick exactly the same class per row; outputs with
    non-finite values, and non-float outputs, are equal."""
    for name, reference in dynamic.items():
        actual = static.get(name)
        if actual is None or actual.shape != reference.shape or actual.dtype != reference.dtype:
            return False
        if not np.issubdtype(reference.dtype, np.floating) or not np.isfinite(reference).all():
            if not np.array_equal(actual, reference, equal_nan=np.issubdtype(reference.dtype, np.floating)):
                return False
            continue
        if not compare("static-shape", name, reference, actual, tolerance, classify=False).passed:
            return False
        if reference.ndim >= 1 and reference.size and top1_agreement(actual, reference) < 1.0:
            return False  # no tie slack: a static compile must not flip even a near-tie
    return True


class ShapeSpecializer:
    """Static-shape compiles of one IR, made in the background for shapes seen often enough.

    Args:
        compile_static: Compiles the model for one signature (called in the background thread).
        tolerance: How far a static compile's outputs may be from the dynamic one's.
        entries: Static compiles kept (least recently used leave first).
        after: Sightings of a shape before it is compiled for.
        budget: Compiles over the specializer's life (default ``4 * entries``).
        cost: Estimated bytes of one static compile: none starts while less than twice that is free.
        label: How warnings name the model (its file name).
    """

    def __init__(self, compile_static: StaticCompiler, tolerance: Tolerance, *,
                 entries: int = DEFAULT_ENTRIES, after: int = DEFAULT_AFTER, budget: int | None = None,
                 cost: int = 0, label: str = "model"):
        if entries < 1 or after < 1:
            raise UsageError(f"entries and after must be at least 1, got {entries} and {after}.")
        self.compile_static = compile_static
        self.label = label
        self.tolerance = tolerance
        self.entries, self.after = entries, after
        self.budget = 4 * entries if budget is None else budget
        self.cost = cost
        self._lock = threading.Lock()
        self._seen: OrderedDict[Signature, int] = OrderedDict()
        self._ready: OrderedDict[Signature, Any] = OrderedDict()
        self._pending: dict[Signature, Any] = {}
        self._refused: set[Signature] = set()
        self._checking: set[Signature] = set()
        self._compiling: threading.Thread | None = None
        self._closed = False
        self._stats = {"compiled": 0, "adopted": 0, "refused": 0, "failed": 0, "evicted": 0, "static_runs": 0,
                       "short_of_memory": 0}

    def stats(self) -> dict[str, int]:
        """``{"compiled", "adopted", "refused", "failed", "evicted", "static_runs", "short_of_memory",
        "shapes"}``: compiles made, adopted after the check, refused by it, failed to compile,
        dropped for room, runs answered by a static compile, compiles not started for lack of free
        memory, and shapes held now."""
        with self._lock:
            return {**self._stats, "shapes": len(self._ready)}

    def lookup(self, sig: Signature) -> tuple[str, Any]:
        """What answers a feed of shape ``sig``: ``("static", compiled)`` (adopted),
        ``("check", compiled)`` (compiled, to be checked against the dynamic answer by the caller
        with :meth:`settle`) or ``("dynamic", None)``. Counts the sighting and starts a background
        compile when the shape has been seen often enough."""
        with self._lock:
            if sig in self._ready:
                self._ready.move_to_end(sig)
                self._stats["static_runs"] += 1
                return "static", self._ready[sig]
            if sig in self._pending:
                self._checking.add(sig)
                return "check", self._pending.pop(sig)  # exactly one caller checks it
            if self._closed or sig in self._refused or sig in self._checking:
                return "dynamic", None
            count = self._seen.pop(sig, 0) + 1
            self._seen[sig] = count
            while len(self._seen) > _SEEN_LIMIT:
                self._seen.popitem(last=False)
            if count >= self.after and self._compiling is None and self._stats["compiled"] + self._stats["failed"] < self.budget:
                free = available_memory() if self.cost else None
                if free is not None and free < 2 * self.cost:
                    self._stats["short_of_memory"] += 1
                    return "dynamic", None
                self._seen.pop(sig)
                self._compiling = threading.Thread(target=self._compile, args=(sig,), name="edgemm-ov-static",
                                                   daemon=True)
                self._compiling.start()
            return "dynamic", None

    def settle(self, sig: Signature, compiled: Any, static: dict[str, np.ndarray] | None,
               dynamic: dict[str, np.ndarray] | None) -> None:
        """Adopt ``compiled`` for ``sig`` if its outputs ``static`` agree with ``dynamic``;
        ``static`` None (it failed to run): keep that shape on the dynamic graph for good;
        ``dynamic`` None (the dynamic model failed: nothing to compare): check it next time."""
        with self._lock:
            self._checking.discard(sig)
            if self._closed:
                return
            if dynamic is None:
                self._pending[sig] = compiled
                return
        ok = static is not None and agree(static, dynamic, self.tolerance)
        with self._lock:
            if self._closed:
                return
            if not ok:
                self._refused.add(sig)
                self._stats["refused"] += 1
            else:
                self._ready[sig] = compiled
                self._stats["adopted"] += 1
                while len(self._ready) > self.entries:
                    self._ready.popitem(last=False)
                    self._stats["evicted"] += 1
        if not ok:
            log.warning("%s: the static-shape compile for %s does not answer as the dynamic graph does; "
                        "that shape keeps the dynamic graph", self.label, dict(sig))

    def refuse(self, sig: Signature) -> None:
        """Drop an adopted compile that failed to run: ``sig`` keeps the dynamic graph for good."""
        with self._lock:
            if self._ready.pop(sig, None) is not None:
                self._refused.add(sig)
                self._stats["refused"] += 1
        log.warning("%s: the static-shape compile for %s failed to run; that shape keeps the dynamic graph",
                    self.label, dict(sig))

    def held(self, sig: Signature) -> bool:
        """Whether ``sig`` has an adopted static compile now."""
        with self._lock:
            return sig in self._ready

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background compile in flight (tests, benchmarks); True if one was in flight
        or a compile still waits for its check (the next feed of its shape makes it)."""
        thread = self._compiling
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            return thread is not None or bool(self._pending)

    def close(self) -> None:
        """Drop every static compile; a compile in flight is discarded when it ends."""
        with self._lock:
            self._closed = True
            self._ready.clear()
            self._pending.clear()

    def _compile(self, sig: Signature) -> None:
        try:
            compiled = self.compile_static(sig)
        except Exception as exc:  # OpenVINO raises bare RuntimeErrors (and more): this shape stays dynamic
            log.warning("%s: no static-shape compile for %s (%s); that shape keeps the dynamic graph",
                        self.label, dict(sig), exc)
            with self._lock:
                self._refused.add(sig)
                self._stats["failed"] += 1
                self._compiling = None
            return
        with self._lock:
            self._compiling = None
            if not self._closed:
                self._pending[sig] = compiled
                self._stats["compiled"] += 1
