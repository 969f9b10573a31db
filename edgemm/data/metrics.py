"""Task metrics in numpy (shared by training, the accuracy gate and bench)."""

from __future__ import annotations

import numpy as np


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


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """Class indices from logits ``[N, C]``, or from ``[N, 1]`` match logits (positive = 1)."""
    logits = np.asarray(logits)
    if logits.ndim == 2 and logits.shape[1] > 1:
        return logits.argmax(-1)
    return (logits.reshape(len(logits), -1)[:, 0] > 0).astype(np.int64)


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of rows whose predicted class matches the reference's."""
    return float((predicted_classes(logits) == predicted_classes(reference)).mean())


def classification_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 from logits ``[N, C]`` (or ``[N, 1]`` match logits)."""
    logits = np.asarray(logits)
    predictions = predicted_classes(logits)
    classes = logits.shape[-1] if logits.ndim == 2 and logits.shape[1] > 1 else 2
    return {"accuracy": accuracy(labels, predictions), "macro_f1": macro_f1(labels, predictions, classes)}
