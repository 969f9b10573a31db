"""Held-out data drives the accuracy gate of transformers text models: sentiment (one label per
text) and NER (tokens + tags, token-level accuracy over each word's first sub-token); and the
reference recipes on the real MiniLM sentiment model, every variant gated and recorded."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from edgemm.bundle.verify import verify_bundle
from edgemm.recipes import load_recipe
from edgemm.runtime.predictor import Predictor
from tests.models.hf_text_builders import (
    INPUTS,
    SENTIMENT_LABELS,
    export_cli,
    ner_records,
    save_model,
    sentiment_records,
    write_jsonl,
)

KIOSK_VARIANTS = [v.name for v in load_recipe("cpu-kiosk").variants]


def _gated(manifest, recipe_variants):
    gate = manifest.validation["gate"]
    assert gate["eval"]["split"] == "test" and gate["eval"]["records"] == 60
    reports = {r["variant"]: r for r in gate["variants"]}
    assert set(reports) == set(recipe_variants)
    for name, report in reports.items():
        if report["outcome"].startswith(("not applicable: CPU lacks BF16", "not built: openvino not installed")):
            continue  # an OpenVINO variant this machine cannot build, recorded as such
        assert report["attempts"] and "gate" in report["attempts"][0], report
        shipped = [a for a in manifest.artifacts if a.name == name]
        if shipped:
            assert shipped[0].validation["gate"]["passed"]
    return gate


def test_sentiment_gate_uses_the_held_out_split(tmp_path):
    folder = save_model(tmp_path / "sentiment", "bert", token_level=False)
    data = write_jsonl(tmp_path / "sentiment.jsonl", sentiment_records())
    export_cli(folder, tmp_path / "bundle", "--target", "cpu-kiosk", "--eval-data", str(data))
    manifest = verify_bundle(tmp_path / "bundle")
    gate = _gated(manifest, KIOSK_VARIANTS)
    assert gate["metric"] == "accuracy" and 0.0 <= gate["fp32"]["accuracy"] <= 1.0
    assert manifest.validation["parity"]["sources"]["real_records"]["count"] > 0


def test_ner_gate_compares_tags_per_word(tmp_path):
    folder = save_model(tmp_path / "ner", "bert", token_level=True)
    data = write_jsonl(tmp_path / "ner.jsonl", ner_records())
    export_cli(folder, tmp_path / "bundle", "--target", "cpu-kiosk", "--eval-data", str(data))
    manifest = verify_bundle(tmp_path / "bundle")
    gate = _gated(manifest, KIOSK_VARIANTS)
    assert gate["fp32"]["accuracy"] > 0.0 and gate["fp32"]["macro_f1"] >= 0.0
    with Predictor.load(tmp_path / "bundle", device="cpu") as predictor:
        assert isinstance(predictor.predict(text=INPUTS[3]).entities, list)


def _minilm_sentiment(folder, minilm_dir, records):
    """The tutorials' sentiment model: real MiniLM encoder, its 2-label head fitted on the train split."""
    tf.set_seed(0)
    model = tf.BertForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=2, id2label=dict(enumerate(SENTIMENT_LABELS)),
        label2id={label: i for i, label in enumerate(SENTIMENT_LABELS)}).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir)
    train = [r for r in records if r["split"] == "train"]
    enc = tokenizer([r["text"] for r in train], padding=True, return_tensors="pt")
    target = torch.tensor([SENTIMENT_LABELS.index(r["label"]) for r in train])
    with torch.no_grad():
        pooled = model.bert(**enc).pooler_output
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=0.05)
    for _ in range(200):  # only the head: a few seconds
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model.classifier(pooled), target).backward()
        optimizer.step()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["cpu-kiosk", "desktop-gpu", "jetson-orin-nano", "jetson-orin-agx"])
def test_reference_recipes_on_minilm_sentiment(tmp_path, minilm_dir, recipe):
    from edgemm.recipes import load_recipe

    records = sentiment_records()
    folder = _minilm_sentiment(tmp_path / "minilm-sentiment", minilm_dir, records)
    data = write_jsonl(tmp_path / "sentiment.jsonl", records)
    export_cli(folder, tmp_path / "bundle", "--target", recipe, "--eval-data", str(data))
    manifest = verify_bundle(tmp_path / "bundle")
    gate = _gated(manifest, [v.name for v in load_recipe(recipe).variants])
    assert gate["fp32"]["accuracy"] >= 0.8  # the fitted head; every variant is judged against it
    if load_recipe(recipe).tensorrt.build:
        assert "skipped" in manifest.validation["tensorrt"] or "built" in manifest.validation["tensorrt"]
