"""Tiny ViLT directories (random weights, MiniLM's vocabulary) export with no flags and answer as
transformers does: VQA as its ``visual-question-answering`` pipeline, retrieval as the model's
own forward on ``ViltProcessor``'s output — pictures of different sizes, alone and in one batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf
from click.testing import CliRunner
from PIL import Image, ImageDraw

from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_image
from edgemm.errors import InvalidInputError, UnsupportedModelError
from edgemm.export.pipeline import export_bundle
from edgemm.models.specs.hf_vilt import ViltHead
from edgemm.runtime.predictor import Predictor
from edgemm.runtime.preprocess.image import image_feed, image_preprocessing_from_hf
from tests.conftest import run_edge

ANSWERS = ["yes", "no", "two", "red", "a cat", "blue", "three", "a dog"]
QUESTIONS = [
    "What color is the ball?", "How many cats are there?", "Is there a dog in the picture?",
    "What is the child holding?", "Is it sunny outside?", "What animal is on the sofa?",
    "How many windows can you see?", "Is the door open?", "What is on the table?",
    "Which shape is bigger, the circle or the square?", "Is this a drawing of a house?", "What is the boy doing?",
]
CAPTIONS = [
    "a red ball on the grass", "two cats sleeping on a sofa", "a child drawing a house", "一只猫坐在垫子上",
    "a blue square next to a circle", "孩子们在公园里玩", "the number seven written in chalk", "一个红色的苹果",
    "a dog running on the beach", "a quiet street at night", "蓝色的天空和白云", "three birds on a wire",
]
# A small processor (ViLT's own is 384 px, divisor 32) keeps the tiny model fast; divisor and patch 8
# keep pictures up to 12:1 (the export's random parity inputs) at least one patch high.
DIVISOR = PATCH = 8
# (height, width): portraits, landscapes and squares from 20x30 to 300x200.
SIZES = [(20, 30), (300, 200), (64, 64), (48, 100), (120, 90), (33, 47),
         (200, 150), (90, 160), (75, 75), (140, 60), (50, 80), (210, 300)]


def _tokenizer(minilm_dir) -> tf.BertTokenizerFast:
    return tf.BertTokenizerFast.from_pretrained(minilm_dir, model_max_length=40)


def _save(folder, minilm_dir, model_cls, **config):
    tok = _tokenizer(minilm_dir)
    cfg = tf.ViltConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, image_size=64, patch_size=PATCH, max_position_embeddings=40,
                        initializer_range=0.5, **config)  # wide enough that answers differ by input
    torch.manual_seed(0)
    model_cls(cfg).save_pretrained(folder)
    tf.ViltProcessor(tf.ViltImageProcessor(size={"shortest_edge": 64}, size_divisor=DIVISOR), tok).save_pretrained(folder)
    return folder


def _drawing(height: int, width: int, seed: int) -> Image.Image:
    """A child's drawing: shapes in a few colours on paper."""
    rng = np.random.default_rng(seed)
    picture = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, size=3)))
    pen = ImageDraw.Draw(picture)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(3, width // 2 + 4)), y0 + int(rng.integers(3, height // 2 + 4))
        colour = tuple(int(v) for v in rng.integers(0, 200, size=3))
        (pen.ellipse if rng.integers(0, 2) else pen.rectangle)([x0, y0, x1, y1], fill=colour, outline=(0, 0, 0))
    return picture


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """PNG files of photo-like images and drawings, one per size."""
    folder = tmp_path_factory.mktemp("vilt-pictures")
    paths = []
    for i, (h, w) in enumerate(SIZES):
        image = Image.fromarray(synthesize_image(h, w, seed=40 + i)) if i % 2 == 0 else _drawing(h, w, seed=40 + i)
        paths.append(folder / f"picture-{i:02d}-{w}x{h}.png")
        image.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def vqa(tmp_path_factory, minilm_dir):
    """A tiny ViltForQuestionAnswering directory and its bundle, exported by `edgemm export DIR` alone."""
    root = tmp_path_factory.mktemp("vilt-vqa")
    folder = _save(root / "tiny-vilt-vqa", minilm_dir, tf.ViltForQuestionAnswering, num_labels=len(ANSWERS),
                   id2label=dict(enumerate(ANSWERS)), label2id={a: i for i, a in enumerate(ANSWERS)})
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(root / "vqa.bundle")])
    assert result.exit_code == 0, result.output
    return folder, root / "vqa.bundle"


def test_the_runtime_pads_pictures_like_vilt_image_processor(pictures):
    processor = tf.ViltImageProcessor(size={"shortest_edge": 64}, size_divisor=DIVISOR)
    images = [Image.open(p).convert("RGB") for p in pictures]
    expected = processor(images=images, return_tensors="np")
    feed = image_feed(images, image_preprocessing_from_hf(processor.to_dict()))
    assert feed["pixel_values"].shape == expected["pixel_values"].shape
    assert len({(m.sum(0) > 0).sum() for m in feed["pixel_mask"]}) > 1  # the batch mixes picture sizes
    np.testing.assert_array_equal(feed["pixel_mask"], expected["pixel_mask"])
    np.testing.assert_allclose(feed["pixel_values"], expected["pixel_values"], atol=1e-6)


def test_the_traceable_patch_embedding_equals_vilts_own(minilm_dir, pictures):
    torch.manual_seed(1)
    config = tf.ViltConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=37, image_size=64, patch_size=PATCH, max_position_embeddings=40, num_labels=3)
    model = tf.ViltForQuestionAnswering(config).eval()
    processor = tf.ViltProcessor(tf.ViltImageProcessor(size={"shortest_edge": 64}, size_divisor=DIVISOR), _tokenizer(minilm_dir))
    enc = processor(images=[Image.open(p).convert("RGB") for p in pictures[:6]], text=QUESTIONS[:6], padding=True,
                    return_tensors="pt")
    enc["input_ids"] = enc["input_ids"] % 100
    with torch.no_grad():
        expected = model(**enc).logits
        got = ViltHead(model)(**enc)["logits"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_vqa_answers_as_the_transformers_pipeline(vqa, pictures):
    folder, bundle = vqa
    manifest = json.loads((bundle / "edgemm.json").read_text())
    assert manifest["task"] == "classification" and manifest["postprocessing"]["type"] == "sigmoid"
    assert manifest["labels"] == ANSWERS
    shapes = {t["name"]: t["shape"] for t in manifest["inputs"]}
    assert shapes["pixel_values"] == ["batch", 3, "height", "width"] and shapes["pixel_mask"] == ["batch", "height", "width"]

    args = ["predict", str(bundle), "--json"]
    for path, question in zip(pictures, QUESTIONS):
        args += ["--image", str(path), "--text", question]
    code, out, err, guard = run_edge(*args)
    assert code == 0, err
    assert guard == {"modules": [], "sockets": 0}
    predictions = json.loads(out)["predictions"]
    assert len(predictions) == len(pictures) >= 10
    assert len({p["label"] for p in predictions}) >= 3  # the answers depend on the pair

    pipe = tf.pipeline("visual-question-answering", model=str(folder))
    for path, question, pred in zip(pictures, QUESTIONS, predictions):
        expected = pipe(image=Image.open(path), question=question, top_k=5)
        assert pred["label"] == expected[0]["answer"], (path.name, question)
        for answer in expected:
            assert abs(pred["scores"][answer["answer"]] - answer["score"]) < 1e-4, (path.name, question, answer)


def test_a_batch_of_mixed_sizes_answers_as_one_by_one(vqa, pictures):
    with Predictor.load(vqa[1]) as predictor:
        batch = predictor.predict(image=list(pictures), text=QUESTIONS[:len(pictures)])
        alone = [predictor.predict(image=p, text=q) for p, q in zip(pictures, QUESTIONS)]
        for b, a in zip(batch, alone):
            assert b.label == a.label
            np.testing.assert_allclose([b.scores[k] for k in ANSWERS], [a.scores[k] for k in ANSWERS], atol=1e-5)
        with pytest.raises(InvalidInputError, match="elongated"):
            predictor.predict(image=np.full((8, 400, 3), 200, dtype=np.uint8), text="What is this?")


def test_image_text_retrieval_scores_as_the_model(tmp_path, minilm_dir, pictures):
    folder = _save(tmp_path / "tiny-vilt-itm", minilm_dir, tf.ViltForImageAndTextRetrieval)
    report = export_bundle(folder, tmp_path / "itm.bundle")
    assert report.manifest.task == "matching" and report.manifest.labels == ["no_match", "match"]
    model = tf.ViltForImageAndTextRetrieval.from_pretrained(folder).eval()
    processor = tf.ViltProcessor.from_pretrained(folder)
    with Predictor.load(report.bundle) as predictor:
        predictions = predictor.predict(image=list(pictures), text=CAPTIONS[:len(pictures)])
    for path, caption, pred in zip(pictures, CAPTIONS, predictions):
        with torch.no_grad():
            logit = model(**processor(images=Image.open(path).convert("RGB"), text=caption, return_tensors="pt")).logits
        expected = float(torch.sigmoid(logit)[0, 0])
        assert abs(pred.scores["match"] - expected) < 1e-4, (path.name, caption)
        assert pred.label == ("match" if expected >= 0.5 else "no_match")
    scores = [pred.scores["match"] for pred in predictions]
    assert max(scores) - min(scores) > 0.01, scores  # the score depends on the pair


def test_a_config_that_samples_patches_is_refused(tmp_path, minilm_dir):
    folder = _save(tmp_path / "sampling-vilt", minilm_dir, tf.ViltForImageAndTextRetrieval, max_image_length=8)
    with pytest.raises(UnsupportedModelError, match="max_image_length") as caught:
        export_bundle(folder, tmp_path / "out.bundle")
    assert "-1" in caught.value.hint
    assert not (tmp_path / "out.bundle").exists()


def test_padding_beyond_the_batch_changes_no_answer(vqa, pictures):
    """Calibration pads every batch to one size (edgemm.data.evalset): extra padding is masked out."""
    with Predictor.load(vqa[1]) as predictor:
        raw = {"text": QUESTIONS[:3], "image": [Image.open(p).convert("RGB") for p in pictures[:3]]}
        natural = predictor.preprocessor(raw)
        padded = predictor.preprocessor(raw, image_pad_to=(104, 104))
        assert padded["pixel_values"].shape[-2:] == (104, 104) != natural["pixel_values"].shape[-2:]
        assert padded["pixel_mask"].sum() == natural["pixel_mask"].sum()
        np.testing.assert_allclose(predictor.run(padded)["logits"], predictor.run(natural)["logits"], atol=1e-5)


@pytest.mark.slow
def test_the_jetson_recipe_gates_an_int8_variant_on_held_out_vqa(vqa, pictures, tmp_path):
    rng = np.random.default_rng(3)
    records = []
    for i in range(80):
        h, w = (int(v) for v in rng.integers(30, 200, size=2))
        path = tmp_path / f"{i:03d}.png"
        Image.fromarray(synthesize_image(h, w, seed=300 + i)).save(path)
        records.append({"question": QUESTIONS[i % len(QUESTIONS)], "image": str(path),
                        "label": ANSWERS[int(rng.integers(0, len(ANSWERS)))], "split": "test" if i < 56 else "calibration"})
    data = tmp_path / "vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = CliRunner().invoke(cli, ["export", str(vqa[0]), "-o", str(tmp_path / "jetson.bundle"), "--target",
                                      "jetson-orin-nano", "--eval-data", str(data)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "jetson.bundle" / "edgemm.json").read_text())
    int8 = [a for a in manifest["artifacts"] if a["precision"] == "int8"]
    assert int8 and int8[0]["validation"]["gate"]["passed"]
