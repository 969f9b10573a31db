"""Held-out data preprocessed once through the runtime path (for the gate and bench). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemm.data.dataset import Record


@dataclass
class EvalSet:
    """Preprocessed held-out data: feeds in batches, label indices, provenance."""

    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray
    source: dict[str, Any]

    @classmethod
    def build(cls, records: list[Record], label_names: list[str], preprocessor: Any, modalities: list[str],
              source: dict[str, Any], *, batch_size: int = 32, fixed_shapes: bool = False) -> EvalSet:
        """Preprocess ``records`` in batches.

        ``fixed_shapes`` pads every batch to one sequence / audio length and drops a partial last
        batch: ONNX Runtime's histogram calibrators (entropy, percentile) stack all batches into
        one array and fail on ragged shapes.
        """
        if any(r.tags is not None for r in records):  # NER: one tag per word (edgemm.data.ner)
            from edgemm.data.ner import token_eval_arrays

            feeds, tags = token_eval_arrays(records, label_names, preprocessor, batch_size=batch_size,
                                            fixed_shapes=fixed_shapes)
            return cls(feeds=feeds, labels=tags, source=source)
        index = {label: i for i, label in enumerate(label_names)}
        chunks = [records[s:s + batch_size] for s in range(0, len(records), batch_size)]
        pad: dict[str, Any] = {"text_pad_to": None, "audio_pad_to": None}
        if fixed_shapes:
            if len(chunks) > 1 and len(chunks[-1]) < batch_size:
                chunks = chunks[:-1]
            if preprocessor.text is not None:
                pad["text_pad_to"] = preprocessor.text.max_length
            audio = preprocessor.preprocessing.get("audio")
            if audio is not None and "audio" in modalities and audio["features"] != "whisper_log_mel":
                lengths = [preprocessor(_raw(chunk, modalities))[audio["input"]].shape[-1]
                           for chunk in chunks]
                pad["audio_pad_to"] = max(lengths)
            image = preprocessor.preprocessing.get("image")
            if image is not None and "image" in modalities and image.get("pad_to_batch_max"):
                # ViLT: every batch takes its largest picture's size; pad all to the largest of all.
                sizes = [preprocessor(_raw(chunk, modalities))[image["input"]].shape[-2:] for chunk in chunks]
                pad["image_pad_to"] = (max(s[0] for s in sizes), max(s[1] for s in sizes))
        feeds = [preprocessor(_raw(chunk, modalities), **pad) for chunk in chunks]
        kept = [r for chunk in chunks for r in chunk]
        return cls(feeds=feeds, labels=np.array([index[r.label] for r in kept]), source=source)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _raw(records: list[Record], modalities: list[str]) -> dict[str, list[Any]]:
    """Per-modality lists of raw inputs for a chunk of records."""
    rows = [r.inputs(modalities) for r in records]
    return {m: [row[m] for row in rows] for m in modalities}
