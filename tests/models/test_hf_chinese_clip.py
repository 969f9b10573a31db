"""A tiny Chinese-CLIP directory (random weights, a WordPiece vocabulary over Chinese characters,
``ChineseCLIPImageProcessor``) exports with ``edgemm export DIR --labels …`` and its torch-free
bundle answers as transformers' ``zero-shot-image-classification`` pipeline does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from click.testing import CliRunner
from PIL import Image
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from edgemm.bundle.verify import verify_bundle
from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_image
from tests.conftest import run_edge

# Label words in Chinese and English; "猫,狗" is how a Chinese-CLIP user writes them.
LABELS = ["猫", "狗", "数字七", "苹果", "a red apple", "the sky"]
CORPUS = [
    "一只猫坐在桌子上", "一只狗在草地上跑", "这是一张照片", "一张猫的照片。", "一张狗的照片。", "手写的数字七",
    "红色的苹果放在盘子里", "蓝色的天空和白云", "a photo of a cat", "a dog on the grass", "a red apple",
    "the sky is blue", "handwritten digit seven", "这是一张数字的照片", "小朋友在画画",
] * 10


def _tokenizer() -> tf.BertTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=400, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return tf.BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                cls_token="[CLS]", mask_token="[MASK]", model_max_length=32)


@pytest.fixture(scope="module")
def chinese_clip_dir(tmp_path_factory):
    return save_chinese_clip(tmp_path_factory.mktemp("hf") / "tiny-chinese-clip")


def save_chinese_clip(folder):
    """A tiny ChineseCLIPModel directory with its tokenizer and image processor."""
    tok = _tokenizer()
    torch.manual_seed(0)
    config = tf.ChineseCLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=24)
    model = tf.ChineseCLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))  # a trained temperature, so the scores are not all alike
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    # As the released checkpoints: an exact resize, then a centre crop (here 40 → 32).
    tf.ChineseCLIPImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Twelve pictures: synthetic scenes of different sizes, real digit scans and two real photos."""
    import sklearn.datasets
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for i, (h, w) in enumerate([(64, 64), (48, 80), (90, 50), (33, 33), (120, 96), (70, 41), (32, 64)]):
        paths.append(folder / f"scene{i}.png")
        Image.fromarray(synthesize_image(h, w, seed=10 + i)).save(paths[-1])
    digits = load_digits()
    for i in (7, 17, 42):
        gray = (digits.images[i] * 255 / 16).astype(np.uint8)
        paths.append(folder / f"digit{i}.png")
        Image.fromarray(gray).resize((48, 48), Image.Resampling.NEAREST).convert("RGB").save(paths[-1])
    for name in ("china.jpg", "flower.jpg"):  # real photographs (427x640 JPEG) shipped with scikit-learn
        paths.append(Path(sklearn.datasets.__file__).parent / "images" / name)
    return paths


@pytest.mark.parametrize("kwargs", [
    {"size": {"height": 40, "width": 40}, "crop_size": {"height": 32, "width": 32}},
    {"size": {"height": 224, "width": 224}},  # the released checkpoints' settings
    {"size": {"height": 48, "width": 64}, "crop_size": {"height": 40, "width": 40}, "resample": 2,
     "do_center_crop": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
])
def test_pixels_equal_chinese_clip_image_processor(pictures, kwargs):
    from edgemm.runtime.preprocess.image import (
        decode_image,
        image_preprocessing_from_hf,
        preprocess_images,
    )

    processor = tf.ChineseCLIPImageProcessor(**kwargs)
    images = [Image.open(p).convert("RGB") for p in pictures]
    expected = processor(images, return_tensors="np")["pixel_values"]
    section = image_preprocessing_from_hf(processor.to_dict())
    actual = preprocess_images([decode_image(p.read_bytes()) for p in pictures], section)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_a_size_without_height_and_width_is_refused_as_transformers_does():
    from edgemm.errors import UnsupportedModelError
    from edgemm.runtime.preprocess.image import image_preprocessing_from_hf

    config = {"image_processor_type": "ChineseCLIPImageProcessor", "size": {"shortest_edge": 224}}
    with pytest.raises(UnsupportedModelError, match="height"):
        image_preprocessing_from_hf(config)


def _export(folder, out, *args):
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def _predict(bundle, pictures):
    args = ["predict", str(bundle), "--json"]
    for path in pictures:
        args += ["--image", str(path)]
    code, out, err, guard = run_edge(*args)
    assert code == 0, err
    assert guard == {"modules": [], "sockets": 0}
    return json.loads(out)["predictions"]


def _assert_same_as_pipeline(predictions, expected):
    for prediction, reference in zip(predictions, expected, strict=True):
        ref = {r["label"]: r["score"] for r in reference}
        assert set(prediction["scores"]) == set(ref)
        np.testing.assert_allclose([prediction["scores"][k] for k in ref], list(ref.values()), atol=1e-4)
        top = sorted(ref.values(), reverse=True)
        if top[0] - top[1] > 1e-4:  # a tie may break either way
            assert prediction["label"] == reference[0]["label"]


@pytest.mark.parametrize("prompt", [None, "一张{}的照片。"])
def test_zero_shot_matches_the_pipeline(chinese_clip_dir, pictures, tmp_path, prompt):
    bundle = _export(chinese_clip_dir, tmp_path / "zs", "--labels", ",".join(LABELS),
                     *(["--prompt", prompt] if prompt else []))
    manifest = verify_bundle(bundle)
    assert manifest.task == "zero_shot_classification" and manifest.labels == LABELS
    assert [t.name for t in manifest.inputs] == ["pixel_values"]
    # The default template is the label itself, as Chinese-CLIP's examples pass them.
    assert manifest.source["zero_shot"]["prompt"] == (prompt or "{}")

    pipe = tf.pipeline("zero-shot-image-classification", model=str(chinese_clip_dir))
    expected = pipe([str(p) for p in pictures], candidate_labels=LABELS, hypothesis_template=prompt or "{}")
    _assert_same_as_pipeline(_predict(bundle, pictures), expected)


def test_both_towers_score_any_texts(chinese_clip_dir, pictures, tmp_path):
    bundle = _export(chinese_clip_dir, tmp_path / "sim")
    manifest = verify_bundle(bundle)
    assert manifest.task == "image_text_similarity"
    texts = ["一只猫坐在桌子上", "蓝色的天空", "a dog on the grass"]
    args = ["predict", str(bundle), "--image", str(pictures[0]), "--json"]
    for text in texts:
        args += ["--text", text]
    code, out, err, guard = run_edge(*args)
    assert code == 0, err
    assert guard["modules"] == []
    values = json.loads(out)["predictions"][0]["values"]

    model = tf.ChineseCLIPModel.from_pretrained(chinese_clip_dir).eval()
    processor = tf.ChineseCLIPProcessor.from_pretrained(chinese_clip_dir)
    inputs = processor(text=texts, images=Image.open(pictures[0]), return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image[0].numpy()
    np.testing.assert_allclose([values[t] for t in texts], logits, atol=1e-4)
