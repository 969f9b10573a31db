"""Tiny CLAP directories (random weights; fused and unfused HTSAT, a byte-level BPE RoBERTa
tokenizer) export with ``edgemm export DIR --labels …``; the torch-free bundle answers as
transformers' ``zero-shot-audio-classification`` pipeline on speech and tones of different
lengths, and ``ClapFeatureExtractor`` is reproduced in numpy."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
import transformers as tf
from click.testing import CliRunner
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from edgemm.bundle.verify import verify_bundle
from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_speechlike
from edgemm.runtime.preprocess.audio import (
    audio_preprocessing_from_hf,
    decode_wav,
    encode_wav,
    resample,
)
from edgemm.runtime.preprocess.audio.clap import clap_features
from tests.conftest import run_edge

RATE = 48_000
LABELS = ["dog", "rain", "seven", "music", "说话"]
CORPUS = ["This is a sound of dog.", "This is a sound of rain.", "This is a sound of seven.",
          "This is a sound of music.", "This is a sound of 说话.", "a dog barking in the rain",
          "someone says seven", "quiet music"] * 10


def _tokenizer() -> tf.RobertaTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids: pad is 1, as ClapTextConfig
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0))
    return tf.RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=62)


def _save(folder, fused: bool, truncation: str | None = None):
    tok = _tokenizer()
    text = dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=64)
    audio = dict(spec_size=64, num_mel_bins=32, window_size=4, patch_size=4, patch_stride=[4, 4], depths=[1, 1],
                 num_attention_heads=[2, 2], patch_embeds_hidden_size=16, hidden_size=32, enable_fusion=fused,
                 fusion_type="aff_2d" if fused else None)
    torch.manual_seed(1 if fused else 2)
    model = tf.ClapModel(tf.ClapConfig(text_config=text, audio_config=audio, projection_dim=24)).eval()
    with torch.no_grad():  # a trained temperature, and HTSAT's batch norm statistics as after training
        model.logit_scale_a.fill_(np.log(100.0))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1.0, 1.0)
                module.running_var.uniform_(0.5, 2.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    # The released checkpoints: fused → truncation "fusion"; unfused → "rand_trunc". One second windows.
    tf.ClapFeatureExtractor(feature_size=32, max_length_s=1, frequency_min=50, frequency_max=14_000,
                            truncation=truncation or ("fusion" if fused else "rand_trunc"),
                            padding="repeatpad").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clap_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"fused": _save(root / "tiny-clap-fused", True), "unfused": _save(root / "tiny-clap-unfused", False)}


def _speak(words: str, voice: str, speed: int, path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), words], check=True,
                   capture_output=True, timeout=30)
    samples, rate = decode_wav(path.read_bytes(), max_seconds=None)
    return resample(samples if samples.ndim == 1 else samples.mean(axis=1), rate, RATE)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Twelve clips of 0.15–1.0 s at 48 kHz, as float32 WAV files and the samples they hold."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("clips")
    waves = [_speak(w, v, s, folder / f"raw{i}.wav") for i, (w, v, s) in enumerate([
        ("seven", "en", 175), ("dog", "en", 220), ("rain", "en", 140), ("hello there", "en", 260),
        ("yes", "en", 300), ("七", "cmn", 175), ("说话", "cmn", 220)])]
    t = np.arange(int(0.3 * RATE)) / RATE
    waves.append(0.5 * np.sin(2 * np.pi * 440 * t))  # a tone
    t = np.arange(int(0.8 * RATE)) / RATE
    waves.append(0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t))  # a chirp
    waves.append(synthesize_speechlike(0.6, RATE, seed=3))
    waves.append(synthesize_speechlike(1.0, RATE, seed=4))  # exactly the window
    waves.append(synthesize_speechlike(0.15, RATE, seed=5))
    out = []
    for i, wave in enumerate(waves):
        path = folder / f"clip{i}.wav"
        path.write_bytes(encode_wav(np.asarray(wave, np.float32)[:RATE], RATE, bits=-32))
        samples, _ = decode_wav(path.read_bytes(), max_seconds=None)  # what the kiosk will read
        out.append((path, samples.reshape(-1).astype(np.float32)))  # mono [frames, 1] → [frames]
    return out


@pytest.mark.parametrize("truncation", ["fusion", "rand_trunc"])
@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
def test_features_match_the_feature_extractor(truncation, padding):
    extractor = tf.ClapFeatureExtractor(feature_size=32, max_length_s=1, frequency_min=50, truncation=truncation,
                                        padding=padding)
    section = audio_preprocessing_from_hf(extractor.to_dict(), inputs=("input_features", None))
    rng = np.random.default_rng(0)
    for seconds in (0.05, 0.37, 0.5, 1.0):
        wave = (0.3 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)
        expected = extractor([wave], sampling_rate=RATE, return_tensors="np")["input_features"]
        ours = clap_features([wave], section)
        assert ours.shape == expected.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)  # bit-exact here


@pytest.fixture(scope="module")
def bundles(clap_dirs, tmp_path_factory):
    """``edgemm export DIR -o OUT --labels …`` of both directories."""
    out = {}
    for kind, folder in clap_dirs.items():
        out[kind] = tmp_path_factory.mktemp("bundles") / kind
        result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(out[kind]), "--labels", ",".join(LABELS)])
        assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("kind", ["fused", "unfused"])
def test_zero_shot_audio_matches_the_pipeline(clap_dirs, bundles, clips, kind):
    manifest = verify_bundle(bundles[kind])
    assert manifest.task == "zero_shot_classification" and manifest.labels == LABELS
    assert [t.name for t in manifest.inputs] == ["input_features"]
    assert manifest.source["zero_shot"]["prompt"] == "This is a sound of {}."

    args = ["predict", str(bundles[kind]), "--json"]
    for path, _ in clips:
        args += ["--audio", str(path)]
    code, stdout, err, guard = run_edge(*args)
    assert code == 0, err
    assert guard == {"modules": [], "sockets": 0}
    predictions = json.loads(stdout)["predictions"]

    pipe = tf.pipeline("zero-shot-audio-classification", model=str(clap_dirs[kind]))
    for prediction, (_, samples) in zip(predictions, clips, strict=True):
        reference = pipe(samples, candidate_labels=LABELS)  # one recording, as the pipeline takes them
        ref = {r["label"]: r["score"] for r in reference}
        np.testing.assert_allclose([prediction["scores"][k] for k in ref], list(ref.values()), atol=1e-4)
        top = sorted(ref.values(), reverse=True)
        if top[0] - top[1] > 1e-4:
            assert prediction["label"] == reference[0]["label"]


def test_longer_than_the_window_is_refused_not_cropped_at_random(bundles, tmp_path):
    long_clip = tmp_path / "long.wav"
    long_clip.write_bytes(encode_wav(synthesize_speechlike(1.5, RATE, seed=8), RATE))
    code, _, err, _ = run_edge("predict", str(bundles["unfused"]), "--audio", str(long_clip))
    assert code != 0 and "Traceback" not in err
    assert "Hint:" in err


def test_features_refuse_a_wave_longer_than_the_window():
    from edgemm.errors import InputTooLargeError

    extractor = tf.ClapFeatureExtractor(feature_size=32, max_length_s=1, truncation="fusion")
    section = audio_preprocessing_from_hf(extractor.to_dict(), inputs=("input_features", None))
    with pytest.raises(InputTooLargeError, match="random"):
        clap_features([np.zeros(RATE + 1, np.float32)], section)


def test_a_fused_model_fed_rand_trunc_features_skips_fusion_as_transformers_does(tmp_path, clips):
    from edgemm.models.specs.hf_clap import load_clap

    folder = _save(tmp_path / "fused-rand-trunc", True, truncation="rand_trunc")
    loaded = load_clap(folder, labels=LABELS)
    assert loaded.spec.zero_shot["is_longer"].startswith("false")
    pipe = tf.pipeline("zero-shot-audio-classification", model=str(folder))
    for _, samples in clips[:4]:
        features = clap_features([samples], loaded.spec.preprocessing["audio"])
        with torch.no_grad():
            probs = torch.softmax(loaded.module(torch.from_numpy(features))["logits"][0], -1).numpy()
        ref = {r["label"]: r["score"] for r in pipe(samples, candidate_labels=LABELS)}
        np.testing.assert_allclose(probs, [ref[k] for k in LABELS], atol=1e-5)


def test_export_without_labels_says_how(clap_dirs, tmp_path):
    result = CliRunner().invoke(cli, ["export", str(clap_dirs["fused"]), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "--labels" in result.output and "Traceback" not in result.output
