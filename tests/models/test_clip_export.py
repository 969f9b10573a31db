"""Tiny CLIP and SigLIP directories (built from configs) export in both modes and match PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

from edgemm.bundle.verify import verify_bundle
from edgemm.data.synthetic import synthesize_image
from edgemm.export.pipeline import ExportOptions, export_bundle
from tests.conftest import run_edge

LABELS = ["cat", "dog", "seven"]
CORPUS = ["a photo of a cat", "a photo of a dog", "a photo of a seven", "the number seven",
          "a drawing of a digit", "a cat and a dog", "handwritten seven"] * 20


def _tokenizer() -> tf.PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>", model_max_length=16)


def _save(folder, kind: str):
    tok = _tokenizer()
    text = dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    torch.manual_seed(0)
    if kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
        image_processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision))
        image_processor = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    return {"clip": _save(root / "tiny-clip", "clip"), "siglip": _save(root / "tiny-siglip", "siglip")}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(synthesize_image(50, 41, seed=9)).save(path)
    return path


def _torch_logits(folder, kind, texts, image_path, padding):
    model = (tf.CLIPModel if kind == "clip" else tf.SiglipModel).from_pretrained(folder).eval()
    tok = tf.AutoTokenizer.from_pretrained(folder)
    proc = tf.AutoImageProcessor.from_pretrained(folder, use_fast=False)
    enc = tok(texts, padding=padding, max_length=16, truncation=True, return_tensors="pt")
    pixels = proc([Image.open(image_path)], return_tensors="pt")["pixel_values"]
    kwargs = {"input_ids": enc["input_ids"], "pixel_values": pixels}
    if kind == "clip":
        kwargs["attention_mask"] = enc["attention_mask"]
    with torch.no_grad():
        return model(**kwargs).logits_per_image[0].numpy()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_shot_runs_only_the_image_tower(dirs, tmp_path, image_file, kind):
    report = export_bundle(dirs[kind], tmp_path / "zs", options=ExportOptions(labels=tuple(LABELS), prompt="a photo of a {}"))
    manifest = verify_bundle(report.bundle)
    assert [t.name for t in manifest.inputs] == ["pixel_values"]
    assert "text" not in manifest.preprocessing and not any(f.path.startswith("text/") for f in manifest.files)
    assert manifest.task == "zero_shot_classification" and manifest.labels == LABELS
    assert manifest.source["zero_shot"]["text_tower"] == "precomputed at export"
    assert report.parity["passed"] and len(report.parity["cases"]) >= 3

    code, out, err, guard = run_edge("predict", str(report.bundle), "--image", str(image_file), "--json")
    assert code == 0, err
    assert guard == {"modules": [], "sockets": 0}
    scores = json.loads(out)["predictions"][0]["scores"]
    prompts = [f"a photo of a {label}" for label in LABELS]
    logits = _torch_logits(dirs[kind], kind, prompts, image_file, "longest" if kind == "clip" else "max_length")
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum() if kind == "clip" else 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose([scores[label] for label in LABELS], probs, atol=1e-4)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_similarity_mode_scores_any_texts(dirs, tmp_path, image_file, kind):
    report = export_bundle(dirs[kind], tmp_path / "sim")
    manifest = verify_bundle(report.bundle)
    assert manifest.task == "image_text_similarity" and "text/tokenizer.json" in {f.path for f in manifest.files}
    texts = ["a cat and a dog", "handwritten seven", "the number seven"]
    args = ["predict", str(report.bundle), "--image", str(image_file), "--json"]
    for text in texts:
        args += ["--text", text]
    code, out, err, guard = run_edge(*args)
    assert code == 0, err
    assert guard["modules"] == []
    values = json.loads(out)["predictions"][0]["values"]
    logits = _torch_logits(dirs[kind], kind, texts, image_file, "longest" if kind == "clip" else "max_length")
    np.testing.assert_allclose([values[t] for t in texts], logits, atol=1e-4)


def test_prompt_without_placeholder_is_refused(dirs, tmp_path):
    from edgemm.errors import UsageError

    with pytest.raises(UsageError, match="prompt"):
        export_bundle(dirs["clip"], tmp_path / "bad", options=ExportOptions(labels=("a", "b"), prompt="no slot"))
    assert not (tmp_path / "bad").exists()
