"""Latency statistics."""

from __future__ import annotations

from typing import Any

import numpy as np


def latency_stats(seconds: list[float], *, batch: int) -> dict[str, Any]:
    """p50 / p90 / p99 / mean / std / min / max in milliseconds, and throughput in items/s."""
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    if values.size == 0:
        return {"n": 0}
    mean = float(values.mean())
    return {
        "n": int(values.size),
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": mean,
        "std_ms": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
        "throughput_per_s": float(batch * 1000.0 / mean) if mean > 0 else 0.0,
    }
