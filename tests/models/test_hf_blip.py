"""A tiny BLIP image–text matching directory (random weights, MiniLM's vocabulary) exports with no
flags, and the torch-free bundle's match score is BLIP's ``softmax(itm_score)[:, 1]`` on the
processor's output, for English and Chinese captions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf
from click.testing import CliRunner
from PIL import Image

from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_image
from edgemm.errors import UnsupportedModelError
from edgemm.export.pipeline import export_bundle
from tests.conftest import run_edge

CAPTIONS = [
    "a red ball on the grass", "two cats sleeping on a sofa", "a child drawing a house", "一只猫坐在垫子上",
    "a blue square next to a circle", "孩子们在公园里玩", "the number seven written in chalk", "一个红色的苹果",
    "a dog running on the beach", "a quiet street at night", "蓝色的天空和白云",
]
SIZES = [(20, 30), (300, 200), (64, 64), (48, 100), (120, 90), (33, 47), (200, 150), (90, 160), (75, 75),
         (140, 60), (50, 80)]


def _save(folder, minilm_dir, image_size: int = 32):
    tok = tf.BertTokenizerFast.from_pretrained(minilm_dir, model_max_length=40)
    text = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=40, initializer_range=0.1)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                  image_size=32, patch_size=8, initializer_range=0.1)
    torch.manual_seed(0)
    tf.BlipForImageTextRetrieval(tf.BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=16)
                                 ).save_pretrained(folder)
    size = {"height": image_size, "width": image_size}
    tf.BlipProcessor(tf.BlipImageProcessor(size=size), tok).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blip-pictures")
    paths = []
    for i, (h, w) in enumerate(SIZES):
        paths.append(folder / f"photo-{i:02d}.png")
        Image.fromarray(synthesize_image(h, w, seed=90 + i)).save(paths[-1])
    return paths


def test_blip_itm_scores_as_the_model(tmp_path, minilm_dir, pictures):
    folder = _save(tmp_path / "tiny-blip-itm", minilm_dir)
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(tmp_path / "itm.bundle")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "itm.bundle" / "edgemm.json").read_text())
    assert manifest["task"] == "matching" and manifest["labels"] == ["no_match", "match"]

    args = ["predict", str(tmp_path / "itm.bundle"), "--json"]
    for path, caption in zip(pictures, CAPTIONS):
        args += ["--image", str(path), "--text", caption]
    code, out, err, guard = run_edge(*args)
    assert code == 0, err
    assert guard == {"modules": [], "sockets": 0}
    predictions = json.loads(out)["predictions"]
    assert len(predictions) == len(pictures) >= 10

    model = tf.BlipForImageTextRetrieval.from_pretrained(folder).eval()
    processor = tf.BlipProcessor.from_pretrained(folder)
    for path, caption, pred in zip(pictures, CAPTIONS, predictions):
        enc = processor(images=Image.open(path).convert("RGB"), text=caption, return_tensors="pt")
        with torch.no_grad():
            itm = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                        pixel_values=enc["pixel_values"]).itm_score
        expected = float(torch.softmax(itm, dim=1)[0, 1])
        assert abs(pred["scores"]["match"] - expected) < 1e-4, (path.name, caption)
        assert pred["label"] == ("match" if expected >= 0.5 else "no_match")
        np.testing.assert_allclose(pred["outputs"]["itm_score"], itm[0].numpy(), atol=1e-4)
    scores = [pred["scores"]["match"] for pred in predictions]
    assert max(scores) - min(scores) > 0.01, scores  # the score depends on the pair


def test_a_processor_size_the_vision_tower_cannot_take_is_refused(tmp_path, minilm_dir):
    folder = _save(tmp_path / "mismatched-blip", minilm_dir, image_size=48)
    with pytest.raises(UnsupportedModelError, match="32x32"):
        export_bundle(folder, tmp_path / "out.bundle")
    assert not (tmp_path / "out.bundle").exists()
