"""Turn raw model outputs into predictions: labels with scores, similarities or values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemm.bundle.manifest import Manifest


@dataclass
class Prediction:
    """One request's result.

    Attributes:
        label: The predicted label (``None`` for regression / similarity).
        score: Its confidence in [0, 1] (softmax / sigmoid probability).
        scores: Label → probability for the top labels (all labels for multilabel).
        labels: Every label over the threshold (multilabel) or ``[label]``.
        values: Regression outputs (name → value) or similarities (text → score).
        outputs: Raw output arrays of this row, by output name.
    """

    label: str | None = None
    score: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The prediction as the JSON ``edgemm predict --json`` and the HTTP API return."""
        return {
            "label": self.label,
            "score": self.score,
            "scores": self.scores,
            "labels": self.labels,
            "values": self.values,
        }


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, clipped so that extreme logits do not overflow."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def postprocess(outputs: dict[str, np.ndarray], manifest: Manifest, *,
                candidates: list[str] | None = None) -> list[Prediction]:
    """Apply the manifest's postprocessing to a batch of outputs.

    Args:
        outputs: Output name → array with the batch on axis 0.
        manifest: The bundle's manifest: ``postprocessing`` (``{"type": softmax|sigmoid|matching|
            identity, ...}``), its primary output and labels.
        candidates: Texts scored against each image (image–text similarity bundles).

    Returns:
        One :class:`Prediction` per row.
    """
    postprocessing = manifest.postprocessing
    kind = postprocessing.get("type", "identity")
    array = np.asarray(outputs[manifest.primary_output], dtype=np.float64)
    names = candidates if candidates is not None else manifest.labels
    top_k = int(postprocessing.get("top_k", 5))
    threshold = float(postprocessing.get("threshold", 0.5))
    results: list[Prediction] = []
    for i, row in enumerate(array):
        raw = {name: np.asarray(value[i]).astype(float).ravel().tolist() for name, value in outputs.items()}
        pred = Prediction(outputs=raw)
        if kind == "softmax":
            probs = softmax(row)
            order = np.argsort(-probs)
            pred.label, pred.score = names[order[0]], float(probs[order[0]])
            pred.scores = {names[j]: float(probs[j]) for j in order[:top_k]}
            pred.labels = [pred.label]
        elif kind == "sigmoid":
            probs = sigmoid(row)
            order = np.argsort(-probs)
            pred.label, pred.score = names[order[0]], float(probs[order[0]])
            pred.scores = {names[j]: float(probs[j]) for j in order[: max(top_k, len(names))]}
            pred.labels = [names[j] for j in order if probs[j] >= threshold]
        elif kind == "matching":
            p = float(sigmoid(row.ravel()[:1])[0])
            match, no_match = (manifest.labels[1], manifest.labels[0]) if len(manifest.labels) >= 2 else ("match", "no_match")
            pred.label, pred.score = (match, p) if p >= threshold else (no_match, 1.0 - p)
            pred.scores = {no_match: 1.0 - p, match: p}
            pred.labels = [pred.label]
        else:
            pred.values = {name: float(v) for name, v in zip(names, row.ravel())}
        if candidates is not None:
            pred.values = {text: float(v) for text, v in zip(candidates, row)}
        results.append(pred)
    return results
