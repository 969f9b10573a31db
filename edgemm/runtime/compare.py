"""Output comparison used by parity checks (ONNX vs PyTorch) and golden-set re-runs.

Every output of every case is compared and *all* failures are collected before anything is
raised, so one run tells the user everything that is wrong. Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Elementwise ``|actual - reference| <= atol + rtol * |reference|`` must hold, plus a
    minimum cosine similarity and top-1 agreement (for classification-like outputs)."""

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.9999
    min_top1: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tolerance:
        return cls(**{k: float(data[k]) for k in ("atol", "rtol", "min_cosine", "min_top1") if k in data})


@dataclass
class OutputComparison:
    """How one output of one shape case compares to the reference."""

    case: str
    output: str
    shape: list[int]
    max_abs: float
    max_rel: float
    cosine: float
    top1: float | None
    passed: bool
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(case: str, name: str, reference: np.ndarray, actual: np.ndarray, tol: Tolerance,
            *, classify: bool) -> OutputComparison:
    """Compare one output; ``classify`` adds top-1 agreement over the last axis."""
    reasons: list[str] = []
    ref = np.asarray(reference, dtype=np.float64)
    act = np.asarray(actual, dtype=np.float64)
    if ref.shape != act.shape:
        return OutputComparison(case, name, list(act.shape), float("inf"), float("inf"), 0.0, None, False,
                                [f"shape {list(act.shape)} != reference {list(ref.shape)}"])
    finite = bool(np.isfinite(act).all())
    if not finite:
        reasons.append("non-finite values (NaN/Inf)")
    diff = np.abs(act - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(ref), 1e-12)).max()) if diff.size else 0.0
    norm = float(np.linalg.norm(ref) * np.linalg.norm(act))
    cosine = float((ref * act).sum() / norm) if norm > 0 else (1.0 if max_abs == 0 else 0.0)
    if finite and not np.all(diff <= tol.atol + tol.rtol * np.abs(ref)):
        worst = np.unravel_index(int(np.argmax(diff - tol.rtol * np.abs(ref))), diff.shape)
        reasons.append(f"|diff| {max_abs:.3g} exceeds atol {tol.atol:g} + rtol {tol.rtol:g}·|ref| (worst at {list(worst)})")
    if finite and cosine < tol.min_cosine:
        reasons.append(f"cosine {cosine:.6f} < {tol.min_cosine}")
    top1 = None
    if classify and ref.ndim >= 2 and ref.shape[-1] >= 2:
        top1 = float((ref.argmax(-1) == act.argmax(-1)).mean())
        if top1 < tol.min_top1:
            reasons.append(f"top-1 agreement {top1:.3f} < {tol.min_top1}")
    return OutputComparison(case, name, list(act.shape), max_abs, max_rel, cosine, top1, not reasons, reasons)


def compare_all(case: str, reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], tol: Tolerance,
                *, classify_outputs: set[str]) -> list[OutputComparison]:
    """Compare every reference output of one case."""
    results = []
    for name, ref in reference.items():
        if name not in actual:
            results.append(OutputComparison(case, name, [], float("inf"), float("inf"), 0.0, None, False, ["missing output"]))
            continue
        results.append(compare(case, name, ref, actual[name], tol, classify=name in classify_outputs))
    return results


def summarize(results: list[OutputComparison]) -> dict[str, Any]:
    """Manifest-ready summary: pass/fail, worst figures, and every comparison."""
    return {
        "passed": all(r.passed for r in results),
        "cases": sorted({r.case for r in results}),
        "max_abs": max((r.max_abs for r in results), default=0.0),
        "min_cosine": min((r.cosine for r in results), default=1.0),
        "comparisons": [r.to_dict() for r in results],
    }
