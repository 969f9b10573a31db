"""Fast preprocessing changes no value: every feed of a varied corpus equals the frozen one.

The expectations in ``tests/fixtures/preprocess_corpus.json`` were recorded with the
implementation before its speed work (tokenizer configured per call, PIL render → resize →
float64 rescale → float32 normalise in separate passes); the current runtime must reproduce
every array bit for bit: text sections (padding sides, fixed length, token type ids, the
cache), image sections (every resize mode and filter, grey, crop, background, rescale and
normalise on and off, ViLT padding) and the whole :class:`Preprocessor` on raw bytes, arrays
and PIL images, with optional pictures missing.

A Pillow or libjpeg upgrade that decodes or resizes differently fails here too, rightly: the
bundles' golden sets would move with it. Check the change, then regenerate with
``python -m tests.fixtures.preprocess_corpus --write``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgemm.runtime.preprocess.image import decode_image, image_feed
from edgemm.runtime.preprocess.pipeline import Preprocessor
from edgemm.runtime.preprocess.text import TextPreprocessor
from tests.fixtures import preprocess_corpus as corpus


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(corpus.EXPECTED_FILE.read_text())


@pytest.fixture(scope="module")
def sources() -> dict:
    return {**corpus.lossy_sources(), **corpus.lossless_sources()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return corpus.tokenizer_dir(tmp_path_factory.mktemp("tok"))


def _mismatches(actual: dict, wanted: dict) -> list[str]:
    missing = sorted(set(wanted) - set(actual))
    changed = sorted(k for k in wanted if k in actual and actual[k] != wanted[k])
    return [f"missing {k}" for k in missing] + [f"changed {k}: {actual[k]} != {wanted[k]}" for k in changed[:20]]


def test_image_feeds_unchanged(expected, sources):
    actual = corpus.image_expectations(image_feed, decode_image, sources)
    assert not _mismatches(actual, expected["image"])


def test_text_feeds_unchanged(expected, folder):
    made: dict[str, TextPreprocessor] = {}

    def make(changes):
        key = json.dumps(changes, sort_keys=True)
        if key not in made:
            made[key] = TextPreprocessor(folder, corpus.text_section(changes))
        return made[key]

    # Twice through the same preprocessors: the second pass is served by the per-text cache.
    for _ in range(2):
        assert not _mismatches(corpus.text_expectations(make), expected["text"])


def test_pipeline_feeds_unchanged(expected, sources, folder):
    def make(section, required):
        return Preprocessor(folder, {"text": corpus.text_section({}), "image": section}, corpus.modalities(required))

    actual = corpus.pipeline_expectations(make, sources)
    assert not _mismatches(actual, expected["pipeline"])


def test_feeds_are_fresh_arrays(folder, sources):
    """Cached rows never leak: a caller that writes into a feed does not change the next one."""
    pre = Preprocessor(folder, {"text": corpus.text_section({}), "image": corpus.IMAGE_SECTIONS["reference"]},
                       corpus.modalities(True))
    batch = {"text": ["seven"], "image": [sources["png_digit_8x8"]]}
    first = pre(batch)
    frozen = {k: v.copy() for k, v in first.items()}
    for value in first.values():
        assert value.flags.writeable and value.flags.c_contiguous
        value[...] = 0
    second = pre(batch)
    for name, value in frozen.items():
        np.testing.assert_array_equal(second[name], value)
