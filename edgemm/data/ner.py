"""Token-level (NER) held-out data for the accuracy gate: feeds and per-token tag ids. Torch-free.

The gate compares a variant with FP32 on what the model says about each **word**: the tag its
first sub-token gets (the CoNLL convention transformers' NER examples train with). Every other
position (special tokens, padding, later sub-tokens) is labelled :data:`IGNORE` and left out of
the accuracy and macro-F1 (:func:`edgemm.data.metrics.classification_metrics`). Token-level
accuracy moves with every flipped word, so a budget in points means what it means for
classification; entity-level F1 would hide flips inside long entities.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgemm.data.dataset import DatasetError, Record

# The label of positions the metric skips (as transformers' -100).
IGNORE = -100


def word_spans(words: tuple[str, ...] | list[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of each word in ``" ".join(words)``."""
    spans, at = [], 0
    for word in words:
        spans.append((at, at + len(word)))
        at += len(word) + 1
    return spans


def first_subtoken_labels(alignment: Any, spans: list[tuple[int, int]], tag_ids: list[int]) -> list[int]:
    """Per position of one tokenized row: the word's tag id on its first sub-token, else :data:`IGNORE`.

    Args:
        alignment: The row's :class:`~edgemm.runtime.preprocess.text.TokenAlignment`.
        spans: Character span of each word (:func:`word_spans`).
        tag_ids: Tag id of each word.
    """
    starts = np.array([s for s, _ in spans])
    labels = [IGNORE] * len(alignment.ids)
    previous = -1
    for pos, ((start, end), special) in enumerate(zip(alignment.offsets, alignment.special)):
        if special or end <= start:
            continue
        word = int(np.searchsorted(starts, start, side="right")) - 1
        if word < 0 or start >= spans[word][1]:
            continue  # a token of the spaces between words (e.g. a lone "▁")
        if word != previous:
            labels[pos] = tag_ids[word]
            previous = word
    return labels


def token_eval_arrays(records: list[Record], label_names: list[str], preprocessor: Any, *, batch_size: int = 32,
                      fixed_shapes: bool = False) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Feeds and ``[N, L]`` tag ids of token-level records, every batch padded to one length ``L``.

    One length for all batches, so the outputs of every batch stack into one ``[N, L, labels]``
    array for the gate, and the calibrators see uniform shapes. ``fixed_shapes`` drops a partial
    last batch (as :meth:`edgemm.data.evalset.EvalSet.build` does).

    Raises:
        DatasetError: A record has a tag the model does not know.
    """
    if preprocessor.text is None:
        raise DatasetError("Token-level data needs a model that takes text.", hint="Give this data to a text model.")
    index = {label: i for i, label in enumerate(label_names)}
    unknown = sorted({t for r in records for t in (r.tags or ()) if t not in index})
    if unknown:
        raise DatasetError(f"The data has tags the model does not know: {unknown} (model labels: {label_names}).",
                           hint="Use data made for this model.")
    chunks = [records[s:s + batch_size] for s in range(0, len(records), batch_size)]
    if fixed_shapes and len(chunks) > 1 and len(chunks[-1]) < batch_size:
        chunks = chunks[:-1]
    kept = [r for chunk in chunks for r in chunk]
    longest = max(len(a.ids) for a in preprocessor.text.alignments([r.text for r in kept]))
    feeds, rows = [], []
    for chunk in chunks:
        texts = [r.text for r in chunk]
        feeds.append(preprocessor({"text": texts}, text_pad_to=longest))
        for record, alignment in zip(chunk, preprocessor.text.alignments(texts, pad_to=longest)):
            rows.append(first_subtoken_labels(alignment, word_spans(record.words or ()),
                                              [index[t] for t in record.tags or ()]))
    return feeds, np.array(rows, dtype=np.int64)
