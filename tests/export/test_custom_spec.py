"""``--spec package.module:factory``: any nn.Module with its ExportSpec, weights and failures."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from edgemm.bundle.verify import verify_bundle
from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_image
from tests.conftest import run_edge
from tests.fixtures.custom_model import build


def _export(runner, *args):
    return runner.invoke(cli, ["export", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    model, _ = build()
    torch.manual_seed(123)
    for p in model.parameters():
        p.data.normal_()
    save_file(model.state_dict(), str(folder / "trained.safetensors"))
    torch.save(model.state_dict(), folder / "trained.pt")
    return folder, model


def test_factory_with_safetensors_weights_exports_and_predicts(tmp_path, weights):
    folder, trained = weights
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["export", "--spec", "tests.fixtures.custom_model:build",
                                      str(folder / "trained.safetensors"), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["parity"]["passed"]
    sources = doc["parity"]["sources"]
    assert sources["built_in"]["cases"] == ["export", "b1-short", "b5-long"]
    assert [c["case"] for c in sources["randomized"]["cases"]] == ["random-export", "random-b1-short", "random-b5-long"]
    assert "skipped" in sources["real_records"]  # no held-out data for a bare factory
    assert len(doc["parity"]["cases"]) == 6
    manifest = verify_bundle(out)
    assert manifest.source["kind"] == "custom" and manifest.source["factory"].endswith(":build")
    assert manifest.source["weights"] == "trained.safetensors"

    image = tmp_path / "x.png"
    Image.fromarray(synthesize_image(30, 30, seed=1)).save(image)
    code, stdout, err, guard = run_edge("predict", str(out), "--text", "seven", "--image", str(image), "--json")
    assert code == 0, err and guard["modules"] == []
    scores = json.loads(stdout)["predictions"][0]["scores"]
    # Independent reference: the trained weights in PyTorch on the same preprocessed inputs.
    from edgemm.runtime.preprocess.pipeline import Preprocessor

    feed = Preprocessor(out, manifest.preprocessing, manifest.modalities)({"text": ["seven"], "image": [str(image)]})
    with torch.no_grad():
        logits = trained(**{k: torch.from_numpy(v) for k, v in feed.items()})["logits"]
    probs = torch.softmax(logits, -1)[0].tolist()
    assert [scores["wrong"], scores["right"]] == pytest.approx(probs, abs=1e-5)


def test_pickle_weights_need_the_flag(tmp_path, weights):
    folder, _ = weights
    runner = CliRunner()
    refused = runner.invoke(cli, ["export", "--spec", "tests.fixtures.custom_model:build",
                                  str(folder / "trained.pt"), "-o", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "pickle" in refused.stderr and "--allow-pickle" in refused.stderr
    assert not (tmp_path / "a").exists()
    allowed = runner.invoke(cli, ["export", "--spec", "tests.fixtures.custom_model:build",
                                  str(folder / "trained.pt"), "-o", str(tmp_path / "b"), "--allow-pickle"])
    assert allowed.exit_code == 0, allowed.output
    assert verify_bundle(tmp_path / "b").source["weights"] == "trained.pt"


def test_baked_shape_is_a_tracer_warning_then_fails_parity_with_exit_4_and_no_bundle(tmp_path):
    runner = CliRunner()
    out = tmp_path / "buggy"
    args = ["export", "--spec", "tests.fixtures.custom_model:build_buggy", "--exporter", "legacy", "-o", str(out)]
    warned = runner.invoke(cli, args)
    assert warned.exit_code == 2, warned.output
    assert "custom_model.py:30" in warned.stderr and "int(attention_mask.shape[1])" in warned.stderr
    assert "--allow-tracer-warnings" in warned.stderr
    assert not out.exists() and not list(tmp_path.glob(".buggy*"))

    result = runner.invoke(cli, [*args, "--allow-tracer-warnings"])
    assert result.exit_code == 4, result.output
    assert "differs from PyTorch" in result.stderr and "b5-long" in result.stderr and "b1-short" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".buggy*"))

    accepted = runner.invoke(cli, [*args, "--allow-tracer-warnings", "--allow-mismatch", "--json"])
    assert accepted.exit_code == 0, accepted.output
    manifest = verify_bundle(out)
    assert manifest.validation["mismatch_accepted"] is True
    assert manifest.validation["parity"]["passed"] is False
    assert manifest.validation["tracer_warnings"][0]["where"] == "custom_model.py:30"
    failing = {c["case"] for c in manifest.validation["parity"]["comparisons"] if not c["passed"]}
    assert failing == {"b1-short", "b5-long", "random-b1-short", "random-b5-long"}


def test_factory_errors_are_clear(tmp_path):
    runner = CliRunner()
    for ref, needle in [("tests.fixtures.custom_model", "package.module:factory"),
                        ("tests.fixtures.nope:build", "Cannot import"),
                        ("tests.fixtures.custom_model:missing", "no callable"),
                        ("tests.fixtures.custom_model:build_wrong_type", "expected (nn.Module, ExportSpec)")]:
        result = runner.invoke(cli, ["export", "--spec", ref, "-o", str(tmp_path / "x")])
        assert result.exit_code == 2, (ref, result.output)
        assert needle in result.stderr and "Hint:" in result.stderr
