"""Interleaved timing: every contender runs in turn, round after round, on identical inputs.

Running A, B, C, A, B, C … instead of all of A then all of B spreads machine drift (thermal
state, background load, frequency scaling) over all contenders equally, so ratios between
them are trustworthy even when absolute numbers wander.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


@dataclass
class Measurement:
    """One timed block: a contender in one mode (``e2e`` / ``model``) at one batch size and sequence length.

    Attributes:
        contender / mode / batch / seq: What was timed.
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

    def to_dict(self) -> dict[str, Any]:
        """The measurement as one flat JSON-ready row (``bench.json`` / ``bench.csv``)."""
        return {"contender": self.contender, "mode": self.mode, "batch": self.batch, "seq": self.seq,
                **self.stats, **({"error": self.error} if self.error else {}), **self.telemetry}


Inputs = Callable[[int, int | None], tuple[dict[str, list[Any]], dict[str, np.ndarray]]]


def run_interleaved(contenders: list[Contender], inputs: Inputs, options: TimingOptions,
                    *, sampler: Any = None) -> list[Measurement]:
    """Time every contender in every mode, batch size and sequence length, interleaved.

    Args:
        contenders: What to time.
        inputs: ``(batch, seq) → (raw request lists, preprocessed feed)``.
        options: Iterations, warm-up, rounds, modes.
        sampler: Optional NVML / tegrastats sampler; energy per item is recorded per cell.
    """
    results: list[Measurement] = []
    for batch in options.batch_sizes:
        for seq in options.seq_lens:
            raw, feed = inputs(batch, seq)
            natives: dict[str, Any] = {}
            failed: dict[str, str] = {}
            for c in contenders:
                try:
                    natives[c.name] = c.native(feed)
                    for _ in range(options.warmup):
                        if "e2e" in options.modes and seq is None:
                            c.e2e(raw)
                        c.model(natives[c.name])
                except Exception as exc:  # a peer that cannot run this shape is reported, not fatal
                    failed[c.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    log.warning("%s failed at batch %d: %s", c.name, batch, failed[c.name])
            timings: dict[tuple[str, str], list[float]] = {}
            energy: dict[tuple[str, str], list[dict[str, float]]] = {}
            per_round = max(1, math.ceil(options.iterations / options.rounds))
            start = time.perf_counter()
            for round_no in range(options.rounds):
                active = [c for c in contenders if c.name not in failed]
                order = active[round_no % len(active):] + active[: round_no % len(active)] if active else []
                for c in order:
                    for mode in options.modes:
                        if mode == "e2e" and seq is not None:
                            continue  # end to end uses natural text lengths
                        call = ((lambda c=c, raw=raw: c.e2e(raw)) if mode == "e2e"
                                else (lambda c=c, natives=natives: c.model(natives[c.name])))
                        samples = timings.setdefault((c.name, mode), [])
                        if sampler is not None:
                            with sampler:
                                samples.extend(_time(call, per_round))
                            energy.setdefault((c.name, mode), []).append(sampler.summary(per_round * batch))
                        else:
                            samples.extend(_time(call, per_round))
                if options.duration_s and time.perf_counter() - start > options.duration_s:
                    break
            for c in contenders:
                for mode in options.modes:
                    if mode == "e2e" and seq is not None:
                        continue
                    if c.name in failed:
                        results.append(Measurement(c.name, mode, batch, seq, {"n": 0}, error=failed[c.name]))
                        continue
                    telemetry = _merge_energy(energy.get((c.name, mode), []))
                    results.append(Measurement(c.name, mode, batch, seq,
                                               latency_stats(timings[(c.name, mode)], batch=batch), telemetry=telemetry))
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
