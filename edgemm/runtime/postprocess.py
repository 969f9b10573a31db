"""Turn raw model outputs into predictions: labels with scores, similarities or values.

The manifest's ``postprocessing.type`` says what the primary output holds, so that an activation
is applied exactly once:

============================  ===========================================================
``softmax``                   single-label logits: softmax, label = argmax
``sigmoid``                   multi-label logits: sigmoid, labels over ``threshold``
``probabilities``             single-label probabilities (the head ends in softmax): as given
``multilabel_probabilities``  per-label probabilities (the head ends in sigmoid): as given,
                              labels over ``threshold``
``matching``                  one match logit per row: sigmoid, match over ``threshold``
``identity``                  values as given, named by the labels (or by the output)
``token_classification``      per-token logits ``[B, S, labels]``: word-level entities with
                              character offsets, as transformers' token-classification
                              pipeline (``aggregation_strategy="simple"``) gives them
                              (:mod:`edgemm.runtime.entities`)
============================  ===========================================================

Anything that does not fit (an unknown type, a label list of the wrong length, probabilities
outside [0, 1], NaN) is an :class:`~edgemm.errors.OutputMismatchError` or a
:class:`~edgemm.errors.RuntimeFailure`, never a silent wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemm.bundle.manifest import Manifest
from edgemm.errors import OutputMismatchError, RuntimeFailure
from edgemm.runtime.entities import AGGREGATIONS, entities_from_logits

# The postprocessing types, in the order the README lists them.
POSTPROCESSING_TYPES = ("softmax", "sigmoid", "probabilities", "multilabel_probabilities", "matching", "identity",
                        "token_classification")
# Types whose primary output holds per-token logits ``[B, S, labels]`` (``Prediction.entities``).
TOKEN_TYPES = ("token_classification",)
# Types whose primary output holds one score per label (logits or probabilities).
PER_LABEL_TYPES = ("softmax", "sigmoid", "probabilities", "multilabel_probabilities")
# Types whose answer is the set of labels over the threshold (``Prediction.labels``).
MULTILABEL_TYPES = ("sigmoid", "multilabel_probabilities")
# Types that read values the model already normalised.
PROBABILITY_TYPES = ("probabilities", "multilabel_probabilities")
# Probabilities computed in FP16 / INT8 round a little past 0 and 1 and do not sum exactly to 1
# (an INT8 output step is 1/255 per class); logits or per-label sigmoids miss these by far more.
_RANGE_SLACK = 1e-3
_SUM_SLACK = 2e-2
_REEXPORT = "Fix the spec's postprocessing or labels and export the bundle again."


@dataclass
class Prediction:
    """One request's result.

    Attributes:
        label: The predicted label (``None`` for regression / identity).
        score: Its confidence in [0, 1].
        scores: Label → probability for the top labels (all labels for multi-label types).
        labels: Every label over the threshold (multi-label types) or ``[label]``.
        values: Regression / identity values (name → value) or similarities (text → score).
        outputs: Every model output of this row, by output name, as (nested) lists. Outputs
            without the batch axis (e.g. the candidate texts' embeddings) are given whole.
        entities: Token classification: ``[{"entity_group", "score", "word", "start", "end"}]``
            (character offsets into the text), as transformers' pipeline gives them.
    """

    label: str | None = None
    score: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    entities: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The prediction as the JSON ``edgemm predict --json`` and the HTTP API return."""
        return {
            "label": self.label,
            "score": self.score,
            "scores": self.scores,
            "labels": self.labels,
            "values": self.values,
            "outputs": self.outputs,
            "entities": self.entities,
        }


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, clipped so that extreme logits do not overflow."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


@dataclass(frozen=True)
class PostprocessSettings:
    """The manifest's postprocessing section, read once and checked (:meth:`read`).

    Attributes:
        kind: One of :data:`POSTPROCESSING_TYPES`.
        output: The primary output it reads.
        top_k: How many single-label scores to report.
        threshold: The multi-label / matching decision threshold.
        ignore_labels: Token classification: entity groups left out (``O``).
        unk_token_id: Token classification: the tokenizer's unknown token (named by its characters).
    """

    kind: str
    output: str
    top_k: int
    threshold: float
    ignore_labels: tuple[str, ...] = ("O",)
    unk_token_id: int | None = None

    @classmethod
    def read(cls, manifest: Manifest) -> PostprocessSettings:
        """Read and check ``manifest.postprocessing``; raises OutputMismatchError when it is malformed."""
        section = manifest.postprocessing
        kind = section.get("type", "identity")
        if kind not in POSTPROCESSING_TYPES:
            raise OutputMismatchError(f"Unknown postprocessing type {kind!r} in the bundle.",
                                      hint=f"Use one of: {', '.join(POSTPROCESSING_TYPES)}. {_REEXPORT}")
        top_k = section.get("top_k", 5)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise OutputMismatchError(f"postprocessing.top_k is {top_k!r}; it must be a positive integer.",
                                      hint=_REEXPORT)
        threshold = section.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise OutputMismatchError(f"postprocessing.threshold is {threshold!r}; it must be a number in [0, 1].",
                                      hint=_REEXPORT)
        extra: dict[str, Any] = {}
        if kind in TOKEN_TYPES:
            aggregation = section.get("aggregation", "simple")
            if aggregation not in AGGREGATIONS:
                raise OutputMismatchError(f"postprocessing.aggregation is {aggregation!r}; this runtime reproduces "
                                          f"{', '.join(AGGREGATIONS)}.", hint=_REEXPORT)
            ignore = section.get("ignore_labels", ["O"])
            if not isinstance(ignore, list) or not all(isinstance(x, str) for x in ignore):
                raise OutputMismatchError(f"postprocessing.ignore_labels is {ignore!r}; it must be a list of labels.",
                                          hint=_REEXPORT)
            unk = section.get("unk_token_id")
            if unk is not None and (isinstance(unk, bool) or not isinstance(unk, int) or unk < 0):
                raise OutputMismatchError(f"postprocessing.unk_token_id is {unk!r}; it must be a token id or null.",
                                          hint=_REEXPORT)
            extra = {"ignore_labels": tuple(ignore), "unk_token_id": unk}
        return cls(kind=str(kind), output=manifest.primary_output, top_k=top_k, threshold=float(threshold), **extra)


def postprocess(outputs: dict[str, np.ndarray], manifest: Manifest, *,
                candidates: list[str] | None = None, tokens: list[Any] | None = None) -> list[Prediction]:
    """Apply the manifest's postprocessing to a batch of outputs.

    Args:
        outputs: Output name → array with the batch on axis 0 (outputs the manifest declares
            without that axis, such as the candidate texts' embeddings, are shared by all rows).
        manifest: The bundle's manifest: ``postprocessing`` (``{"type": ..., "output", "top_k",
            "threshold"}``, types in :data:`POSTPROCESSING_TYPES`), its primary output and labels.
        candidates: Texts scored against each image (image–text similarity bundles); they name
            the primary output's values instead of the labels.
        tokens: Token classification: each row's
            :class:`~edgemm.runtime.preprocess.text.TokenAlignment` (the entities are named by
            the characters their tokens cover). Without it, rows get no entities (the golden
            label check re-postprocesses stored outputs; their values are compared directly).

    Returns:
        One :class:`Prediction` per row, each carrying every output in ``outputs``.

    Raises:
        OutputMismatchError: The postprocessing does not fit the outputs: unknown type or missing
            output, a label (or candidate) count other than the output's width, or values that are
            not probabilities for a probability type.
        RuntimeFailure: An output holds NaN or infinite values (an answer built on them would
            be wrong, and JSON cannot carry them).
    """
    settings = PostprocessSettings.read(manifest)
    if settings.output not in outputs:
        raise OutputMismatchError(
            f"The postprocessing reads output {settings.output!r}, which the model did not return "
            f"(outputs: {', '.join(outputs) or 'none'}).", hint=_REEXPORT)
    primary = np.asarray(outputs[settings.output], dtype=np.float64)
    if primary.ndim == 0:
        raise OutputMismatchError(f"Output {settings.output!r} has no batch axis.", hint=_REEXPORT)
    rows = primary.reshape(primary.shape[0], -1)
    for name, value in outputs.items():
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            flat = array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, 1)
            bad = int(np.flatnonzero(~np.isfinite(flat).all(axis=1))[0])
            raise RuntimeFailure(
                f"The model returned NaN or infinite values in output {name!r} (row {bad}).",
                hint="Run `edgemm verify` on the bundle here; a reduced-precision artifact may overflow "
                     "(try --artifact fp32).")
    per_token = settings.kind in TOKEN_TYPES
    if per_token and (primary.ndim != 3 or (tokens is not None and len(tokens) != primary.shape[0])):
        raise OutputMismatchError(
            f"Postprocessing 'token_classification' reads per-token logits [batch, sequence, labels], but output "
            f"{settings.output!r} has shape {list(primary.shape)}" + ("" if tokens is None else
                                                                      f" for {len(tokens)} texts") + ".",
            hint=_REEXPORT)
    names = value_names(settings, manifest, candidates, primary.shape[-1] if per_token else rows.shape[1])
    per_row = _batch_outputs(outputs, manifest, settings.output, rows.shape[0])
    results: list[Prediction] = []
    for i, row in enumerate(rows):
        pred = Prediction(outputs={name: (np.asarray(value)[i] if name in per_row else np.asarray(value)).tolist()
                                   for name, value in outputs.items()})
        if per_token:
            pred.entities = [] if tokens is None else entities_from_logits(
                primary[i], tokens[i], names, unk_token_id=settings.unk_token_id, ignore_labels=settings.ignore_labels)
            pred.labels = list(dict.fromkeys(e["entity_group"] for e in pred.entities))
        else:
            _fill(pred, settings, row, names, i)
        if candidates is not None:
            pred.values = {text: float(v) for text, v in zip(candidates, row)}
        results.append(pred)
    return results


def value_names(settings: PostprocessSettings, manifest: Manifest, candidates: list[str] | None,
                width: int) -> list[str]:
    """What each of the ``width`` values of a primary-output row is called.

    Args:
        settings: The checked postprocessing section.
        manifest: Its labels name the values (a manifest, or anything with ``labels``).
        candidates: The candidate texts of an image–text similarity request (they name the values).
        width: Values per row of the primary output.

    Raises:
        OutputMismatchError: The names do not fit ``width`` (``details``: ``labels``, ``output``,
            ``width`` for a label list of the wrong length).
    """
    if settings.kind == "matching":
        if width != 1:
            raise OutputMismatchError(
                f"Postprocessing 'matching' reads one match logit per row, but output {settings.output!r} "
                f"has {width} values per row.", hint=_REEXPORT)
        if manifest.labels and len(manifest.labels) != 2:
            raise OutputMismatchError(
                f"A matching bundle has two labels (no match, match); this one has {len(manifest.labels)}.",
                hint=_REEXPORT)
        return list(manifest.labels) or ["no_match", "match"]
    if candidates is not None:
        if len(candidates) != width:
            raise OutputMismatchError(
                f"{len(candidates)} candidate texts were scored but output {settings.output!r} has "
                f"{width} scores per row.", hint="Run `edgemm verify` on the bundle.")
        return list(candidates)
    if settings.kind == "identity" and not manifest.labels:
        return [settings.output] if width == 1 else [f"{settings.output}[{j}]" for j in range(width)]
    if len(manifest.labels) != width:
        have = f"{len(manifest.labels)} labels" if manifest.labels else "no labels"
        raise OutputMismatchError(
            f"The bundle has {have} but output {settings.output!r} has {width} values per row; "
            f"postprocessing {settings.kind!r} needs exactly one label per value.",
            hint="List one label per class, in the order of the model's outputs, and export the bundle again.",
            details={"labels": len(manifest.labels), "output": settings.output, "width": width})
    return list(manifest.labels)


def _batch_outputs(outputs: dict[str, np.ndarray], manifest: Manifest, primary: str, rows: int) -> set[str]:
    """Outputs that carry the primary output's batch axis (the rest are shared by every row)."""
    declared = {spec.name: spec.shape for spec in manifest.outputs}
    batch_axis = (declared.get(primary) or [None])[0]
    per_row = set()
    for name, value in outputs.items():
        shape = declared.get(name)
        if shape:
            if shape[0] == batch_axis:
                per_row.add(name)
        elif np.ndim(value) > 0 and np.shape(value)[0] == rows:
            per_row.add(name)
    return per_row


def _fill(pred: Prediction, settings: PostprocessSettings, row: np.ndarray, names: list[str], index: int) -> None:
    """Set the label, scores and values of one row according to the postprocessing type."""
    kind = settings.kind
    if kind == "identity":
        pred.values = {name: float(v) for name, v in zip(names, row)}
        return
    if kind == "matching":
        p = float(sigmoid(row)[0])
        no_match, match = names
        pred.label, pred.score = (match, p) if p >= settings.threshold else (no_match, 1.0 - p)
        pred.scores = {no_match: 1.0 - p, match: p}
        pred.labels = [pred.label]
        return
    if kind in PROBABILITY_TYPES:
        _check_probabilities(row, settings, index)
        probs = np.clip(row, 0.0, 1.0)  # within the rounding slack: scores stay probabilities
    else:
        probs = softmax(row) if kind == "softmax" else sigmoid(row)
    order = np.argsort(-probs, kind="stable")
    pred.label, pred.score = names[order[0]], float(probs[order[0]])
    if kind in MULTILABEL_TYPES:
        pred.scores = {names[j]: float(probs[j]) for j in order}
        pred.labels = [names[j] for j in order if probs[j] >= settings.threshold]
    else:
        pred.scores = {names[j]: float(probs[j]) for j in order[:settings.top_k]}
        pred.labels = [pred.label]


def _check_probabilities(row: np.ndarray, settings: PostprocessSettings, index: int) -> None:
    """Refuse values that a probability type must not see: outside [0, 1], or (single-label) not summing to 1."""
    low, high = float(row.min()), float(row.max())
    if low < -_RANGE_SLACK or high > 1.0 + _RANGE_SLACK:
        value = low if low < -_RANGE_SLACK else high
        fix = "softmax" if settings.kind == "probabilities" else "sigmoid"
        raise OutputMismatchError(
            f"Postprocessing {settings.kind!r} expects probabilities in [0, 1], but output {settings.output!r} "
            f"holds {value:.4g} (row {index}).",
            hint=f"The head returns logits: use postprocessing {fix!r} and export the bundle again.",
            details={"output": settings.output, "row": index, "value": value})
    total = float(row.sum())
    if settings.kind == "probabilities" and abs(total - 1.0) > _SUM_SLACK:
        raise OutputMismatchError(
            f"Postprocessing 'probabilities' expects each row to sum to 1, but row {index} of output "
            f"{settings.output!r} sums to {total:.4f}.",
            hint="Per-label probabilities (a sigmoid head) need 'multilabel_probabilities'; logits need "
                 "'softmax'. Export the bundle again.",
            details={"output": settings.output, "row": index, "sum": total})
