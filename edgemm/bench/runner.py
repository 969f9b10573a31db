"""Interleaved timing: every contender runs in turn, round after round, on identical inputs.

Running A, B, C, A, B, C … instead of all of A then all of B spreads machine drift (thermal
state, background load, frequency scaling) over all contenders equally, so ratios between
them are trustworthy even when absolute numbers wander.

With ``contention`` every cell is timed twice per round, quiet and with :class:`BackgroundLoad`
busying one core (a kiosk also runs a browser), so "contended p50 ÷ quiet p50" comes from one run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemm import progress
from edgemm.bench.contenders import Contender
from edgemm.bench.stats import latency_stats

log = logging.getLogger("edgemm.bench")


@dataclass(frozen=True)
class TimingOptions:
    """How long and how often to measure."""

    batch_sizes: tuple[int, ...] = (1,)
    seq_lens: tuple[int | None, ...] = (None,)
    warmup: int = 5
    iterations: int = 50
    duration_s: float | None = None
    rounds: int = 5
    modes: tuple[str, ...] = ("e2e", "model")
    contention: bool = False  # also time every cell with one core kept busy (BackgroundLoad)


@dataclass
class Measurement:
    """One timed block: a contender in one mode (``e2e`` / ``model``) at one batch size and sequence length.

    Attributes:
        contender / mode / batch / seq: What was timed.
        load: ``"quiet"``, or ``"contended"`` (one core kept busy by :class:`BackgroundLoad`).
        workload: ``"standard"`` (one input per cell) or ``"repeated"`` (a few answers repeat, images vary).
        stats: Latency statistics (p50 / p90 / p99 / mean / std / min / max, throughput).
        error: Why the block could not run (then ``stats`` is empty).
        telemetry: Power, energy and device memory over the block, where measured.
    """
    contender: str
    mode: str
    batch: int
    seq: int | None
    stats: dict[str, Any]
    error: str | None = None
    telemetry: dict[str, Any] = field(default_factory=dict)
    load: str = "quiet"
    workload: str = "standard"

    def to_dict(self) -> dict[str, Any]:
        """The measurement as one flat JSON-ready row (``bench.json`` / ``bench.csv``)."""
        return {"contender": self.contender, "mode": self.mode, "batch": self.batch, "seq": self.seq,
                "load": self.load, "workload": self.workload, **self.stats, **({"error": self.error} if self.error else {}), **self.telemetry}


Inputs = Callable[[int, int | None], tuple[dict[str, list[Any]], dict[str, np.ndarray]]]
# batch → the raw requests end-to-end calls cycle through (one per call), for workloads whose inputs vary.
Requests = Callable[[int], list[dict[str, list[Any]]]]

# The child of BackgroundLoad: pin itself to one core, say so, spin until stopped, until its parent
# is gone, or until its time bound runs out — whichever comes first (never an orphan spinning forever).
_SPIN = """
import os, sys, time
core, parent, bound = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
pinned = hasattr(os, "sched_setaffinity")
if pinned:
    os.sched_setaffinity(0, {core})
sys.stdout.write("pinned\\n" if pinned else "unpinned\\n")
sys.stdout.flush()
end = time.monotonic() + bound
while time.monotonic() < end and os.getppid() == parent:
    for _ in range(100000):
        pass
"""


def load_core() -> int:
    """The core :class:`BackgroundLoad` busies: the last one this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(os.sched_getaffinity(0))
    return max((os.cpu_count() or 1) - 1, 0)


class BackgroundLoad:
    """A bounded background load: one separate process spinning in a tight loop, pinned to one core.

    Use as a context manager around contended timing; the process is stopped on exit, on an
    exception and on Ctrl-C, and stops by itself when its parent dies or after ``bound_s``.

    Args:
        core: The core to busy (default: :func:`load_core`).
        bound_s: The longest the load may live.
    """

    def __init__(self, core: int | None = None, *, bound_s: float = 900.0):
        self.core = load_core() if core is None else core
        self.bound_s = bound_s
        self.pinned = False
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start the spinning process and wait until it runs on its core.

        Raises:
            RuntimeError: The process did not start (a bug or a broken interpreter; kept with its traceback).
        """
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _SPIN, str(self.core), str(os.getpid()),
                                      str(self.bound_s)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.stop()
            raise RuntimeError(f"the background load did not start: {err.strip()[-300:]}")
        self.pinned = line.strip() == "pinned"

    def stop(self) -> None:
        """Stop the process (terminate, then kill) and reap it; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> BackgroundLoad:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_interleaved(contenders: list[Contender], inputs: Inputs, options: TimingOptions,
                    *, sampler: Any = None, workload: str = "standard",
                    requests: Requests | None = None) -> list[Measurement]:
    """Time every contender in every mode, batch size and sequence length, interleaved.

    With ``options.contention`` each round times every cell quiet and, in turn, with one core
    busy (:class:`BackgroundLoad`, started before and stopped after each contended pass).

    Args:
        contenders: What to time.
        inputs: ``(batch, seq) → (raw request lists, preprocessed feed)``.
        options: Iterations, warm-up, rounds, modes, contention.
        sampler: Optional NVML / tegrastats sampler; energy per item is recorded per cell.
        workload: Recorded on every row.
        requests: ``batch → raw requests``: end-to-end calls cycle through them (the same sequence
            for every contender) instead of repeating ``inputs``' one request.
    """
    results: list[Measurement] = []
    loads = ("quiet", "contended") if options.contention else ("quiet",)
    for batch in options.batch_sizes:
        for seq in options.seq_lens:
            raw, feed = inputs(batch, seq)
            varied = requests(batch) if requests is not None and seq is None else None
            streams = {c.name: itertools.cycle(varied) for c in contenders} if varied else {}
            natives: dict[str, Any] = {}
            failed: dict[str, str] = {}
            for c in contenders:
                try:
                    natives[c.name] = c.native(feed)
                    settle = getattr(c, "settle", None)
                    # Background work the warm-up started (OpenVINO static-shape compiles) ends
                    # before timing, and the warm-up runs again on what it left (at most twice).
                    for attempt in range(3):
                        for _ in range(options.warmup):
                            if "e2e" in options.modes and seq is None:
                                c.e2e(next(streams[c.name]) if varied else raw)
                            if "model" in options.modes:
                                c.model(natives[c.name])
                        if attempt == 2 or settle is None or not settle():
                            break
                except Exception as exc:  # a peer that cannot run this shape is reported, not fatal
                    failed[c.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    log.warning("%s failed at batch %d: %s", c.name, batch, failed[c.name])
            timings: dict[tuple[str, str, str], list[float]] = {}
            energy: dict[tuple[str, str, str], list[dict[str, float]]] = {}
            per_round = max(1, math.ceil(options.iterations / options.rounds))
            start = time.perf_counter()
            shape = f"batch {batch}" + ("" if seq is None else f", seq {seq}")
            for round_no in progress.track(range(options.rounds), label=f"Timing {shape}: rounds"):
                active = [c for c in contenders if c.name not in failed]
                order = active[round_no % len(active):] + active[: round_no % len(active)] if active else []
                # Quiet first in even rounds, contended first in odd ones: drift spreads over both.
                for load in loads if round_no % 2 == 0 else loads[::-1]:
                    with BackgroundLoad() if load == "contended" else contextlib.nullcontext():
                        for c in order:
                            for mode in options.modes:
                                if mode == "e2e" and seq is not None:
                                    continue  # end to end uses natural text lengths
                                if mode == "e2e":
                                    call = ((lambda c=c, stream=streams[c.name]: c.e2e(next(stream))) if varied
                                            else (lambda c=c, raw=raw: c.e2e(raw)))
                                else:
                                    call = lambda c=c, natives=natives: c.model(natives[c.name])  # noqa: E731
                                key = (c.name, mode, load)
                                samples = timings.setdefault(key, [])
                                if sampler is not None:
                                    with sampler:
                                        samples.extend(_time(call, per_round))
                                    energy.setdefault(key, []).append(sampler.summary(per_round * batch))
                                else:
                                    samples.extend(_time(call, per_round))
                if options.duration_s and time.perf_counter() - start > options.duration_s:
                    break
            for load in loads:
                for c in contenders:
                    for mode in options.modes:
                        if mode == "e2e" and seq is not None:
                            continue
                        if c.name in failed:
                            results.append(Measurement(c.name, mode, batch, seq, {"n": 0}, error=failed[c.name],
                                                       load=load, workload=workload))
                            continue
                        telemetry = _merge_energy(energy.get((c.name, mode, load), []))
                        samples = timings[(c.name, mode, load)]
                        stats = latency_stats(samples, batch=batch)
                        # Each round's median, for the report's round-to-round noise flag.
                        stats["round_p50_ms"] = [round(1000 * float(np.median(samples[i:i + per_round])), 4)
                                                 for i in range(0, len(samples), per_round)]
                        results.append(Measurement(c.name, mode, batch, seq, stats,
                                                   telemetry=telemetry, load=load, workload=workload))
    return results


def _time(call: Callable[[], Any], count: int) -> list[float]:
    out = []
    for _ in range(count):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return out


def _merge_energy(parts: list[dict[str, float]]) -> dict[str, Any]:
    parts = [p for p in parts if p]
    if not parts:
        return {}
    return {"avg_power_w": float(np.mean([p["avg_power_w"] for p in parts])),
            "energy_per_item_mj": float(np.mean([p["energy_per_item_mj"] for p in parts])),
            "peak_device_memory_mb": float(max(p["peak_memory_mb"] for p in parts))}
