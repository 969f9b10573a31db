"""Fine-tuned transformers audio classifiers export with no flags and match the pipeline.

Per architecture a tiny random-weight model (Wav2Vec2 with an attention mask, HuBERT and WavLM
without one, AST on Kaldi filter banks) is saved with its feature extractor, exported by
``edgemm export DIR``, and the torch-free bundle's predictions are compared with transformers'
``audio-classification`` pipeline on the same recordings: real speech from ``espeak-ng`` in
English and Chinese, speech-like signals, tones, a sweep, near silence and clipped noise, from
0.15 s to several seconds. The pipeline gets the samples as numpy arrays at the extractor's rate,
edgemm the same samples as 16-bit WAV bytes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from click.testing import CliRunner

from edgemm.bundle.verify import verify_bundle
from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_speechlike
from edgemm.runtime import Predictor
from edgemm.runtime.preprocess.audio import decode_wav, encode_wav, resample
from tests.conftest import run_edge

RATE = 16000
SCORE_ATOL = 1e-4
# Classifier weights: decisive scores (transformers initialises them at 0.02), yet logits small
# enough that a 30 s parity case stays within the float32 tolerance.
HEAD_STD = 0.3
LABELS = ["yes", "no", "seven", "silence"]
# A small conv feature encoder with wav2vec2's strides (320 samples per frame).
_CONV = dict(conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=16,
                num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                label2id={v: k for k, v in enumerate(LABELS)})


def _case(name: str):
    """(model, feature extractor) of a tiny model of architecture ``name``."""
    if name == "wav2vec2-mask":
        config = tf.Wav2Vec2Config(**_CONV, **_ENCODER, feat_extract_norm="layer", do_stable_layer_norm=True)
        extractor = tf.Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True)
        return tf.Wav2Vec2ForSequenceClassification(config), extractor
    if name == "hubert":
        config = tf.HubertConfig(**_CONV, **_ENCODER, feat_extract_norm="group")
        return tf.HubertForSequenceClassification(config), tf.Wav2Vec2FeatureExtractor(return_attention_mask=False)
    if name == "wavlm":
        config = tf.WavLMConfig(**_CONV, **_ENCODER, feat_extract_norm="group", num_buckets=32, max_bucket_distance=80)
        return tf.WavLMForSequenceClassification(config), tf.Wav2Vec2FeatureExtractor(return_attention_mask=False)
    if name == "ast":
        config = tf.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                              patch_size=16, frequency_stride=10, time_stride=10, num_mel_bins=64, max_length=128,
                              num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                              label2id={v: k for k, v in enumerate(LABELS)})
        return tf.ASTForAudioClassification(config), tf.ASTFeatureExtractor(num_mel_bins=64, max_length=128)
    raise KeyError(name)


CASES = ["wav2vec2-mask", "hubert", "wavlm", "ast"]


def _save(name: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model, extractor = _case(name)
    # Random heads give near-uniform scores that hide preprocessing errors: make them decisive.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == len(LABELS):
                module.weight.normal_(0.0, HEAD_STD)
    model.eval().save_pretrained(folder)
    extractor.save_pretrained(folder)
    return folder


def _speak(text: str, voice: str, folder: Path) -> np.ndarray:
    """``espeak-ng`` speech at 16 kHz (it speaks at 22.05 kHz; resampled here once)."""
    path = folder / f"{abs(hash((text, voice)))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    samples, rate = decode_wav(path.read_bytes())
    return resample(samples[:, 0], rate, RATE)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, np.ndarray]:
    """Twelve recordings at 16 kHz, as 16-bit values so WAV bytes carry them exactly."""
    folder = tmp_path_factory.mktemp("speech")
    t = np.arange(int(0.5 * RATE)) / RATE
    rng = np.random.default_rng(0)
    waves = {
        "speechlike-0.15s": synthesize_speechlike(0.15, RATE, seed=1),
        "speechlike-1.1s": synthesize_speechlike(1.1, RATE, seed=2),
        "speechlike-2.5s": synthesize_speechlike(2.5, RATE, seed=3),
        "tone-440hz": 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 880 * t),
        "sweep": 0.6 * np.sin(2 * np.pi * (100 + 1900 * np.arange(RATE) / RATE / 2) * np.arange(RATE) / RATE),
        "near-silence": 1e-3 * rng.standard_normal(int(0.8 * RATE)),
        "clipped-noise": np.clip(2.0 * rng.standard_normal(int(0.6 * RATE)), -1, 1),
    }
    if shutil.which("espeak-ng"):
        waves["en-seven"] = _speak("seven", "en-us", folder)
        waves["en-sentence"] = _speak("Hello, is this the number seven or the number one?", "en-us", folder)
        waves["en-count"] = _speak("one two three", "en-gb", folder)
        waves["zh-hello"] = _speak("你好，世界", "cmn", folder)
        waves["zh-seven"] = _speak("七", "cmn", folder)
    out = {}
    for name, wave in waves.items():
        pcm = np.clip(np.round(np.asarray(wave, dtype=np.float64) * 32768), -32768, 32767)
        out[name] = (pcm * 2.0**-15).astype(np.float32)
    assert len(out) >= 10, "espeak-ng is needed for real speech"
    return out


def _export(folder: Path, bundle: Path) -> None:
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(bundle), "--json"])
    assert result.exit_code == 0, result.output


def _assert_same(expected: list[dict], got: dict, where: str) -> None:
    top = expected[0]["label"]
    tie = expected[0]["score"] - expected[1]["score"] < 1e-5
    assert got["label"] == top or tie, f"{where}: edgemm says {got['label']!r}, the pipeline {top!r}"
    for item in expected:
        assert abs(got["scores"][item["label"]] - item["score"]) <= SCORE_ATOL, (where, item, got["scores"])


@pytest.mark.parametrize("name", CASES)
def test_export_dir_matches_audio_classification_pipeline(name, tmp_path, recordings):
    folder = _save(name, tmp_path / f"tiny-{name}")
    bundle = tmp_path / "bundle"
    _export(folder, bundle)
    manifest = verify_bundle(bundle)
    assert manifest.source["family"] == "hf-audio-classification"
    assert manifest.task == "classification" and manifest.labels == LABELS
    assert manifest.postprocessing["type"] == "softmax"
    inputs = [t.name for t in manifest.inputs]
    assert inputs == (["input_values", "attention_mask"] if name == "wav2vec2-mask" else ["input_values"])

    classifier = tf.pipeline("audio-classification", model=str(folder))
    spread = []
    with Predictor.load(bundle, device="cpu") as predictor:
        for key, wave in recordings.items():
            wav = encode_wav(wave, RATE)
            # The features themselves: group-normed encoders barely react to a wrong scale, so
            # the scores alone would not show every preprocessing error.
            features = predictor.preprocessor({"audio": [wav]})["input_values"]
            if name == "ast":
                features = features.transpose(0, 2, 1)
            reference = classifier.feature_extractor(wave.copy(), sampling_rate=RATE, return_tensors="np")
            np.testing.assert_allclose(features, reference["input_values"], atol=1e-5, rtol=0, err_msg=key)
            expected = classifier(wave.copy())
            # One request per recording, as the pipeline runs them.
            got = predictor.predict(audio=wav).to_dict()
            _assert_same(expected, got, f"{name} / {key}")
            spread.append(expected[0]["score"] - expected[-1]["score"])
    assert max(spread) > 0.02, spread

    # The same through the torch-free CLI, with torch and sockets blocked.
    wav = tmp_path / "seven.wav"
    key = "en-seven" if "en-seven" in recordings else "speechlike-1.1s"
    wav.write_bytes(encode_wav(recordings[key], RATE))
    code, out, err, guard = run_edge("predict", str(bundle), "--audio", str(wav), "--json")
    assert code == 0, err
    assert guard == {"modules": [], "sockets": 0}
    _assert_same(classifier(recordings[key].copy()), json.loads(out)["predictions"][0], f"{name} / cli")


def test_directory_without_feature_extractor_is_refused(tmp_path):
    model, _ = _case("hubert")
    folder = tmp_path / "no-extractor"
    model.save_pretrained(folder)
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(tmp_path / "bundle")])
    assert result.exit_code == 2, result.output
    assert "feature extractor" in result.output and "Traceback" not in result.output


def test_ast_extractor_that_does_not_fit_the_model_is_refused(tmp_path):
    folder = _save("ast", tmp_path / "tiny-ast")
    tf.ASTFeatureExtractor(num_mel_bins=64, max_length=256).save_pretrained(folder)
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(tmp_path / "bundle")])
    assert result.exit_code == 2, result.output
    assert "max_length" in result.output and "Traceback" not in result.output
