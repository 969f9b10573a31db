"""Twelve user-style models (tests/fixtures/user_zoo.py) export as written and answer like PyTorch.

For each model: ``edgemm export --spec`` with no wrapper code; then the torch-free bundle's
``predict`` (Python API on 20 real inputs in one request, and the CLI in a process where torch
cannot be imported) is compared with the model called the way its author calls it in PyTorch,
on the same requests: every output within 1e-4, and the same labels.
"""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_image, synthesize_speechlike
from edgemm.runtime import Predictor
from edgemm.runtime.postprocess import sigmoid, softmax
from tests.conftest import run_edge
from tests.fixtures import user_zoo
from tests.fixtures.user_zoo import ZOO, ZooEntry

TEXTS = ["a cat", "two dogs in the park", "七只鸟", "我觉得是一只猫", "ثلاثة طيور", "a bird 🐦 on a branch", "",
         "the quick brown fox jumps over the lazy dog, twice", "is it a seven?", "Ein Hund"]
ATOL = 1e-4


def _wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(rate)
        fh.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def _digit_scans(n: int) -> list[np.ndarray]:
    """Real handwritten digits (scikit-learn's bundled scans), dark ink on light paper."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:n]
    return [(255 - np.round(img / 16.0 * 255)).astype(np.uint8) for img in images]


def _requests(entry: ZooEntry, n: int = 20) -> dict[str, list[Any]]:
    """``n`` real requests: sentences in several scripts, pictures of different sizes, WAVs of different lengths."""
    raw: dict[str, list[Any]] = {"text": [TEXTS[i % len(TEXTS)] for i in range(n)]}
    if "image" in entry.modalities:
        raw["image"] = _digit_scans(n) if entry.grayscale else \
            [synthesize_image(24 + 9 * (i % 6), 30 + 7 * (i % 4), seed=i) for i in range(n)]
    if "audio" in entry.modalities:
        waves = [_wav(synthesize_speechlike(0.4 + 0.23 * (i % 7), 16000, seed=i)) for i in range(n)]
        # the optional modality: every third child did not speak
        raw["audio"] = [None if entry.factory == "optional_audio" and i % 3 == 0 else w for i, w in enumerate(waves)]
    return raw


def _expected_label(entry_spec, outputs: dict[str, np.ndarray], row: int) -> Any:
    """The label the model's author expects, from the PyTorch outputs (the postprocessing by hand)."""
    post = entry_spec.postprocessing
    value = outputs[post["output"]][row]
    kind = post["type"]
    if kind == "softmax":
        return entry_spec.labels[int(np.argmax(softmax(value)))]
    if kind == "probabilities":
        return entry_spec.labels[int(np.argmax(value))]
    if kind == "multilabel_probabilities":
        return sorted(label for label, p in zip(entry_spec.labels, value) if p >= post["threshold"])
    if kind == "matching":
        return entry_spec.labels[1] if float(sigmoid(value[:1])[0]) >= post["threshold"] else entry_spec.labels[0]
    return None


def _reference(entry: ZooEntry, model: torch.nn.Module, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = entry.reference(model, feed)
    return {name: value.detach().numpy() for name, value in out.items()}


@pytest.fixture(scope="module")
def zoo_bundles(tmp_path_factory) -> dict[str, Path]:
    """Every zoo model exported once, through the CLI, with no flags beyond ``--spec``."""
    root = tmp_path_factory.mktemp("zoo")
    bundles = {}
    for entry in ZOO:
        out = root / entry.factory
        result = CliRunner().invoke(cli, ["export", "--spec", f"tests.fixtures.user_zoo:{entry.factory}", "-o", str(out)])
        assert result.exit_code == 0, f"{entry.factory}: {result.output}"
        bundles[entry.factory] = out
    return bundles


def test_the_zoo_has_twelve_models():
    assert len({e.factory for e in ZOO}) >= 12


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.factory)
def test_predict_equals_pytorch_on_twenty_real_inputs(zoo_bundles, entry: ZooEntry):
    model, spec = getattr(user_zoo, entry.factory)()
    requests = _requests(entry, 20)
    with Predictor.load(zoo_bundles[entry.factory], device="cpu") as predictor:
        predictions = predictor.predict(**requests)
        feed = predictor.preprocessor(requests)
    reference = _reference(entry, model, feed)
    assert len(predictions) == 20
    for row, prediction in enumerate(predictions):
        for name, value in reference.items():
            assert np.allclose(prediction.outputs[name], value[row], atol=ATOL), (entry.factory, name, row)
        expected = _expected_label(spec, reference, row)
        if isinstance(expected, list):
            assert sorted(prediction.labels) == expected
        else:
            assert prediction.label == expected


def test_two_wavs_of_different_lengths_in_one_request_match_the_feature_extractor(zoo_bundles):
    """The raw-waveform model: the transformers feature extractor + PyTorch is the reference."""
    import transformers as tf

    model, _ = user_zoo.raw_waveform()
    tok = user_zoo.tokenizer()
    waves = [synthesize_speechlike(0.7, 16000, seed=1), synthesize_speechlike(1.9, 16000, seed=2)]
    texts = ["a dog barks", "七只鸟"]
    extractor = tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    audio = extractor(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    text = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        logits = model(text["input_ids"], text["attention_mask"], audio["input_values"], audio["attention_mask"]).numpy()
    with Predictor.load(zoo_bundles["raw_waveform"], device="cpu") as predictor:
        predictions = predictor.predict(text=texts, audio=[(w, 16000) for w in waves])
    for row, prediction in enumerate(predictions):
        assert np.allclose(prediction.outputs["logits"], logits[row], atol=ATOL)
        assert prediction.label == user_zoo.ANIMALS[int(logits[row].argmax())]


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.factory)
def test_cli_predict_without_torch_equals_pytorch(zoo_bundles, entry: ZooEntry, tmp_path):
    model, _ = getattr(user_zoo, entry.factory)()
    requests = {modality: [items[i] for i in (1, 2, 4)] for modality, items in _requests(entry, 5).items()}  # all speak
    args = [a for text in requests["text"] for a in ("--text", text)]
    for modality, suffix in (("image", ".png"), ("audio", ".wav")):
        for i, item in enumerate(requests.get(modality, [])):
            path = tmp_path / f"{modality}-{i}{suffix}"
            if modality == "image":
                Image.fromarray(item).save(path)
            else:
                path.write_bytes(item)
            args += [f"--{modality}", str(path)]
    code, out, err, guard = run_edge("predict", str(zoo_bundles[entry.factory]), *args, "--json")
    assert code == 0, err
    assert guard == {"modules": [], "sockets": 0}
    document = json.loads(out)
    with Predictor.load(zoo_bundles[entry.factory], device="cpu") as predictor:
        feed = predictor.preprocessor(requests)
    reference = _reference(entry, model, feed)
    for row, prediction in enumerate(document["predictions"]):
        for name, value in reference.items():
            assert np.allclose(prediction["outputs"][name], value[row], atol=ATOL), (entry.factory, name, row)
