"""AST's Kaldi filter banks, torch-free, against transformers' ASTFeatureExtractor."""

from __future__ import annotations

import numpy as np
import pytest
import transformers as tf

from edgemm.data.synthetic import synthesize_speechlike
from edgemm.errors import BundleError, UnsupportedModelError
from edgemm.runtime.preprocess.audio import (
    audio_preprocessing_from_hf,
    prepare_audio_batch,
    validate_audio_preprocessing,
)
from edgemm.runtime.preprocess.audio.fbank import FBANK_FEATURES, kaldi_mel_filters


@pytest.mark.parametrize(("n_mels", "max_length", "rate"), [(128, 1024, 16000), (64, 100, 16000), (32, 60, 8000)])
def test_features_match_the_extractor(n_mels, max_length, rate):
    extractor = tf.ASTFeatureExtractor(num_mel_bins=n_mels, max_length=max_length, sampling_rate=rate)
    section = audio_preprocessing_from_hf(extractor.to_dict(), inputs=("input_values", None))
    assert section["features"] == FBANK_FEATURES and section["mask_input"] is None
    rng = np.random.default_rng(0)
    waves = [
        synthesize_speechlike(0.6, rate, seed=1),           # shorter than max_length: zero padded
        synthesize_speechlike(12.0, rate, seed=2),          # longer: cut
        (0.05 * rng.standard_normal(399)).astype(np.float32),  # shorter than one frame
        np.zeros(rate // 2, dtype=np.float32),              # digital silence: the floor
    ]
    feed = prepare_audio_batch(waves, section)
    assert list(feed) == ["input_values"]
    assert feed["input_values"].shape == (4, n_mels, max_length)
    for wave, got in zip(waves, feed["input_values"]):
        expected = extractor(wave, sampling_rate=rate, return_tensors="np")["input_values"][0]
        np.testing.assert_allclose(got.T, expected, atol=1e-5, rtol=0)


def test_without_normalisation_gives_raw_log_energies():
    extractor = tf.ASTFeatureExtractor(num_mel_bins=32, max_length=50, do_normalize=False)
    section = audio_preprocessing_from_hf(extractor.to_dict(), inputs=("input_values", None))
    wave = synthesize_speechlike(0.3, 16000, seed=3)
    got = prepare_audio_batch([wave], section)["input_values"][0].T
    expected = extractor(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert (got[-5:] == 0).all()  # the padded frames stay zero


def test_mel_filters_match_transformers():
    from transformers.audio_utils import mel_filter_bank

    expected = mel_filter_bank(num_frequency_bins=257, num_mel_filters=40, min_frequency=20, max_frequency=8000,
                               sampling_rate=16000, norm=None, mel_scale="kaldi", triangularize_in_mel_space=True)
    np.testing.assert_array_equal(kaldi_mel_filters(40, 16000), expected)


def test_malformed_sections_are_bundle_errors():
    section = audio_preprocessing_from_hf(tf.ASTFeatureExtractor().to_dict(), inputs=("input_values", None))
    validate_audio_preprocessing(section)
    for key, value in (("max_frames", 0), ("std", 0.0), ("mean", float("nan")), ("hop_length", 100)):
        broken = {**section, "log_mel": {**section["log_mel"], key: value}}
        with pytest.raises(BundleError):
            validate_audio_preprocessing(broken)


def test_unknown_extractor_names_ast_among_the_supported():
    with pytest.raises(UnsupportedModelError) as info:
        audio_preprocessing_from_hf({"feature_extractor_type": "SpeechT5FeatureExtractor"})
    assert "ASTFeatureExtractor" in info.value.hint
