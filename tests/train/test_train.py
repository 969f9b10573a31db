"""``edgemm train``: the reference model reaches the accuracy target, ablations stay at chance,
and the training options (LoRA, freezing, added tokens, early stopping) behave."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from edgemm.cli import cli
from edgemm.models.model import FusionModel
from edgemm.train.trainer import TrainConfig, train
from tests.factories import tiny_text_dir


@pytest.fixture(scope="module")
def tiny_text(work, minilm_dir):
    from transformers import AutoTokenizer

    return tiny_text_dir(work / "tiny-text", AutoTokenizer.from_pretrained(minilm_dir))


def test_reference_model_reaches_97_percent(reference_ckpt):
    report = reference_ckpt
    assert report.test["accuracy"] >= 0.97, report.test
    assert report.test["macro_f1"] >= 0.97
    record = json.loads((report.checkpoint / "training.json").read_text())
    assert record["data"]["spec"] == "digit-match" and len(record["data"]["fingerprint"]) == 64
    # LoRA was merged: a plain FusionModel checkpoint, loadable and exportable.
    assert not any("lora_" in key for key in load_file(str(report.checkpoint / "model.safetensors")))
    # MiniLM maps 七/六/九/零 to [UNK]; training added them so the answers are distinguishable.
    assert {"七", "六", "九", "零"} <= set(report.added_tokens)
    tokenizer = FusionModel.from_pretrained(report.checkpoint).processors.tokenizer
    assert tokenizer.unk_token_id not in tokenizer("七")["input_ids"]


@pytest.mark.parametrize("keep", ["text", "image"])
def test_single_modality_ablations_stay_at_chance(work, edgemm_cache, keep):
    config = TrainConfig(output=work / f"ablation-{keep}", epochs=2 if keep == "image" else 1, data_cache=edgemm_cache,
                         text="minilm" if keep == "text" else None, image="resnet-tiny" if keep == "image" else None,
                         lora=None, freeze=("text",) if keep == "text" else (),
                         max_train_records=1024 if keep == "text" else None)
    report = train(config)
    assert report.test["accuracy"] <= 0.60, report.test


def test_cli_quick_run_with_options(tmp_path, tiny_text, edgemm_cache):
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(cli, ["train", "-o", str(out), "--text", str(tiny_text), "--image", "vit-tiny",
                                      "--fusion", "cross_attention", "--epochs", "2", "--max-train-records", "96",
                                      "--batch-size", "16", "--no-lora", "--unfreeze-last", "1", "--schedule", "cosine",
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] and 0.0 <= doc["test"]["accuracy"] <= 1.0 and len(doc["history"]) >= 1
    model = FusionModel.from_pretrained(out)
    assert model.config.fusion.type == "cross_attention"
    # --unfreeze-last 1: the first layer of the text encoder kept its initial weights.
    initial = load_file(str(tiny_text / "model.safetensors"))
    trained = model.encoders["text"].model.state_dict()
    first = "encoder.layer.0.attention.self.query.weight"
    last = "encoder.layer.1.attention.self.query.weight"
    assert torch.equal(trained[first], initial[first])
    assert not torch.equal(trained[last], initial[last])


def test_frozen_image_encoder_is_unchanged(tmp_path, tiny_text, edgemm_cache):
    report = train(TrainConfig(output=tmp_path / "ckpt", text=str(tiny_text), image="resnet-tiny", epochs=1,
                               max_train_records=64, freeze=("image",), lora=None, data_cache=edgemm_cache, seed=5))
    model = FusionModel.from_pretrained(report.checkpoint)
    from edgemm.data.resolve import resolve_dataset
    from edgemm.train.trainer import build_model

    torch.manual_seed(5)
    fresh = build_model(TrainConfig(output=tmp_path / "x", text=str(tiny_text), image="resnet-tiny", lora=None),
                        resolve_dataset("digit-match", cache=edgemm_cache))
    for key, value in fresh.encoders["image"].state_dict().items():
        assert torch.equal(value, model.encoders["image"].state_dict()[key]), key


def test_audio_branch_trains_as_optional_modality(tmp_path, tiny_text, edgemm_cache, digit_match):
    if "audio" not in digit_match.modalities:
        pytest.skip("digit-match has no spoken answers here (espeak-ng missing)")
    report = train(TrainConfig(output=tmp_path / "ckpt", text=str(tiny_text), image="resnet-tiny", audio="logmel-cnn",
                               epochs=1, max_train_records=64, lora=None, data_cache=edgemm_cache))
    model = FusionModel.from_pretrained(report.checkpoint)
    assert model.config.optional_modalities == ["audio"]
    assert "audio_present" in model.input_names()


def test_bad_options(tmp_path, edgemm_cache):
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "-o", str(tmp_path / "x"), "--text", "none", "--image", "none"])
    assert result.exit_code == 2 and "at least one encoder" in result.stderr
    result = runner.invoke(cli, ["train", "-o", str(tmp_path / "x"), "--data", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    result = runner.invoke(cli, ["train", "-o", str(tmp_path / "x"), "--image", "efficientnet-b9"])
    assert result.exit_code == 2 and "resnet-tiny" in result.stderr
