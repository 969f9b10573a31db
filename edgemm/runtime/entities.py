"""Word-level entities from per-token logits, as transformers' token-classification pipeline
gives them with ``aggregation_strategy="simple"``. Torch-free.

Reproduced from ``transformers.pipelines.token_classification`` (the ground truth; read it
there):

1. softmax over the labels of every token;
2. special tokens (``[CLS]``, ``</s>``, padding) are skipped;
3. each remaining token takes its argmax label and that probability; its text is the vocabulary
   string of its id, or, for the unknown token, the characters it covers;
4. adjacent tokens are grouped while the tag (label without ``B-`` / ``I-``) stays the same and the
   next token is not a ``B-``; a label without a prefix continues like ``I-``;
5. each group becomes ``{"entity_group": tag, "score": mean probability, "word": tokens joined
   by the tokenizer's decoder, "start", "end"}`` (character offsets into the text);
6. groups whose tag is in ``ignore_labels`` (``O``) are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["AGGREGATIONS", "entities_from_logits", "split_tag"]

# Aggregation strategies this runtime reproduces.
AGGREGATIONS = ("simple",)


def split_tag(label: str) -> tuple[str, str]:
    """``("B" | "I", tag)`` of a label: ``B-PER`` → ``("B", "PER")``; no prefix counts as ``I``."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def entities_from_logits(logits: np.ndarray, alignment: Any, labels: Sequence[str], *,
                         unk_token_id: int | None = None,
                         ignore_labels: Sequence[str] = ("O",)) -> list[dict[str, Any]]:
    """The entities of one text.

    Args:
        logits: ``[S, labels]`` logits of one row.
        alignment: That row's :class:`~edgemm.runtime.preprocess.text.TokenAlignment` (text,
            ids, token strings, offsets, special-token flags, decoder), positions as in ``logits``.
        labels: Label name per logit column (``config.id2label`` order).
        unk_token_id: The tokenizer's unknown-token id: such a token's text is what it covers.
        ignore_labels: Entity groups to drop (the pipeline drops ``O``).

    Returns:
        ``[{"entity_group", "score", "word", "start", "end"}, ...]`` in text order.
    """
    probs = _softmax(np.asarray(logits, dtype=np.float64))
    tokens: list[dict[str, Any]] = []
    for idx in range(min(len(alignment.ids), probs.shape[0])):
        if alignment.special[idx]:
            continue
        start, end = alignment.offsets[idx]
        word = alignment.tokens[idx]
        if unk_token_id is not None and alignment.ids[idx] == unk_token_id:
            word = alignment.text[start:end]
        best = int(probs[idx].argmax())
        tokens.append({"entity": labels[best], "score": float(probs[idx, best]), "word": word,
                       "start": int(start), "end": int(end)})
    groups: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for token in tokens:
        if pending:
            bi, tag = split_tag(token["entity"])
            if not (tag == split_tag(pending[-1]["entity"])[1] and bi != "B"):
                groups.append(_group(pending, alignment))
                pending = []
        pending.append(token)
    if pending:
        groups.append(_group(pending, alignment))
    ignored = set(ignore_labels)
    return [g for g in groups if g["entity_group"] not in ignored]


def _group(tokens: list[dict[str, Any]], alignment: Any) -> dict[str, Any]:
    """One entity from adjacent tokens of one tag (the pipeline's ``group_sub_entities``)."""
    return {
        "entity_group": tokens[0]["entity"].split("-", 1)[-1],
        "score": float(np.mean([t["score"] for t in tokens])),
        "word": alignment.decode([t["word"] for t in tokens]),
        "start": tokens[0]["start"],
        "end": tokens[-1]["end"],
    }
