"""Task metrics in numpy (shared by training, the accuracy gate and bench)."""

from __future__ import annotations

import numpy as np

# One definition of "the predicted class" and of (tie-aware) agreement, shared with parity.
from edgemm.bundle.compare import predicted_classes, top1_agreement

__all__ = ["accuracy", "classification_metrics", "macro_f1", "predicted_classes", "top1_agreement"]


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Fraction of exact matches."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float((labels == predictions).mean()) if labels.size else 0.0


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 (classes absent from both arrays are skipped)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    scores = []
    for c in range(num_classes):
        tp = int(((predictions == c) & (labels == c)).sum())
        fp = int(((predictions == c) & (labels != c)).sum())
        fn = int(((predictions != c) & (labels == c)).sum())
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def classification_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 from logits ``[N, C]`` (or ``[N, 1]`` match logits).

    Token classification: logits ``[N, S, C]`` and labels ``[N, S]``; positions labelled
    negative (special tokens, padding, later sub-tokens: :data:`edgemm.data.ner.IGNORE`) are
    left out.
    """
    logits = np.asarray(logits)
    predictions = predicted_classes(logits)
    classes = logits.shape[-1] if logits.ndim >= 2 and logits.shape[-1] > 1 else 2
    labels = np.asarray(labels)
    if labels.ndim > 1:
        keep = labels >= 0
        labels, predictions = labels[keep], predictions[keep]
    return {"accuracy": accuracy(labels, predictions), "macro_f1": macro_f1(labels, predictions, classes)}
