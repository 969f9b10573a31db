"""Users' own models export without wrapper code, and parity looks where users' data goes.

Dict inputs, dict and dataclass outputs, renamed parameters and ``forward(text, image)`` with the
tokenizer's dict all export as written; the bundle then answers like PyTorch. Parity runs on real
held-out records (``--eval-data`` or the checkpoint's ``training.json``) and on random inputs, and
each catches a data-dependent branch the built-in samples never take.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from edgemm.bundle.verify import verify_bundle
from edgemm.cli import cli
from edgemm.data import load_dataset
from edgemm.data.synthetic import synthesize_image
from edgemm.runtime import Predictor
from tests.conftest import run_edge
from tests.fixtures import user_models

SPEC = "tests.fixtures.user_models:"
TEXTS = ["a cat", "two dogs", "a bird on a branch", "七", "the quick brown fox jumps over the lazy dog again",
         "ثلاثة", "zwei 🙂", "", "is it a seven?", "I think it is a small grey cat sitting on the mat"]


def _export(tmp_path, factory, *args, name="bundle"):
    out = tmp_path / name
    result = CliRunner().invoke(cli, ["export", "--spec", SPEC + factory, *args, "-o", str(out), "--json"],
                                catch_exceptions=False)
    return out, result


def _inputs(n=20):
    texts = [TEXTS[i % len(TEXTS)] + (" again" * (i // len(TEXTS))) for i in range(n)]
    images = [synthesize_image(30 + 7 * (i % 5), 40 + 5 * (i % 3), seed=i) for i in range(n)]
    return texts, images


@pytest.mark.parametrize(("factory", "forward"), [
    ("dict_in_dict_out", "forward(batch={input_ids, attention_mask, pixel_values})"),
    ("dataclass_out", "forward(ids=input_ids, mask=attention_mask, image=pixel_values)"),
    ("text_image", "forward(text={input_ids, attention_mask}, image=pixel_values)"),
])
def test_users_models_export_without_a_wrapper_and_answer_like_pytorch(tmp_path, factory, forward):
    out, result = _export(tmp_path, factory)
    assert result.exit_code == 0, result.output
    manifest = verify_bundle(out)
    assert manifest.validation["forward"] == forward
    model, spec = getattr(user_models, factory)()
    texts, images = _inputs(20)
    with Predictor.load(out, device="cpu") as predictor:
        predictions = predictor.predict(text=texts, image=images)
        feed = predictor.preprocessor({"text": texts, "image": images})
    from edgemm.export.pipeline import run_torch

    reference = run_torch(model, spec, feed)
    probs = torch.softmax(torch.from_numpy(reference["logits"]), -1).numpy()
    for row, prediction in zip(probs, predictions):
        assert prediction.label == user_models.LABELS[int(row.argmax())]
        assert [prediction.scores[label] for label in user_models.LABELS] == pytest.approx(row.tolist(), abs=1e-4)
    if factory == "dataclass_out":  # the second output reaches the prediction too
        assert np.allclose([p.outputs["embedding"] for p in predictions], reference["embedding"], atol=1e-4)


def test_cli_predict_of_a_text_image_model_equals_pytorch(tmp_path):
    out, result = _export(tmp_path, "text_image")
    assert result.exit_code == 0, result.output
    image = tmp_path / "drawing.png"
    Image.fromarray(synthesize_image(48, 64, seed=5)).save(image)
    code, stdout, err, guard = run_edge("predict", str(out), "--text", "a bird on a branch", "--image", str(image), "--json")
    assert code == 0, err
    assert guard["modules"] == []  # torch-free
    scores = json.loads(stdout)["predictions"][0]["scores"]
    model, _spec = user_models.text_image()
    with Predictor.load(out, device="cpu") as predictor:
        feed = predictor.preprocessor({"text": ["a bird on a branch"], "image": [str(image)]})
    with torch.no_grad():
        logits = model(text={"input_ids": torch.from_numpy(feed["input_ids"]),
                             "attention_mask": torch.from_numpy(feed["attention_mask"])},
                       image=torch.from_numpy(feed["pixel_values"]))
    expected = torch.softmax(logits, -1)[0].tolist()
    assert [scores[label] for label in user_models.LABELS] == pytest.approx(expected, abs=1e-4)


# -- parity where users' data goes ---------------------------------------------------------------


def _dataset(folder, n=90):
    """A held-out dataset whose texts sometimes say "eleven" (the built-in parity texts never do)."""
    folder.mkdir()
    (folder / "images").mkdir()
    phrases = ["it is a cat", "two dogs!", "a bird", "it is eleven", "maybe a cat?", "七", "I count eleven birds"]
    with open(folder / "test.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            image = f"images/{i:03d}.png"
            Image.fromarray(synthesize_image(24 + i % 17, 30 + i % 11, seed=100 + i)).save(folder / image)
            fh.write(json.dumps({"text": phrases[i % len(phrases)] + " " * (i % 3), "image": image,
                                 "label": user_models.LABELS[i % 3]}) + "\n")
    return folder


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("data") / "held-out")


def test_real_records_catch_a_branch_the_built_in_and_random_inputs_miss(tmp_path, held_out):
    legacy = ["--exporter", "legacy", "--allow-tracer-warnings"]
    _blind, result = _export(tmp_path, "eleven_branch", *legacy, name="blind")
    assert result.exit_code == 0, result.output  # without data, nothing takes the branch
    assert "skipped" in json.loads(result.stdout)["parity"]["sources"]["real_records"]

    out = tmp_path / "seen"
    refused = CliRunner().invoke(cli, ["export", "--spec", SPEC + "eleven_branch", *legacy, "--eval-data", str(held_out),
                                       "-o", str(out)], catch_exceptions=False)
    assert refused.exit_code == 4, refused.output
    assert "records-" in refused.stderr and "random-" not in refused.stderr
    assert "not on real records inputs" in refused.stderr and "torch.where" in refused.stderr
    assert not out.exists()

    accepted = CliRunner().invoke(cli, ["export", "--spec", SPEC + "eleven_branch", *legacy, "--eval-data", str(held_out),
                                        "--allow-mismatch", "-o", str(out), "--json"], catch_exceptions=False)
    assert accepted.exit_code == 0, accepted.output
    parity = verify_bundle(out).validation["parity"]
    records = parity["sources"]["real_records"]
    assert records["count"] == 64 and sum(records["batches"]) == 64 and max(records["batches"]) == 8
    assert records["fingerprint"] == load_dataset(held_out).fingerprint() and records["data"] == str(held_out)
    failing = {c["case"] for c in parity["comparisons"] if not c["passed"]}
    assert failing and all(case.startswith("records-") for case in failing)
    assert verify_bundle(out).validation["tracer_warnings"][0]["code"] == "if (input_ids == ELEVEN).any():"


def test_random_inputs_catch_a_branch_on_rare_token_ids(tmp_path, held_out):
    _out, result = _export(tmp_path, "rare_token_branch", "--exporter", "legacy", "--allow-tracer-warnings",
                          "--eval-data", str(held_out))
    assert result.exit_code == 4, result.output
    failures = json.loads(result.stdout)["error"]["details"]["failures"]
    assert failures and all(f["case"].startswith("random-") for f in failures)
    assert "not on randomized inputs" in result.stderr


def test_parity_uses_the_data_a_checkpoint_was_trained_on(tmp_path, held_out):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    model, _ = user_models.plain()
    save_file(model.state_dict(), str(checkpoint / "model.safetensors"))
    (checkpoint / "training.json").write_text(json.dumps({"data": {"spec": str(held_out), "fingerprint": "x"}}))
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["export", "--spec", SPEC + "from_checkpoint", str(checkpoint), "-o", str(out),
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    sources = json.loads(result.stdout)["parity"]["sources"]
    assert sources["real_records"]["count"] == 64 and sources["real_records"]["data"] == str(held_out)
    assert len(sources["randomized"]["cases"]) >= 3
    assert {c["seed"] for c in sources["randomized"]["cases"]} == {1000, 1001, 1002, 1003}
    assert "real records 64" in CliRunner().invoke(
        cli, ["export", "--spec", SPEC + "from_checkpoint", str(checkpoint), "-o", str(tmp_path / "b2")]).stdout
