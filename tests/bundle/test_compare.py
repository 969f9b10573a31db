"""Top-1 agreement is tie-aware everywhere it is used (parity, golden set, gate, bench drift)."""

from __future__ import annotations

import numpy as np

from edgemm.bundle.compare import Tolerance, compare, near_ties, predicted_classes, top1_agreement
from edgemm.optimize.gate import judge

TOL = Tolerance(atol=1e-4, rtol=1e-3)


def _tied_scores() -> tuple[np.ndarray, np.ndarray]:
    """Four rows; rows 0 and 2 are near-ties that a 1e-7 rounding flips, rows 1 and 3 are clear."""
    reference = np.array([[0.5000001, 0.5, 0.1],
                          [0.9, 0.05, 0.05],
                          [0.2, 0.3, 0.3000001],
                          [0.1, 0.1, 0.8]], dtype=np.float32)
    actual = reference.copy()
    actual[0, 1] += 2e-7   # now class 1 wins row 0 by 1e-7
    actual[2, 1] += 2e-7   # now class 1 wins row 2
    return reference, actual


def test_flipped_near_ties_are_not_disagreements():
    reference, actual = _tied_scores()
    assert (predicted_classes(actual) != predicted_classes(reference)).sum() == 2
    assert top1_agreement(actual, reference) == 0.5          # exact argmax: two flips
    assert top1_agreement(actual, reference, TOL) == 1.0     # within tolerance: ties
    assert near_ties(reference, TOL) == 2


def test_a_clear_flip_is_still_a_disagreement():
    reference, actual = _tied_scores()
    actual[1] = [0.05, 0.9, 0.05]                            # a decisive row now picks another class
    assert top1_agreement(actual, reference, TOL) == 0.75


def test_parity_comparison_passes_tied_scores_and_fails_a_real_flip():
    reference, actual = _tied_scores()
    tied = compare("case", "scores", reference, actual, TOL, classify=True)
    assert tied.passed and tied.top1 == 1.0, tied.reasons
    actual[3] = [0.8, 0.1, 0.1]
    flipped = compare("case", "scores", reference, actual, TOL, classify=True)
    assert not flipped.passed
    assert any("top-1 agreement 0.750" in r for r in flipped.reasons)


def test_match_logits_near_zero_are_ties():
    reference = np.array([[1e-6], [2.0], [-3.0]], dtype=np.float32)
    actual = np.array([[-1e-6], [2.0], [-3.0]], dtype=np.float32)
    assert top1_agreement(actual, reference) == 2 / 3
    assert top1_agreement(actual, reference, TOL) == 1.0
    actual[1] = -0.5
    assert top1_agreement(actual, reference, TOL) == 2 / 3


def test_gate_agreement_uses_the_precision_tolerance():
    reference = np.array([[1.0, 1.05], [3.0, 0.0]] * 10)
    int8 = np.array([[1.05, 1.0], [3.0, 0.0]] * 10)         # the 0.05 near-tie flips under INT8 rounding
    labels = np.array([1, 0] * 10)
    exact = judge(int8, reference, labels, metric="accuracy", budget_points=100.0, tolerance=Tolerance(atol=0, rtol=0))
    tied = judge(int8, reference, labels, metric="accuracy", budget_points=100.0,
                 tolerance=Tolerance.for_precision("int8"))
    assert exact.top1_agreement == 0.5
    assert tied.top1_agreement == 1.0 and tied.near_ties == 10
