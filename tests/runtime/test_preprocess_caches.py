"""The preprocessing caches (texts by string, pictures by payload digest) are bounded, exact and
invisible: the same feeds, the same errors in the same order, nothing shared with callers."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

import edgemm.runtime.preprocess.pipeline as pipeline_module
import edgemm.runtime.preprocess.text as text_module
from edgemm.errors import InputTooLargeError, InvalidInputError, UnsupportedMediaError
from edgemm.runtime.preprocess.pipeline import Preprocessor
from edgemm.runtime.preprocess.text import TextPreprocessor
from tests.fixtures import preprocess_corpus as corpus


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return corpus.tokenizer_dir(tmp_path_factory.mktemp("tok"))


def _png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _preprocessor(folder, section: str = "reference") -> Preprocessor:
    return Preprocessor(folder, {"text": corpus.text_section({}), "image": corpus.IMAGE_SECTIONS[section]},
                        corpus.modalities(True))


def test_text_cache_is_bounded(folder, monkeypatch):
    monkeypatch.setattr(text_module, "_CACHE_ENTRIES", 5)
    text = TextPreprocessor(folder, corpus.text_section({}))
    reference = TextPreprocessor(folder, corpus.text_section({}))
    for i in range(40):
        texts = [f"answer {i}", f"answer {i % 3}", "seven"]
        feed = text(texts)
        assert len(text._rows) <= 5
        # Bypass every cache: the tokenizer's own batch padding, as before the cache existed.
        with reference._lock:
            encodings = reference._encode(texts, 32, None)
        np.testing.assert_array_equal(feed["input_ids"], np.asarray([e.ids for e in encodings], dtype=np.int64))
        np.testing.assert_array_equal(feed["attention_mask"],
                                      np.asarray([e.attention_mask for e in encodings], dtype=np.int64))
    monkeypatch.setattr(text_module, "_CACHE_BYTES", 1)
    text(["one more"])
    assert len(text._rows) <= 1


def test_text_cache_keeps_checks_and_alignments(folder):
    text = TextPreprocessor(folder, corpus.text_section({"max_chars": 12}))
    assert text(["seven"])["input_ids"].shape == (1, 3)
    with pytest.raises(InputTooLargeError):
        text(["seven", "x" * 13])
    with pytest.raises(InvalidInputError, match="UTF-8"):
        text([b"\xff"])
    assert text([b"seven"])["input_ids"].tolist() == text(["seven"])["input_ids"].tolist()
    # alignments() pads on the shared tokenizer; the cached path must not inherit its settings.
    assert text.alignments(["seven", "it is seven"])[0].tokens[-1] == "[PAD]"
    assert text(["it is seven"], max_length=3)["input_ids"].shape == (1, 3)
    assert text(["it is seven"])["input_ids"].shape == (1, 5)
    assert text(["seven"], pad_to=6)["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0]]


def test_text_cache_is_thread_safe(folder):
    text = TextPreprocessor(folder, corpus.text_section({}))
    plain = TextPreprocessor(folder, corpus.text_section({}))
    texts = ("seven", "it is a seven", "七 and more words")
    limits = (None, 2, 3, 4)
    reference = {(t, limit): plain([t], max_length=limit)["input_ids"].tolist() for t in texts for limit in limits}
    failures: list[str] = []

    def worker(seed: int) -> None:
        for i in range(200):
            key = (texts[(seed + i) % 3], limits[(seed * 7 + i) % 4])
            got = text([key[0]], max_length=key[1])["input_ids"].tolist()
            if got != reference[key]:
                failures.append(f"{key}: {got} != {reference[key]}")
            if i % 50 == 0:
                text.alignments([key[0]])

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_picture_rows_cached_exactly_and_bounded(folder, monkeypatch):
    monkeypatch.setattr(pipeline_module, "_ROWS_ENTRIES", 3)
    pre = _preprocessor(folder)
    fresh = _preprocessor(folder)
    payloads = [_png(v) for v in range(0, 250, 25)]
    for _ in range(3):
        for i in range(len(payloads)):
            batch = {"text": ["seven"] * 3, "image": [payloads[i], payloads[(i + 1) % len(payloads)], payloads[0]]}
            got = pre(batch)["pixel_values"]
            np.testing.assert_array_equal(got, fresh._modality_feed("image", batch["image"], text_pad_to=None,
                                                                     audio_pad_to=None)["pixel_values"])
            fresh._rows.clear()
            assert len(pre._rows) <= 3
    # bytes, bytearray and memoryview of one payload are one picture; a strided view is not keyed.
    same = [payloads[3], bytearray(payloads[3]), memoryview(payloads[3])]
    feed = pre({"text": ["a", "b", "c"], "image": same})["pixel_values"]
    assert (feed == feed[0]).all()
    assert pipeline_module._payload_key(memoryview(payloads[3])[::2]) is None


def test_picture_errors_unchanged_by_cache(folder):
    pre = _preprocessor(folder)
    good = _png(200)
    pre({"text": ["seven"], "image": [good]})
    # Decoding comes first for the whole batch (a corrupt payload after a cached one is named).
    with pytest.raises(UnsupportedMediaError):
        pre({"text": ["a", "b"], "image": [good, b"not an image"]})
    huge = _png(1, size=64)
    small = Preprocessor(folder, {"text": corpus.text_section({}),
                                  "image": {**corpus.IMAGE_SECTIONS["reference"], "max_pixels": 100}},
                         corpus.modalities(True))
    with pytest.raises(InputTooLargeError):
        small({"text": ["a"], "image": [huge]})
    with pytest.raises(InputTooLargeError):
        small({"text": ["a"], "image": [huge]})  # never cached: refused again
    crop = _preprocessor(folder, "crop_only")
    assert crop({"text": ["a"], "image": [_png(3, 20)]})["pixel_values"].shape == (1, 3, 16, 12)
    no_resize = Preprocessor(folder, {"text": corpus.text_section({}),
                                      "image": {**corpus.IMAGE_SECTIONS["crop_only"], "center_crop": None}},
                             corpus.modalities(True))
    no_resize({"text": ["a"], "image": [_png(3, 20)]})
    with pytest.raises(InvalidInputError, match="different sizes"):
        no_resize({"text": ["a", "b"], "image": [_png(3, 20), _png(3, 21)]})
