"""A tiny VisionTextDualEncoder directory (ViT + BERT with the real MiniLM vocabulary, random
weights) exports with ``edgemm export DIR``: image–text matching with both towers, and zero-shot
with ``--labels``; the torch-free bundle answers as transformers does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from click.testing import CliRunner
from PIL import Image

from edgemm.bundle.verify import verify_bundle
from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_image
from tests.conftest import run_edge

TEXTS = ["a cat sitting on a table", "一只狗在草地上跑", "the number seven, handwritten", "a red apple",
         "蓝色的天空和白云"]
LABELS = ["cat", "dog", "seven", "苹果"]


@pytest.fixture(scope="module")
def dual_dir(tmp_path_factory, minilm_dir):
    return save_dual_encoder(tmp_path_factory.mktemp("hf") / "tiny-vit-bert", minilm_dir)


def save_dual_encoder(folder, minilm_dir):
    """A tiny VisionTextDualEncoderModel (ViT + BERT) directory with its processor."""
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir)
    vision = tf.ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          image_size=32, patch_size=8)
    text = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=48)
    torch.manual_seed(0)
    config = tf.VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=24)
    model = tf.VisionTextDualEncoderModel(config=config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))  # a trained temperature, so the scores are not all alike
    model.save_pretrained(folder)
    processor = tf.VisionTextDualEncoderProcessor(tf.ViTImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    import sklearn.datasets
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for i, (h, w) in enumerate([(64, 64), (48, 80), (90, 50), (33, 33), (120, 96), (70, 41), (40, 64)]):
        paths.append(folder / f"scene{i}.png")
        Image.fromarray(synthesize_image(h, w, seed=30 + i)).save(paths[-1])
    digits = load_digits()
    for i in (3, 11, 27):
        gray = (digits.images[i] * 255 / 16).astype(np.uint8)
        paths.append(folder / f"digit{i}.png")
        Image.fromarray(gray).resize((40, 40), Image.Resampling.NEAREST).convert("RGB").save(paths[-1])
    for name in ("china.jpg", "flower.jpg"):  # real photographs (427x640 JPEG) shipped with scikit-learn
        paths.append(Path(sklearn.datasets.__file__).parent / "images" / name)
    return paths


def _export(folder, out, *args):
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def test_matching_scores_every_text_like_the_model(dual_dir, pictures, tmp_path):
    bundle = _export(dual_dir, tmp_path / "match")  # no flags
    manifest = verify_bundle(bundle)
    assert manifest.task == "image_text_similarity" and manifest.source["family"] == "vision_text_dual_encoder"
    model = tf.VisionTextDualEncoderModel.from_pretrained(dual_dir).eval()
    processor = tf.VisionTextDualEncoderProcessor.from_pretrained(dual_dir)
    for picture in pictures[:2] + pictures[-1:]:
        args = ["predict", str(bundle), "--image", str(picture), "--json"]
        for text in TEXTS:
            args += ["--text", text]
        code, out, err, guard = run_edge(*args)
        assert code == 0, err
        assert guard == {"modules": [], "sockets": 0}
        values = json.loads(out)["predictions"][0]["values"]
        inputs = processor(text=TEXTS, images=Image.open(picture).convert("RGB"), return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**inputs).logits_per_image[0].numpy()
        np.testing.assert_allclose([values[t] for t in TEXTS], logits, atol=1e-4)


def test_zero_shot_matches_the_pipeline(dual_dir, pictures, tmp_path):
    bundle = _export(dual_dir, tmp_path / "zs", "--labels", ",".join(LABELS))
    manifest = verify_bundle(bundle)
    assert manifest.task == "zero_shot_classification" and [t.name for t in manifest.inputs] == ["pixel_values"]
    assert manifest.source["zero_shot"]["prompt"] == "This is a photo of {}."  # the pipeline's default

    args = ["predict", str(bundle), "--json"]
    for path in pictures:
        args += ["--image", str(path)]
    code, out, err, guard = run_edge(*args)
    assert code == 0, err
    assert guard["modules"] == []
    predictions = json.loads(out)["predictions"]

    # The pipeline's task mapping does not list this architecture; given the model, it runs it.
    pipe = tf.pipeline("zero-shot-image-classification",
                       model=tf.VisionTextDualEncoderModel.from_pretrained(dual_dir).eval(),
                       tokenizer=tf.AutoTokenizer.from_pretrained(dual_dir),
                       image_processor=tf.AutoImageProcessor.from_pretrained(dual_dir))
    expected = pipe([str(p) for p in pictures], candidate_labels=LABELS)
    for prediction, reference in zip(predictions, expected, strict=True):
        ref = {r["label"]: r["score"] for r in reference}
        np.testing.assert_allclose([prediction["scores"][k] for k in ref], list(ref.values()), atol=1e-4)
        top = sorted(ref.values(), reverse=True)
        if top[0] - top[1] > 1e-4:
            assert prediction["label"] == reference[0]["label"]
