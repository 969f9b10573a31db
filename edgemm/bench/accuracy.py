"""Accuracy drift of every contender against the FP32 artifact, measured on this machine."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgemm.bundle.compare import Tolerance, predicted_classes, top1_agreement
from edgemm.data.evalset import EvalSet
from edgemm.data.metrics import classification_metrics


def accuracy_drift(contenders: list[Any], evalset: EvalSet, reference: Any) -> list[dict[str, Any]]:
    """Task metrics of each contender and top-1 agreement / max |Δlogit| vs ``reference`` (FP32).

    Inputs are the same preprocessed feeds for everyone (edgemm's runtime preprocessing), so the
    drift is the model's alone.
    """
    ref_logits = np.concatenate([reference.logits(reference.native(feed)) for feed in evalset.feeds])
    reference_metrics = classification_metrics(evalset.labels, ref_logits)
    rows = []
    for c in contenders:
        try:
            logits = ref_logits if c is reference else np.concatenate([c.logits(c.native(f)) for f in evalset.feeds])
        except Exception as exc:  # a peer that cannot run is reported, not fatal
            rows.append({"contender": c.name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            continue
        metrics = classification_metrics(evalset.labels, logits)
        rows.append({
            "contender": c.name,
            **metrics,
            "drop_points": 100.0 * (reference_metrics["accuracy"] - metrics["accuracy"]),
            # Near-ties within the contender's precision tolerance are not disagreements.
            "top1_agreement": top1_agreement(logits, ref_logits, Tolerance.for_precision(c.precision)),
            "max_abs_diff": float(np.abs(logits - ref_logits).max()),
            "nonfinite": int((~np.isfinite(logits)).sum()),
            "samples": len(evalset),
        })
    return rows


def golden_evalset(bundle: Any, manifest: Any) -> EvalSet:
    """Without labelled data: the golden set's feed, labelled with FP32's own predictions (agreement only)."""
    from edgemm.runtime.golden import load_golden

    golden = load_golden(bundle, manifest)
    output = manifest.primary_output
    return EvalSet(feeds=[golden.feed], labels=predicted_classes(golden.expected[output]), source={"data": "golden set", "labels": "fp32 predictions"})

