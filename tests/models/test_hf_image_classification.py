"""Fine-tuned transformers image classifiers export with no flags and match the pipeline.

Per architecture a tiny random-weight model (ViT, DeiT with and without teacher, ConvNeXt,
ResNet, Swin) is saved with its image processor, exported by ``edgemm export DIR``, and the
torch-free bundle's ``edgemm predict`` is compared with transformers' ``image-classification``
pipeline on the same picture files: pictures of many sizes (20x30 to 300x200), modes (RGB,
grey, palette, RGBA, grey+alpha) and formats (PNG, JPEG, an EXIF-rotated JPEG).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from click.testing import CliRunner
from PIL import Image, ImageDraw
from transformers.image_utils import load_image

from edgemm.bundle.verify import verify_bundle
from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_image
from edgemm.runtime import Predictor
from tests.conftest import run_edge

SCORE_ATOL = 1e-4
LABELS = {3: ["cat", "digit seven", "bicycle"], 4: ["apple", "banana", "cherry", "durian"]}
_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            image_size=32, patch_size=8)


def _labels(n: int) -> dict:
    names = LABELS[n]
    return {"num_labels": n, "id2label": dict(enumerate(names)), "label2id": {v: k for k, v in enumerate(names)}}


# name → (model class, config, image processor)
def _case(name: str):
    if name == "vit":
        return (tf.ViTForImageClassification, tf.ViTConfig(**_VIT, **_labels(3)),
                tf.ViTImageProcessor(size={"height": 32, "width": 32}))
    if name == "deit":
        return (tf.DeiTForImageClassification, tf.DeiTConfig(**_VIT, **_labels(3)),
                tf.DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}))
    if name == "deit-teacher":
        return (tf.DeiTForImageClassificationWithTeacher, tf.DeiTConfig(**_VIT, **_labels(4)),
                tf.DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}))
    if name == "convnext-multilabel":
        config = tf.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                   problem_type="multi_label_classification", **_labels(4))
        return (tf.ConvNextForImageClassification, config,
                tf.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875))
    if name == "resnet":
        config = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                 **_labels(3))
        return (tf.ResNetForImageClassification, config,
                tf.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875))
    if name == "swin":
        config = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                               window_size=4, mlp_ratio=2.0, **_labels(3))
        return (tf.SwinForImageClassification, config,
                tf.ViTImageProcessor(size={"height": 32, "width": 32}, resample=3))
    raise KeyError(name)


CASES = ["vit", "deit", "deit-teacher", "convnext-multilabel", "resnet", "swin"]


def _save(name: str, folder: Path) -> Path:
    model_cls, config, processor = _case(name)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    # Random heads give near-uniform scores that hide preprocessing errors: make them decisive.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == config.num_labels:
                module.weight.normal_(0.0, 1.0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _photo(height: int, width: int, seed: int) -> Image.Image:
    """A smooth photo-like picture: lit gradient, a soft blob, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    sky = np.stack([90 + 120 * (1 - y), 130 + 90 * (1 - y), 200 + 40 * x], axis=-1)
    blob = np.exp(-(((x - 0.6) ** 2 + (y - 0.55) ** 2) / 0.02))[..., None] * np.array([120, 60, -90])
    pixels = sky + blob + rng.normal(0, 6, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _drawing(size: tuple[int, int], mode: str) -> Image.Image:
    """Strokes a child might draw: a seven, a circle and a box."""
    background = {"RGB": (255, 255, 255), "L": 255, "RGBA": (0, 0, 0, 0), "LA": (0, 0)}[mode]
    ink = {"RGB": (20, 40, 160), "L": 10, "RGBA": (200, 30, 30, 255), "LA": (30, 255)}[mode]
    image = Image.new(mode, size, background)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.line([(w * 0.2, h * 0.2), (w * 0.8, h * 0.2), (w * 0.4, h * 0.9)], fill=ink, width=max(2, w // 12))
    draw.ellipse([w * 0.55, h * 0.5, w * 0.9, h * 0.85], outline=ink, width=2)
    draw.rectangle([w * 0.05, h * 0.6, w * 0.3, h * 0.95], fill=ink)
    return image


@pytest.fixture(scope="module")
def picture_files(tmp_path_factory) -> list[Path]:
    """Twelve picture files: sizes from 20x30 to 300x200, several modes and formats."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("pictures")
    digit = load_digits().images[7]
    pictures = {
        "tiny.png": Image.fromarray(synthesize_image(20, 30, seed=1)),
        "wide.png": Image.fromarray(synthesize_image(200, 300, seed=2)),
        "tall.png": Image.fromarray(synthesize_image(300, 200, seed=3)),
        "odd.png": Image.fromarray(synthesize_image(97, 131, seed=4)),
        "photo.jpg": _photo(150, 210, seed=5),
        "drawing.png": _drawing((120, 80), "RGB"),
        "grey.png": _drawing((56, 56), "L"),
        "transparent.png": _drawing((90, 60), "RGBA"),
        "grey-alpha.png": _drawing((64, 48), "LA"),
        "palette.png": _photo(77, 55, seed=6).quantize(colors=16),
        "scan-digit.png": Image.fromarray((digit * 255 / 16).astype(np.uint8)).resize((64, 64), Image.NEAREST),
    }
    paths = []
    for name, image in pictures.items():
        path = root / name
        image.save(path, quality=90) if name.endswith(".jpg") else image.save(path)
        paths.append(path)
    # A phone photo stored sideways with an EXIF orientation tag (6: rotate 90° clockwise to view).
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = root / "phone-rotated.jpg"
    _photo(60, 100, seed=7).save(rotated, exif=exif.tobytes(), quality=92)
    paths.append(rotated)
    return paths


def _export(folder: Path, bundle: Path) -> None:
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(bundle), "--json"])
    assert result.exit_code == 0, result.output


def _assert_same(expected: list[dict], got: dict, where: str) -> None:
    """Same top label (unless the pipeline's top two tie) and every score within SCORE_ATOL."""
    top = expected[0]["label"]
    tie = len(expected) > 1 and expected[0]["score"] - expected[1]["score"] < 1e-5
    assert got["label"] == top or tie, f"{where}: edgemm says {got['label']!r}, the pipeline {top!r}"
    for item in expected:
        assert abs(got["scores"][item["label"]] - item["score"]) <= SCORE_ATOL, (where, item, got["scores"])


@pytest.mark.parametrize("name", CASES)
def test_export_dir_matches_image_classification_pipeline(name, tmp_path, picture_files):
    folder = _save(name, tmp_path / f"tiny-{name}")
    bundle = tmp_path / "bundle"
    _export(folder, bundle)
    manifest = verify_bundle(bundle)
    _, config, _ = _case(name)
    multilabel = name.endswith("multilabel")
    assert manifest.source["family"] == "hf-image-classification"
    assert manifest.task == ("multilabel" if multilabel else "classification")
    assert manifest.postprocessing["type"] == ("sigmoid" if multilabel else "softmax")
    assert manifest.labels == [config.id2label[i] for i in range(config.num_labels)]
    assert manifest.validation["parity"]["passed"]

    args = ["predict", str(bundle), "--json"]
    for path in picture_files:
        args += ["--image", str(path)]
    code, out, err, guard = run_edge(*args)
    assert code == 0, err
    assert guard == {"modules": [], "sockets": 0}
    predictions = json.loads(out)["predictions"]
    assert len(predictions) == len(picture_files)

    classifier = tf.pipeline("image-classification", model=str(folder))
    spread = []
    with Predictor.load(bundle, device="cpu") as predictor:
        for path, got in zip(picture_files, predictions):
            # The pixels the model sees, then the answers.
            pixels = predictor.preprocessor({"image": [path.read_bytes()]})["pixel_values"]
            reference = classifier.image_processor(images=load_image(str(path)), return_tensors="np")
            np.testing.assert_allclose(pixels, reference["pixel_values"], atol=1e-5, rtol=0, err_msg=path.name)
            expected = classifier(str(path))
            _assert_same(expected, got, f"{name} / {path.name}")
            spread.append(expected[0]["score"] - expected[-1]["score"])
    # The comparison means something only when the scores depend on the picture.
    assert max(spread) > 0.05, spread


def test_rgba_bytes_match_pipeline_on_pil_images(tmp_path):
    """Predictor inside an app, fed an in-memory RGBA picture: transparency is dropped as the
    pipeline's convert("RGB") drops it (the stored colours show)."""
    folder = _save("vit", tmp_path / "tiny-vit")
    _export(folder, tmp_path / "bundle")
    pixels = synthesize_image(70, 90, seed=11)
    alpha = np.where(np.arange(90)[None, :] % 3 == 0, 0, 255).astype(np.uint8)[:, :, None].repeat(70, 0)
    image = Image.fromarray(np.concatenate([pixels, alpha], axis=-1), "RGBA")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with Predictor.load(tmp_path / "bundle", device="cpu") as predictor:
        got = predictor.predict(image=buffer.getvalue()).to_dict()
    expected = tf.pipeline("image-classification", model=str(folder))(image)
    _assert_same(expected, got, "rgba bytes")


def test_directory_without_image_processor_is_refused(tmp_path):
    model_cls, config, _ = _case("vit")
    folder = tmp_path / "no-processor"
    model_cls(config).save_pretrained(folder)
    result = CliRunner().invoke(cli, ["export", str(folder), "-o", str(tmp_path / "bundle")])
    assert result.exit_code == 2, result.output
    assert "image processor" in result.output and "save_pretrained" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "bundle").exists()


def test_labels_override_must_fit_the_head(tmp_path):
    from edgemm.errors import UsageError
    from edgemm.export.pipeline import ExportOptions, export_bundle

    folder = _save("resnet", tmp_path / "tiny-resnet")
    with pytest.raises(UsageError, match="3 outputs"):
        export_bundle(folder, tmp_path / "bundle", options=ExportOptions(labels=("a", "b")))
