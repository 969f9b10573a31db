"""A transformers directory no family exports is refused by name, with the route that does work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import transformers as tf

from edgemm.errors import UnsupportedModelError
from edgemm.models.specs import family_for
from tests.conftest import REPO


def _export(folder, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgemm", "export", str(folder), "-o", str(tmp_path / "out.bundle"),
                           "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_an_unsupported_architecture_is_named_with_the_spec_route(tmp_path):
    folder = tmp_path / "gpt2"
    config = tf.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    tf.GPT2LMHeadModel(config).save_pretrained(folder)

    done = _export(folder, tmp_path)
    assert done.returncode == 2, done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "E_UNSUPPORTED_MODEL"
    assert "GPT2LMHeadModel" in error["message"] and "gpt2" in error["message"]
    assert "--spec" in error["hint"] and "Bring your own model" in error["hint"]
    assert error["details"]["architecture"] == "GPT2LMHeadModel"
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.bundle").exists()


def test_a_directory_without_config_is_not_mistaken_for_a_transformers_checkpoint(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_text("[not an object]")
    done = _export(folder, tmp_path)
    assert done.returncode == 2, done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "E_UNSUPPORTED_MODEL" and "not a checkpoint edgemm knows" in error["message"]


@pytest.mark.parametrize("model_type, architecture", [("clip", "CLIPForImageClassification"),
                                                      ("siglip", "SiglipForImageClassification"),
                                                      ("bert", "BertForMaskedLM")])
def test_a_head_no_family_exports_is_not_taken_for_its_model_type(tmp_path, model_type, architecture):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [architecture]}))
    with pytest.raises(UnsupportedModelError) as info:
        family_for(tmp_path)
    assert architecture in info.value.message and info.value.details == {"architecture": architecture}


def test_a_clip_directory_without_architectures_is_still_clip(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert family_for(tmp_path).name == "clip"
