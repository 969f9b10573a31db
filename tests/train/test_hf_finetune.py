"""``edgemm train --model DIR``: fine-tuning Hugging Face checkpoints (issue 15).

BitFit on the real MiniLM weights as a sentiment classifier (only biases + head train, every
other weight unchanged, held-out accuracy / macro-F1 above chance), LoRA on a tiny ViT image
classifier and BitFit on a tiny Wav2Vec2 audio classifier; each result loads with transformers
(``from_pretrained`` and ``pipeline``) and, where the export family exists, exports with no flags.
"""

from __future__ import annotations

import json
import random
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from click.testing import CliRunner
from safetensors.torch import load_file

from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_image, synthesize_speechlike
from edgemm.train.trainer import TrainConfig, train

POSITIVE = ["great", "wonderful", "excellent", "delightful", "fantastic", "lovely", "superb", "enjoyable"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "horrible", "disappointing", "dull", "annoying"]
SUBJECTS = ["the movie", "this book", "the lesson", "the concert", "our trip", "the game", "this song", "the meal",
            "the class", "the museum visit", "the show", "the story"]
TEMPLATES = ["{S} was {a}.", "I thought {s} was {a}.", "Honestly, {s} is {a}!", "My friends said {s} felt {a}.",
             "Everyone agreed that {s} was {a}."]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _sentences(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        label = ("negative", "positive")[i % 2]
        adjective = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        subject = rng.choice(SUBJECTS)
        text = rng.choice(TEMPLATES).format(S=subject.capitalize(), s=subject, a=adjective)
        rows.append({"text": text, "label": label})
    return rows


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> Path:
    """Templated English sentiment sentences: train 64, val 16, held-out test 32."""
    root = tmp_path_factory.mktemp("sentiment")
    rng = random.Random(7)
    for split, n in (("train", 64), ("val", 16), ("test", 32)):
        _write_jsonl(root / f"{split}.jsonl", _sentences(n, rng))
    return root


@pytest.fixture(scope="module")
def bitfit_minilm(tmp_path_factory, minilm_dir, sentiment):
    """BitFit on the real MiniLM weights through the CLI: (output dir, --json document)."""
    out = tmp_path_factory.mktemp("bitfit") / "sentiment-minilm"
    result = CliRunner().invoke(cli, ["train", "-o", str(out), "--model", str(minilm_dir), "--data", str(sentiment),
                                      "--method", "bitfit", "--epochs", "3", "--batch-size", "16", "--lr", "3e-3",
                                      "--max-length", "24", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_bitfit_trains_exactly_the_biases_and_the_head(bitfit_minilm, minilm_dir):
    out, doc = bitfit_minilm
    source = load_file(str(minilm_dir / "model.safetensors"))
    source.pop("embeddings.position_ids", None)  # a buffer, not a parameter
    biases = sum(v.numel() for k, v in source.items() if k.endswith(".bias"))
    head = 384 * 2 + 2  # classifier: hidden 384 → 2 labels
    assert doc["trainable"]["method"] == "bitfit"
    assert doc["trainable"]["trainable"] == biases + head
    assert doc["trainable"]["total"] == sum(v.numel() for v in source.values()) + head
    assert doc["trainable"]["fraction"] < 0.01

    saved = load_file(str(out / "model.safetensors"))
    assert saved["classifier.weight"].shape == (2, 384)
    changed_biases = 0
    for key, value in source.items():
        tuned = saved[f"bert.{key}"]
        if key.endswith(".bias"):
            changed_biases += not torch.equal(tuned, value)
        else:  # every weight that is not a bias is bit-for-bit the pretrained one
            assert torch.equal(tuned, value), key
    assert changed_biases > 0


def test_bitfit_reports_held_out_metrics_above_chance(bitfit_minilm):
    out, doc = bitfit_minilm
    assert doc["ok"] and doc["best_epoch"] >= 1 and len(doc["history"]) >= 1
    assert doc["test"]["accuracy"] >= 0.75, doc["test"]
    assert doc["test"]["macro_f1"] >= 0.7, doc["test"]
    record = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert record["data"]["labels"] == ["negative", "positive"] and len(record["data"]["fingerprint"]) == 64
    assert Path(record["data"]["spec"]).is_absolute()
    assert record["model"]["trained_as"] == "BertForSequenceClassification"
    assert record["trainable"] == doc["trainable"]


def test_bitfit_result_is_a_plain_transformers_classifier(bitfit_minilm, sentiment):
    out, doc = bitfit_minilm
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert (out / "tokenizer.json").is_file() and not list(out.glob("*.bin"))
    classify = tf.pipeline("text-classification", model=str(out), device="cpu")
    rows = [json.loads(line) for line in (sentiment / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    predictions = classify([r["text"] for r in rows], batch_size=16)
    hits = sum(p["label"] == r["label"] for p, r in zip(predictions, rows))
    assert hits / len(rows) == pytest.approx(doc["test"]["accuracy"])


# -- image and audio ---------------------------------------------------------------------------


def _images(root: Path, n: int, seed: int) -> list[str]:
    from PIL import Image

    names = []
    for i in range(n):
        name = f"img{seed}_{i}.png"
        Image.fromarray(synthesize_image(32 + 8 * (i % 3), 40 + 4 * (i % 4), seed * 100 + i)).save(root / name)
        names.append(name)
    return names


def _wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(rate)
        fh.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    """A random ViT image classifier with 3 labels of its own, saved with its image processor."""
    folder = tmp_path_factory.mktemp("vit") / "vit"
    torch.manual_seed(0)
    config = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, num_labels=3)
    tf.ViTForImageClassification(config).save_pretrained(folder)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pictures")
    rows = [{"image": name, "label": ("day", "night")[i % 2], "split": split}
            for split, n, seed in (("train", 16, 1), ("val", 4, 2), ("test", 4, 3))
            for i, name in enumerate(_images(root, n, seed))]
    _write_jsonl(root / "data.jsonl", rows)
    return root / "data.jsonl"


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    """A random bare Wav2Vec2 encoder (no head), saved with its feature extractor."""
    folder = tmp_path_factory.mktemp("w2v") / "w2v"
    torch.manual_seed(0)
    config = tf.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), conv_bias=True,
                               num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                               feat_extract_norm="layer", do_stable_layer_norm=True, classifier_proj_size=16)
    tf.Wav2Vec2Model(config).save_pretrained(folder)
    tf.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("speech")
    rows = []
    for split, n, seed in (("train", 12, 1), ("val", 4, 2), ("test", 4, 3)):
        for i in range(n):
            name = f"clip{seed}_{i}.wav"
            _wav(root / name, synthesize_speechlike(0.3 + 0.15 * (i % 5), 16000, seed * 100 + i), 16000)
            rows.append({"audio": name, "label": ("yes", "no", "maybe")[i % 3], "split": split})
    _write_jsonl(root / "data.jsonl", rows)
    return root / "data.jsonl"


def _family_exists(folder: Path) -> bool:
    from edgemm.errors import UnsupportedModelError
    from edgemm.models.specs import family_for

    try:
        return family_for(folder).name != "fusion"
    except UnsupportedModelError:
        return False


@pytest.fixture(scope="module")
def vit_tuned(tmp_path_factory, tiny_vit, pictures):
    """LoRA on the tiny ViT: (output dir, report)."""
    out = tmp_path_factory.mktemp("vit-tuned") / "vit-tuned"
    return out, train(TrainConfig(output=out, model=str(tiny_vit), data=str(pictures), method="lora", epochs=2,
                                  batch_size=8, lr=1e-2))


@pytest.fixture(scope="module")
def w2v_tuned(tmp_path_factory, tiny_wav2vec2, speech):
    """BitFit on the bare tiny Wav2Vec2: (output dir, report)."""
    out = tmp_path_factory.mktemp("w2v-tuned") / "w2v-tuned"
    return out, train(TrainConfig(output=out, model=str(tiny_wav2vec2), data=str(speech), method="bitfit", epochs=2,
                                  batch_size=4))


def test_lora_on_a_tiny_vit_image_classifier(vit_tuned, tiny_vit):
    out, report = vit_tuned
    assert report.trainable["method"] == "lora" and 0 < report.trainable["fraction"] < 0.5
    assert set(report.test) == {"accuracy", "macro_f1"}
    saved = load_file(str(out / "model.safetensors"))
    assert not any("lora_" in key for key in saved)  # merged: a plain checkpoint
    source = load_file(str(tiny_vit / "model.safetensors"))
    attention = "vit.encoder.layer.0.attention.attention"
    assert not torch.equal(saved[f"{attention}.query.weight"], source[f"{attention}.query.weight"])
    assert torch.equal(saved[f"{attention}.key.weight"], source[f"{attention}.key.weight"])  # not adapted

    model = tf.AutoModelForImageClassification.from_pretrained(out, local_files_only=True)
    assert model.config.id2label == {0: "day", 1: "night"} and model.classifier.out_features == 2
    classify = tf.pipeline("image-classification", model=str(out), device="cpu")
    from PIL import Image

    top = classify(Image.fromarray(synthesize_image(48, 64, 99)))
    assert {p["label"] for p in top} == {"day", "night"}


def test_bitfit_on_a_bare_wav2vec2_becomes_an_audio_classifier(w2v_tuned, tiny_wav2vec2):
    out, report = w2v_tuned
    source = load_file(str(tiny_wav2vec2 / "model.safetensors"))
    saved = load_file(str(out / "model.safetensors"))
    head = {k: v for k, v in saved.items() if k.startswith(("projector.", "classifier."))}
    assert {k: tuple(v.shape) for k, v in head.items()} == {
        "projector.weight": (16, 32), "projector.bias": (16,), "classifier.weight": (3, 16), "classifier.bias": (3,)}
    assert report.trainable["trainable"] == (sum(v.numel() for k, v in source.items() if k.endswith(".bias"))
                                             + sum(v.numel() for v in head.values()))
    for key, value in source.items():
        if not key.endswith(".bias"):
            assert torch.equal(saved[f"wav2vec2.{key}"], value), key

    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["Wav2Vec2ForSequenceClassification"]
    assert sorted(config["label2id"]) == ["maybe", "no", "yes"]
    classify = tf.pipeline("audio-classification", model=str(out), device="cpu")
    top = classify(synthesize_speechlike(0.7, 16000, 5), top_k=3)
    assert {p["label"] for p in top} == {"maybe", "no", "yes"}


# -- refusals ----------------------------------------------------------------------------------


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["train", *args])


def test_refusals_name_the_problem(tmp_path, tiny_vit, sentiment, minilm_dir):
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    result = _invoke("-o", str(tmp_path / "a"), "--model", str(gpt), "--data", str(sentiment))
    assert result.exit_code == 2 and "GPT2LMHeadModel" in result.stderr and "bert" in result.stderr
    assert "Traceback" not in result.output

    result = _invoke("-o", str(tmp_path / "b"), "--model", str(tmp_path / "a"), "--data", str(sentiment))
    assert result.exit_code == 2 and "no such directory" in result.stderr

    result = _invoke("-o", str(tmp_path / "c"), "--model", str(tiny_vit), "--data", str(sentiment))
    assert result.exit_code == 2 and "no image column" in result.stderr

    result = _invoke("-o", str(tmp_path / "d"), "--model", str(minilm_dir), "--image", "vit-tiny", "--data", str(sentiment))
    assert result.exit_code == 2 and "--image" in result.stderr

    pickled = tmp_path / "pickled"
    tf.BertForSequenceClassification(tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64)
                                     ).save_pretrained(pickled, safe_serialization=False)
    result = _invoke("-o", str(tmp_path / "e"), "--model", str(pickled), "--data", str(sentiment))
    assert result.exit_code == 2 and "pickle" in result.stderr and "--allow-pickle" in result.stderr
    assert not (tmp_path / "e").exists()


def test_bitfit_on_a_fusion_model_trains_only_the_pretrained_encoders_biases(tmp_path, minilm_dir):
    from edgemm.data.dataset import Dataset, Record
    from edgemm.train.trainer import build_model, configure_trainable
    from tests.factories import tiny_text_dir

    text_dir = tiny_text_dir(tmp_path / "tiny-text", tf.AutoTokenizer.from_pretrained(minilm_dir))
    data = Dataset([Record("a", text="x", image=Path("a.png")), Record("b", text="y", image=Path("b.png"))],
                   ["a", "b"], ["text", "image"], "memory")
    config = TrainConfig(output=tmp_path / "x", text=str(text_dir), image="resnet-tiny", method="bitfit")
    model = build_model(config, data)
    assert configure_trainable(model, config)
    for name, param in model.named_parameters():
        if name.startswith("encoders.text."):
            assert param.requires_grad == name.endswith(".bias"), name
        else:  # the image encoder (trained from scratch), fusion and head train fully
            assert param.requires_grad, name


# -- round trip: edgemm export DIR (no flags) → torch-free predict == transformers pipeline -----

SENTENCES = ["What a wonderful lesson that was!", "The concert was dull and far too long.",
             "I thought the museum visit was lovely.", "Honestly, this book is dreadful.",
             "这部电影很精彩。", "今天的课太无聊了。"]


def _round_trip_inputs(kind: str) -> tuple[str, list, list]:
    """(pipeline task, inputs for the pipeline, the same inputs for Predictor.predict)."""
    if kind == "text":
        return "text-classification", SENTENCES, SENTENCES
    if kind == "image":
        from PIL import Image

        pictures = [Image.fromarray(synthesize_image(h, w, seed)) for h, w, seed in ((48, 64, 1), (32, 32, 2), (70, 50, 3))]
        return "image-classification", pictures, pictures
    waves = [synthesize_speechlike(seconds, 16000, seed) for seconds, seed in ((0.4, 1), (0.9, 2), (1.3, 3))]
    return "audio-classification", [w.copy() for w in waves], [(w, 16000) for w in waves]


@pytest.mark.parametrize("trained, kind", [
    # the real-MiniLM export is slow here; tests/models/test_hf_text.py covers that family on MiniLM
    pytest.param("bitfit_minilm", "text", marks=pytest.mark.slow),
    ("vit_tuned", "image"),
    ("w2v_tuned", "audio"),
])
def test_fine_tuned_directory_exports_with_no_flags(request, tmp_path, trained, kind):
    from edgemm.export.pipeline import export_bundle
    from edgemm.runtime.predictor import Predictor

    out = request.getfixturevalue(trained)[0]
    if not _family_exists(out):
        pytest.skip(f"no export family takes {out.name} yet")
    bundle = export_bundle(out, tmp_path / "bundle").bundle
    task, pipeline_inputs, inputs = _round_trip_inputs(kind)
    expected = tf.pipeline(task, model=str(out), device="cpu")(pipeline_inputs, top_k=1)
    got = Predictor.load(bundle, device="cpu").predict(**{kind: inputs})
    for want, have in zip(expected, got):
        want = want[0] if isinstance(want, list) else want
        assert have.label == want["label"]
        assert have.score == pytest.approx(want["score"], abs=1e-4)


# -- every supported architecture takes every method -------------------------------------------

SPEECH = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37,
          "conv_dim": (16, 16), "conv_stride": (5, 4), "conv_kernel": (10, 4), "num_conv_pos_embeddings": 16,
          "num_conv_pos_embedding_groups": 2}
ENCODER = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
TINY_CONFIGS = {
    "bert": lambda: tf.BertConfig(vocab_size=99, **ENCODER),
    "distilbert": lambda: tf.DistilBertConfig(vocab_size=99, dim=32, n_layers=1, n_heads=2, hidden_dim=37),
    "roberta": lambda: tf.RobertaConfig(vocab_size=99, **ENCODER),
    "xlm-roberta": lambda: tf.XLMRobertaConfig(vocab_size=99, **ENCODER),
    "electra": lambda: tf.ElectraConfig(vocab_size=99, embedding_size=16, **ENCODER),
    "mpnet": lambda: tf.MPNetConfig(vocab_size=99, **ENCODER),
    "deberta-v2": lambda: tf.DebertaV2Config(vocab_size=99, **ENCODER),
    "vit": lambda: tf.ViTConfig(image_size=32, patch_size=8, **ENCODER),
    "deit": lambda: tf.DeiTConfig(image_size=32, patch_size=8, **ENCODER),
    "convnext": lambda: tf.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
    "resnet": lambda: tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
    "swin": lambda: tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4),
    "wav2vec2": lambda: tf.Wav2Vec2Config(**SPEECH),
    "hubert": lambda: tf.HubertConfig(**SPEECH),
    "wavlm": lambda: tf.WavLMConfig(**SPEECH),
    "audio-spectrogram-transformer": lambda: tf.ASTConfig(max_length=64, num_mel_bins=32, **ENCODER),
}


def test_every_supported_model_type_has_a_tiny_config_here():
    from edgemm.train.hf import HEADS

    assert {t for heads in HEADS.values() for t in heads} == set(TINY_CONFIGS)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_every_method_configures_every_supported_architecture(tmp_path, model_type):
    from edgemm.train.hf import HEADS, configure, head_prefixes

    head_class = next(heads[model_type] for heads in HEADS.values() if model_type in heads)
    for method in ("bitfit", "lora", "full"):
        torch.manual_seed(0)
        model = getattr(tf, head_class)(TINY_CONFIGS[model_type]())
        head = tuple(f"{p}." for p in head_prefixes(model))
        assert head, head_class
        model, groups = configure(model, TrainConfig(output=tmp_path, model="x", method=method))
        names = {name.removeprefix("base_model.model."): p for name, p in model.named_parameters()}
        trained = {name for name, p in names.items() if p.requires_grad}
        assert sum(len(g["params"]) for g in groups) == len(trained)
        assert {n for n in trained if n.startswith(head)} == {n for n in names if n.startswith(head)}  # head trains
        others = {n for n in trained if not n.startswith(head)}
        if method == "bitfit":
            assert others and all(n.endswith(".bias") for n in others), head_class
        elif method == "lora":
            assert others and all("lora_" in n for n in others), head_class
