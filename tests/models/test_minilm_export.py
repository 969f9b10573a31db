"""A fusion model with the real all-MiniLM-L6-v2 text encoder exports, verifies and predicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from edgemm.bundle.verify import verify_bundle
from edgemm.data.synthetic import synthesize_image
from edgemm.export.pipeline import export_bundle
from edgemm.models.config import EncoderConfig, FusionConfig, FusionSpec, HeadSpec
from edgemm.models.model import FusionModel
from edgemm.models.processors import Processors
from tests.conftest import run_edge


@pytest.fixture(scope="module")
def minilm_bundle(minilm_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("minilm")
    vision = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=128)
    config = FusionConfig(
        name="minilm-vit-concat",
        encoders={"text": EncoderConfig.from_pretrained("text", minilm_dir),
                  "image": EncoderConfig.from_hf_config("image", vision)},
        fusion=FusionSpec(type="concat", dim=64, heads=2),
        head=HeadSpec(type="classification", hidden=64),
        labels=["no_match", "match"],
        text_max_length=64,
    )
    processors = Processors.defaults(config)
    model = FusionModel(config, processors).eval()
    ckpt = model.save_pretrained(work / "ckpt")
    report = export_bundle(ckpt, work / "bundle")
    return ckpt, report


def test_real_weights_loaded_and_exported(minilm_dir, minilm_bundle):
    ckpt, report = minilm_bundle
    # The encoder really carries the pretrained weights (compare with the package's checkpoint).
    reference = tf.AutoModel.from_pretrained(minilm_dir)
    model = FusionModel.from_pretrained(ckpt)
    got = model.encoders["text"].model.embeddings.word_embeddings.weight
    assert torch.equal(got, reference.embeddings.word_embeddings.weight)
    assert report.parity["passed"] and len(report.parity["cases"]) >= 3
    manifest = verify_bundle(report.bundle)
    assert manifest.inputs[0].profile["seq"] == [2, 16, 64]
    assert manifest.source["kind"] == "fusion" and len(manifest.source["sha256"]) == 64


def test_minilm_bundle_predicts_torch_free(minilm_bundle, tmp_path):
    ckpt, report = minilm_bundle
    image = tmp_path / "digit.png"
    Image.fromarray(synthesize_image(32, 32, seed=4)).save(image)
    code, out, err, guard = run_edge("predict", str(report.bundle), "--text", "seven", "--image", str(image), "--json")
    assert code == 0, err
    assert guard["modules"] == [] and guard["sockets"] == 0
    scores = json.loads(out)["predictions"][0]["scores"]
    model = FusionModel.from_pretrained(ckpt)
    tok = model.processors.tokenizer(["seven"], return_tensors="pt")
    pixels = model.processors.image_processor([Image.open(image)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=pixels)["logits"]
    probs = torch.softmax(logits, -1)[0].numpy()
    np.testing.assert_allclose([scores["no_match"], scores["match"]], probs, atol=1e-4)
