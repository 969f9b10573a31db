"""Realistic raw samples for parity checks and golden sets.

Parity on random tensors hides bugs that real inputs expose (padding rows, special tokens,
attention masks, normalised pixels). Feeds are therefore built from raw texts, images and
speech-like audio, pushed through the *runtime* preprocessing — the exact path the kiosk runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgemm.data.synthetic import synthesize_image, synthesize_speechlike
from edgemm.errors import ExportError
from edgemm.models.spec import ExportSpec, ShapeCase
from edgemm.runtime.preprocess.pipeline import Preprocessor

# Answers a child gives at a learning kiosk, plus longer and multilingual text.
TEXTS = (
    "seven",
    "7",
    "I think it is 7",
    "七",
    "it's a three!",
    "the number after four is five, because you count one, two, three, four, five",
    "ثلاثة",
    "zwei 🙂",
    "nine or maybe eight? I am not sure, it looks a bit like a loop on top of a line",
    "A cat sitting on a mat next to the window while the sun is shining on a quiet afternoon",
)


def raw_batch(spec: ExportSpec, case: ShapeCase, *, seed: int = 0) -> dict[str, list[Any]]:
    """Raw inputs for ``case``: per modality a list with ``None`` for absent optional rows.

    Texts come from :data:`TEXTS` (empty or overlong where the case asks for the shortest or
    longest sequence), images and speech-like audio from :mod:`edgemm.data.synthetic`, with
    sizes and durations varying by row so that resizing and padding are exercised.

    Args:
        spec: The model's export spec (modalities and preprocessing).
        case: The shape case (sizes per axis, absent rows per modality).
        seed: Varies the synthetic images and audio; equal seeds give equal batches.

    Returns:
        ``modality -> list of raw items`` (strings, uint8 HxWx3 arrays, ``(samples, rate)``).
    """
    batch = case.sizes.get("batch", 1)
    out: dict[str, list[Any]] = {}
    for modality, info in spec.modalities.items():
        n = case.sizes.get(info.get("batch_axis", "batch"), batch)
        absent = set(case.absent.get(modality, ()))
        items: list[Any] = []
        for row in range(n):
            if row in absent:
                items.append(None)
            elif modality == "text":
                items.append(_text_for(case, row))
            elif modality == "image":
                h, w = 40 + 37 * ((row + seed) % 5), 64 + 23 * ((row * 3 + seed) % 4)
                items.append(synthesize_image(h, w, seed=seed * 101 + row))
            else:
                section = spec.preprocessing["audio"]
                rate = int(section["sampling_rate"])
                seconds = min(0.4 + 0.3 * ((row + seed) % 4), float(section.get("max_seconds") or 30.0))
                items.append((synthesize_speechlike(seconds, rate, seed=seed * 31 + row), rate))
        out[modality] = items
    return out


def _text_for(case: ShapeCase, row: int) -> str:
    seq = case.sizes.get("seq")
    if seq is not None and seq <= 2:
        return ""  # the shortest sequence: special tokens only
    if case.name.endswith("longest"):
        return " ".join(TEXTS) * 8  # truncated to the longest sequence
    return TEXTS[(row * 3 + len(case.name)) % len(TEXTS)]


def case_feed(spec: ExportSpec, case: ShapeCase, bundle_dir: Path, *, seed: int = 0) -> dict[str, np.ndarray]:
    """The model feed for ``case``, exactly at the case's sizes.

    Built by the spec's own ``make_feed`` when it has one, otherwise by pushing
    :func:`raw_batch` through the runtime :class:`Preprocessor`, the path the kiosk runs.

    Args:
        spec: The model's export spec.
        case: The shape case to build.
        bundle_dir: Directory the preprocessing paths (``tokenizer.json``) are relative to.
        seed: Varies the raw samples.

    Returns:
        The feed by ONNX input name.

    Raises:
        ExportError: The feed's input names or shapes differ from what the spec declares.
    """
    if spec.make_feed is not None:
        feed = spec.make_feed(case, bundle_dir, np.random.default_rng(seed))
    else:
        pre = Preprocessor(bundle_dir, spec.preprocessing, spec.modalities)
        feed = pre(raw_batch(spec, case, seed=seed),
                   text_pad_to=case.sizes.get("seq"), audio_pad_to=case.sizes.get("audio_len"))
    expected = {t.name for t in spec.inputs}
    if set(feed) != expected:
        raise ExportError(
            f"Sample inputs for {case.name} have names {sorted(feed)}; the spec declares {sorted(expected)}.",
            hint="The ExportSpec's preprocessing must produce exactly its inputs, or give it make_feed.",
        )
    for tensor in spec.inputs:
        want = tensor.dims_for(case.sizes) if all(isinstance(d, int) or d in case.sizes for d in tensor.shape) else None
        if want is not None and tuple(feed[tensor.name].shape) != want:
            raise ExportError(
                f"Sample input {tensor.name} for {case.name} has shape {feed[tensor.name].shape}, expected {want}.",
                hint="Check the spec's fixed dimensions against its preprocessing.",
            )
    return feed
