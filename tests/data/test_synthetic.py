"""Tests for the build side's synthetic raw samples (edgemm.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from edgemm.data.synthetic import synthesize_image, synthesize_speechlike
from edgemm.errors import InvalidInputError


def test_synthesize_image_is_deterministic():
    first = synthesize_image(64, 48, seed=7)
    assert first.shape == (64, 48, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, synthesize_image(64, 48, seed=7))
    assert not np.array_equal(first, synthesize_image(64, 48, seed=8))
    assert first.std() > 10  # not flat
    with pytest.raises(InvalidInputError):
        synthesize_image(0, 4, 0)
    with pytest.raises(InvalidInputError):
        synthesize_image(4, 4, -1)


def test_synthesize_speechlike_is_deterministic():
    a = synthesize_speechlike(1.5, 16000, seed=7)
    assert a.dtype == np.float32 and a.shape == (24000,)
    assert np.array_equal(a, synthesize_speechlike(1.5, 16000, seed=7))
    assert not np.array_equal(a, synthesize_speechlike(1.5, 16000, seed=8))
    assert 0.5 < np.abs(a).max() <= 0.9
    for seconds, rate in ((0.0, 16000), (3601.0, 16000), (1.0, 100), (1.0, 16000.0)):
        with pytest.raises(InvalidInputError) as info:
            synthesize_speechlike(seconds, rate, 1)
        assert info.value.hint
