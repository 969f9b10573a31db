"""``edgemm predict`` on users' own models (``--spec``): every output shown, heads that already
normalise, a label list that does not fit, and a recording that is too short."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgemm.bundle.manifest import MANIFEST_NAME
from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_image
from edgemm.runtime.preprocess.audio import encode_wav
from tests.conftest import run_edge
from tests.fixtures.cli_models import AUDIO_RATE, LABELS, image_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported("build_two_outputs")``: the bundle of a factory in tests.fixtures.cli_models (once)."""
    root = tmp_path_factory.mktemp("cli-bundles")
    bundles: dict[str, Path] = {}

    def get(factory: str) -> Path:
        if factory not in bundles:
            out = root / factory
            result = CliRunner().invoke(cli, ["export", "--spec", f"tests.fixtures.cli_models:{factory}", "-o", str(out)])
            assert result.exit_code == 0, result.output
            bundles[factory] = out
        return bundles[factory]

    return get


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(5):
        path = folder / f"drawing-{i}.png"
        Image.fromarray(synthesize_image(24 + 5 * i, 40 - 3 * i, seed=10 + i)).save(path)
        paths.append(path)
    return paths


def _reference(bundle: Path, activation: str | None, images: list[Path]) -> dict[str, np.ndarray]:
    """The user's PyTorch model on the runtime's preprocessing of the same files."""
    from edgemm.bundle.verify import verify_bundle
    from edgemm.runtime.preprocess.pipeline import Preprocessor

    manifest = verify_bundle(bundle)
    feed = Preprocessor(bundle, manifest.preprocessing, manifest.modalities)({"image": [str(p) for p in images]})
    with torch.no_grad():
        return {k: v.numpy() for k, v in image_model(activation)(torch.from_numpy(feed["pixel_values"])).items()}


def _predict_json(bundle: Path, images: list[Path]) -> list[dict]:
    args = [arg for p in images for arg in ("--image", str(p))]
    code, stdout, err, guard = run_edge("predict", str(bundle), *args, "--json")
    assert code == 0, err
    assert guard["modules"] == [] and guard["sockets"] == 0
    return json.loads(stdout)["predictions"]  # the whole of stdout is one JSON document


def test_a_two_output_model_shows_both_outputs(exported, images):
    bundle = exported("build_two_outputs")
    expected = _reference(bundle, None, images[:2])

    predictions = _predict_json(bundle, images[:2])
    for i, pred in enumerate(predictions):
        assert list(pred["outputs"]) == ["logits", "embedding"]
        np.testing.assert_allclose(pred["outputs"]["logits"], expected["logits"][i], atol=1e-4)
        np.testing.assert_allclose(pred["outputs"]["embedding"], expected["embedding"][i], atol=1e-4)
        assert pred["label"] == LABELS[int(np.argmax(expected["logits"][i]))]

    code, stdout, err, _ = run_edge("predict", str(bundle), "--image", str(images[0]))
    assert code == 0, err
    answer, logits, embedding = stdout.splitlines()
    assert answer.startswith(predictions[0]["label"] + "\t")
    assert logits.split()[0] == "logits" and len(logits.split(",")) == 4  # short: every value
    assert embedding.split()[0] == "embedding" and embedding.endswith("(16 values)") and "…" in embedding

    code, stdout, err, _ = run_edge("predict", str(bundle), "--image", str(images[0]), "--image", str(images[1]))
    assert code == 0, err
    lines = stdout.splitlines()
    assert [line[:4] for line in lines[::3]] == ["[1] ", "[2] "]
    assert [line.split()[0] for line in lines if line.startswith("    ")] == ["logits", "embedding"] * 2


def test_softmax_head_with_probabilities_answers_like_logits_with_softmax(exported, images):
    on_logits = _predict_json(exported("build_two_outputs"), images)
    on_probs = _predict_json(exported("build_softmax_head"), images)
    for a, b in zip(on_logits, on_probs):
        assert a["label"] == b["label"] and list(a["scores"]) == list(b["scores"])
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
        assert b["scores"] == pytest.approx(dict(zip(LABELS, b["outputs"]["probs"])), abs=1e-7)  # not softmaxed again


def test_multilabel_head_that_already_applies_sigmoid(exported, images):
    bundle = exported("build_sigmoid_head")
    expected = _reference(bundle, "sigmoid", images)["probs"]
    predictions = _predict_json(bundle, images)
    for row, pred in zip(expected, predictions):
        over = {LABELS[j] for j in range(len(LABELS)) if row[j] >= 0.5}
        assert set(pred["labels"]) == over and 0 < len(over) < len(LABELS)
        assert pred["scores"] == pytest.approx(dict(zip(LABELS, row.tolist())), abs=1e-4)

    # The same outputs through `sigmoid` (the double activation) would flag every label.
    from edgemm.runtime.postprocess import postprocess
    from edgemm.runtime.predictor import Predictor

    with Predictor.load(bundle, device="cpu") as predictor:
        outputs = predictor.run(predictor.preprocessor({"image": [str(p) for p in images]}))
        manifest = predictor.manifest
        manifest.postprocessing = {**manifest.postprocessing, "type": "sigmoid"}
        assert all(set(p.labels) == set(LABELS) for p in postprocess(outputs, manifest))

    code, stdout, err, _ = run_edge("predict", str(bundle), "--image", str(images[0]))
    assert code == 0, err
    assert stdout.splitlines()[0].split("\t")[0] == ", ".join(predictions[0]["labels"])


def test_a_label_list_that_does_not_fit_is_refused_without_a_traceback(exported, images, tmp_path):
    bundle = tmp_path / "three-labels"
    shutil.copytree(exported("build_two_outputs"), bundle)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["labels"] = LABELS[:3]  # 3 labels for a 4-class head
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))

    code, stdout, err, _ = run_edge("predict", str(bundle), "--image", str(images[0]), "--json")
    assert code == 1, err
    document = json.loads(stdout)
    assert document["ok"] is False and document["error"]["code"].startswith("E_")
    assert "label" in document["error"]["message"] and "Traceback" not in err
    code, stdout, err, _ = run_edge("predict", str(bundle), "--image", str(images[0]))
    assert code == 1 and stdout == "" and "Error:" in err and "Hint:" in err and "Traceback" not in err


def test_a_too_short_recording_is_told_to_record_longer(exported, tmp_path):
    bundle = exported("build_audio")
    t = np.arange(AUDIO_RATE * 2) / AUDIO_RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    short, ok = tmp_path / "short.wav", tmp_path / "ok.wav"
    short.write_bytes(encode_wav(tone[: AUDIO_RATE // 20], AUDIO_RATE))  # 0.05 s; the model needs 0.1 s
    ok.write_bytes(encode_wav(tone[: AUDIO_RATE // 2], AUDIO_RATE))

    code, stdout, err, _ = run_edge("predict", str(bundle), "--audio", str(short))
    assert code == 2, err
    assert "The recording is too short: 0.05 s" in err and "at least 0.1 s" in err
    assert "Hint: Record at least 0.1 s of audio" in err and "shorten" not in err and "Traceback" not in err
    code, stdout, err, _ = run_edge("predict", str(bundle), "--audio", str(short), "--json")
    error = json.loads(stdout)["error"]
    assert code == 2 and error["code"] == "E_INVALID_INPUT"
    assert error["details"] == {"input": "input_values", "axis": "audio_len", "size": 800, "min": 1600, "max": 32000}

    code, stdout, err, _ = run_edge("predict", str(bundle), "--audio", str(ok))
    assert code == 0 and stdout.split("\t")[0] in ("yes", "no", "maybe"), err


def test_log_mel_frames_and_batches_are_explained_in_user_terms(exported):
    """The same messages for a log-mel model (frames of hop_length samples) and for the batch axis."""
    from edgemm.bundle.verify import verify_bundle
    from edgemm.runtime.backends.base import axis_meanings
    from edgemm.runtime.preprocess.audio import default_log_mel_preprocessing

    manifest = verify_bundle(exported("build_audio"))
    manifest.preprocessing = {"audio": default_log_mel_preprocessing(sampling_rate=16000, hop_length=160)}
    meanings = axis_meanings(manifest)
    assert set(meanings) == {"batch", "audio_len"}
    frames = meanings["audio_len"]
    short = frames.out_of_range("input_features", "audio_len", 6, 11, 1001)
    assert short.message == ("The recording is too short: 0.05 s (6 frames); "
                             "this model takes at least 0.1 s (11 frames).")
    assert short.hint == "Record at least 0.1 s of audio and send it again."
    long = frames.out_of_range("input_features", "audio_len", 1201, 11, 1001)
    assert "too long: 12 s (1201 frames)" in long.message and long.hint.startswith("Trim the recording")
    batch = meanings["batch"].out_of_range("input_features", "batch", 9, 1, 8)
    assert batch.message == "The batch is too large: 9 items; this model takes at most 8 items."
    assert batch.hint == "Split the batch into calls of at most 8 items."
