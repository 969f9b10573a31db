"""Raw samples for parity checks and golden sets: realistic ones, and random ones.

Parity on random tensors alone hides bugs that real inputs expose (padding rows, special tokens,
attention masks, normalised pixels), so the built-in feeds are built from raw texts, images and
speech-like audio, pushed through the *runtime* preprocessing — the exact path the kiosk runs.
Realistic samples in turn never reach the corners of the input space (rare token ids, white or
black images, loud noise), where a branch the trace froze hides: :func:`random_feed` covers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgemm.data.synthetic import synthesize_image, synthesize_speechlike
from edgemm.errors import BundleError
from edgemm.export.contract import SpecContractError
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
        try:
            pre = Preprocessor(bundle_dir, spec.preprocessing, spec.modalities)
            feed = pre(raw_batch(spec, case, seed=seed),
                       text_pad_to=case.sizes.get("seq"), audio_pad_to=case.sizes.get("audio_len"))
        except BundleError as exc:  # the bundle-to-be's preprocessing is the spec's: a config error
            raise SpecContractError(f"The spec's preprocessing is invalid: {exc.message}",
                                    hint="Build the sections with the helpers (text_section, image_preprocessing_from_hf, "
                                         "audio_section …) and put every file they name into assets.") from exc
    return checked_feed(spec, case, feed)


def checked_feed(spec: ExportSpec, case: ShapeCase, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feed`` if it has exactly the spec's inputs, with their dtypes and the case's sizes.

    Raises:
        SpecContractError: Names, dtypes or shapes differ from what the spec declares.
    """
    expected = {t.name for t in spec.inputs}
    if set(feed) != expected:
        raise SpecContractError(
            f"The preprocessing produces inputs {sorted(feed)} for case {case.name!r}; the spec declares {sorted(expected)}.",
            hint="Name the inputs alike in the TensorSpecs, the modalities' 'inputs' and the preprocessing sections "
                 "(the helpers take input names), or give the spec a make_feed.",
        )
    for tensor in spec.inputs:
        array = feed[tensor.name]
        if np.dtype(array.dtype).name != tensor.dtype:
            raise SpecContractError(
                f"Input {tensor.name!r} is declared {tensor.dtype} but the preprocessing produces {array.dtype}.",
                hint=f"Declare TensorSpec({tensor.name!r}, {np.dtype(array.dtype).name!r}, …): the kiosk feeds what "
                     "the preprocessing produces.",
            )
        want = tensor.dims_for(case.sizes) if all(isinstance(d, int) or d in case.sizes for d in tensor.shape) else None
        if want is not None and tuple(array.shape) != want:
            raise SpecContractError(
                f"Input {tensor.name!r} is declared {list(tensor.shape)}, which is {list(want)} for case {case.name!r}, "
                f"but the preprocessing produces {list(array.shape)}.",
                hint="Declare the fixed sizes the preprocessing produces (e.g. the image size and channels).",
            )
    return feed


def random_feed(spec: ExportSpec, case: ShapeCase, bundle_dir: Path, *, seed: int) -> dict[str, np.ndarray]:
    """A feed at ``case``'s sizes drawn across the whole input space.

    Token ids uniformly over the tokenizer's vocabulary with valid masks (random lengths, at least
    the shortest sequence, one row full), images of random size whose pixels span a random
    sub-range of 0..255 (so some rows are near-white, some near-black), noise and silence as
    audio, and optional modalities absent in random rows — all through the runtime
    preprocessing, so the feed is one a kiosk could send. A spec with ``make_feed`` draws from
    it with this seed instead.

    Args:
        spec: The model's export spec.
        case: The sizes to draw at.
        bundle_dir: Directory the preprocessing paths (``tokenizer.json``) are relative to.
        seed: The random seed (recorded in the manifest).
    """
    rng = np.random.default_rng(seed)
    if spec.make_feed is not None:
        return checked_feed(spec, case, spec.make_feed(case, bundle_dir, rng))
    raw: dict[str, list[Any]] = {}
    for modality, info in spec.modality_specs().items():
        rows = case.sizes.get(info.batch_axis, case.sizes.get("batch", 1))
        present = [info.required or row == 0 or rng.random() > 0.3 for row in range(rows)]
        raw[modality] = [None if not keep else _random_item(modality, spec.preprocessing[modality], case, rng, row)
                         for row, keep in enumerate(present)]
    pre = Preprocessor(bundle_dir, spec.preprocessing, spec.modalities)
    feed = pre(raw, text_pad_to=case.sizes.get("seq"), audio_pad_to=case.sizes.get("audio_len"))
    if "text" in spec.preprocessing:
        feed.update(_random_tokens(spec.preprocessing["text"], feed, bundle_dir, rng))
    return checked_feed(spec, case, feed)


def _random_item(modality: str, section: dict[str, Any], case: ShapeCase, rng: np.random.Generator, row: int) -> Any:
    if modality == "text":
        return ""  # replaced by random token ids once the shapes are known
    if modality == "image":
        height, width = (int(v) for v in rng.integers(8, 97, size=2))
        low = 0 if row == 0 else int(rng.integers(0, 256))
        high = 255 if row == 0 else int(rng.integers(low, 256))
        return rng.integers(low, high + 1, size=(height, width, 3)).astype(np.uint8)
    rate = int(section["sampling_rate"])
    longest = int(float(section.get("max_seconds") or 30.0) * rate)
    if section.get("features") == "waveform" and "audio_len" in case.sizes:
        longest = min(longest, case.sizes["audio_len"])
    elif section.get("features") == "log_mel" and "audio_len" in case.sizes:
        longest = min(longest, (case.sizes["audio_len"] - 1) * int(section["log_mel"]["hop_length"]) + 1)
    shortest = min(longest, max(1, rate // 10))
    samples = longest if row == 0 else int(rng.integers(shortest, longest + 1))
    if row % 5 == 4:
        return np.zeros(samples, dtype=np.float32), rate  # silence
    amplitude = 10.0 ** rng.uniform(-3.0, 0.0)
    return rng.uniform(-amplitude, amplitude, size=samples).astype(np.float32), rate


def _random_tokens(section: dict[str, Any], feed: dict[str, np.ndarray], bundle_dir: Path,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random token ids over the vocabulary at the feed's text shape, with masks that fit them."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(bundle_dir / section["tokenizer"])).get_vocab_size(with_added_tokens=False)
    ids = feed[section["input_ids"]]
    rows, seq = ids.shape
    valid = np.ones((rows, seq), dtype=bool)
    mask_name = section.get("attention_mask")
    if mask_name:
        shortest = min(seq, max(1, int(section.get("min_length", 1))))
        lengths = rng.integers(shortest, seq + 1, size=rows)
        lengths[0] = seq  # one row fills the case's length, as the longest text of a batch does
        valid = np.arange(seq)[None, :] < lengths[:, None]
        if section.get("padding_side") == "left":
            valid = valid[:, ::-1]
    drawn = np.full((rows, seq), int(section["pad_token_id"]), dtype=ids.dtype)
    drawn[valid] = _stratified_ids(vocab, int(valid.sum()), rng)
    out = {section["input_ids"]: drawn}
    if mask_name:
        out[mask_name] = valid.astype(feed[mask_name].dtype)
    return out


def _stratified_ids(vocab: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` token ids spread over the whole vocabulary: one draw from each of ``count`` equal
    slices of ``[0, vocab)``, shuffled, so the rarest word pieces at the top are always reached."""
    edges = np.linspace(0, vocab, count + 1)
    low, high = np.floor(edges[:-1]).astype(np.int64), np.maximum(np.floor(edges[1:]).astype(np.int64), 1)
    draws = rng.integers(low, np.maximum(high, low + 1))
    return rng.permutation(np.minimum(draws, vocab - 1))
