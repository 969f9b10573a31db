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
        """The tolerance as a JSON-ready dict (the manifest's ``tolerance`` tables)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tolerance:
        """Build from a manifest or recipe table; missing keys keep their defaults."""
        return cls(**{k: float(data[k]) for k in ("atol", "rtol", "min_cosine", "min_top1") if k in data})

    @classmethod
    def for_precision(cls, precision: str, *, engine: bool = False) -> Tolerance:
        """How far an artifact of ``precision`` may drift from the outputs it was checked against.

        One rule for every re-run of a reduced-precision artifact (golden set, accuracy gate,
        bench drift, engine builds): FP16 and INT8 round every layer, so elementwise bounds widen
        and top-1 agreement (tie-aware) may drop on borderline rows.

        Args:
            precision: The artifact's precision (``fp32``, ``fp16``, ``bf16``, ``int8``, ``mixed``).
            engine: A TensorRT engine: its FP32 picks TF32 tactics, so FP32 widens too.
        """
        if precision == "fp32" and engine:
            return cls(atol=1e-2, rtol=1e-2, min_cosine=0.9999, min_top1=0.9)
        if precision == "fp16":
            return cls(atol=5e-2, rtol=5e-2, min_cosine=0.999, min_top1=0.75)
        # BF16 keeps 8 bits of mantissa: it drifts like INT8, not like FP16.
        if precision in ("int8", "mixed", "bf16"):
            return cls(atol=1e-1, rtol=1e-1, min_cosine=0.99, min_top1=0.75)
        return cls()

    def margin(self, reference: np.ndarray) -> np.ndarray:
        """The numeric slack of each reference value: ``atol + rtol * |reference|``."""
        return self.atol + self.rtol * np.abs(reference)


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """The one definition of "the predicted class" of each row.

    ``[N, C]`` with ``C > 1``: the argmax over the last axis; ``[N]`` or ``[N, 1]`` match logits:
    1 where the logit is positive, else 0. Leading axes beyond the first (e.g. tokens) are kept.
    """
    logits = np.asarray(logits)
    if logits.ndim >= 2 and logits.shape[-1] > 1:
        return logits.argmax(-1)
    return (logits.reshape(len(logits), -1)[:, 0] > 0).astype(np.int64)


def _agreeing_rows(actual: np.ndarray, reference: np.ndarray, tol: Tolerance | None) -> np.ndarray:
    """Per row: does ``actual`` pick the reference's class, or one tied with it within ``tol``?"""
    ref = np.asarray(reference, dtype=np.float64)
    act = np.asarray(actual, dtype=np.float64)
    if ref.ndim >= 2 and ref.shape[-1] > 1:
        ref2 = ref.reshape(-1, ref.shape[-1])
        picked = act.reshape(-1, act.shape[-1]).argmax(-1)
        best = ref2.max(-1)
        chosen = ref2[np.arange(len(ref2)), picked]
        slack = tol.margin(best) if tol is not None else 0.0
        # The class `actual` picked scores (in the reference) within the numeric tolerance of
        # the reference's best: a near-tie that a 1e-7 rounding may flip is not a disagreement.
        return chosen >= best - slack
    ref1 = ref.reshape(len(ref), -1)[:, 0]
    act1 = act.reshape(len(act), -1)[:, 0]
    tied = np.abs(ref1) <= (tol.margin(ref1) if tol is not None else 0.0)
    return ((ref1 > 0) == (act1 > 0)) | tied


def top1_agreement(actual: np.ndarray, reference: np.ndarray, tol: Tolerance | None = None) -> float:
    """Fraction of rows whose predicted class agrees with the reference's, near-ties aside.

    Used by parity, the golden set, the accuracy gate and bench drift alike. With ``tol``, a row
    whose reference top-two margin lies inside ``atol + rtol·|best|`` counts as agreeing whichever
    of the tied classes ``actual`` picks (random-weight models score many rows as near-ties).

    Args:
        actual: Outputs under test, ``[N, C]`` (or ``[N, ..., C]``, or ``[N]`` / ``[N, 1]`` match logits).
        reference: The reference outputs, same shape.
        tol: The numeric tolerance that defines a tie; None: exact argmax agreement.

    Returns:
        Agreement in ``[0, 1]`` (1.0 for an empty batch).
    """
    rows = _agreeing_rows(actual, reference, tol)
    return float(rows.mean()) if rows.size else 1.0


def near_ties(reference: np.ndarray, tol: Tolerance) -> int:
    """How many reference rows are near-ties under ``tol`` (reported next to the agreement)."""
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim >= 2 and ref.shape[-1] > 1:
        top2 = np.sort(ref.reshape(-1, ref.shape[-1]), axis=-1)[:, -2:]
        return int((top2[:, 1] - top2[:, 0] <= tol.margin(top2[:, 1])).sum())
    ref1 = ref.reshape(len(ref), -1)[:, 0]
    return int((np.abs(ref1) <= tol.margin(ref1)).sum())


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
        """The comparison as a JSON-ready dict (stored in the manifest's validation records)."""
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
        top1 = top1_agreement(act, ref, tol)
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
