"""Fine-tuned transformers NER models: ``edgemm export DIR`` with no flags, then the torch-free
bundle gives the entities ``transformers.pipeline("token-classification",
aggregation_strategy="simple")`` gives: same groups, spans and words, scores within 1e-4."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import transformers as tf

from edgemm.bundle.verify import verify_bundle
from edgemm.runtime.predictor import Predictor
from edgemm.runtime.semantics import semantic_problems
from tests.conftest import run_edge
from tests.models.hf_text_builders import ARCHITECTURES, INPUTS, NER_LABELS, export_cli, save_model
from tests.serve.conftest import start_server, stop_server

FAST = ("bert-chinese", "roberta", "xlm-roberta")


def _pipeline_entities(folder, texts):
    tagger = tf.pipeline("token-classification", model=str(folder), tokenizer=str(folder),
                         aggregation_strategy="simple", device="cpu")
    return [tagger(text) for text in texts]


def _check_against_pipeline(folder, bundle, texts=INPUTS):
    expected = _pipeline_entities(folder, texts)
    with Predictor.load(bundle, device="cpu") as predictor:
        got = predictor.predict(text=list(texts))  # one padded batch: padding must not move a span
    assert len(got) == len(texts) >= 10
    for text, want, pred in zip(texts, expected, got):
        assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in pred.entities] == \
               [(e["entity_group"], e["start"], e["end"], e["word"]) for e in want], text
        for mine, theirs in zip(pred.entities, want):
            assert abs(mine["score"] - float(theirs["score"])) < 1e-4, (text, mine, theirs)
            assert 0 <= mine["start"] <= mine["end"] <= len(text)  # offsets index the text the user sent
    assert sum(len(w) for w in expected) >= 10  # the comparison saw real groups, not empty lists


@pytest.mark.parametrize("kind", [k if k in FAST else pytest.param(k, marks=pytest.mark.slow) for k in ARCHITECTURES])
def test_ner_model_matches_pipeline(tmp_path, kind):
    folder = save_model(tmp_path / f"{kind}-ner", kind, token_level=True)
    report = export_cli(folder, tmp_path / "bundle")
    manifest = verify_bundle(tmp_path / "bundle")
    assert manifest.task == "token_classification" and manifest.labels == NER_LABELS
    assert manifest.postprocessing["type"] == "token_classification" and report["parity"]["passed"]
    assert manifest.outputs[0].shape == ["batch", "seq", len(NER_LABELS)]
    _check_against_pipeline(folder, tmp_path / "bundle")
    # A label list that does not fit the per-token logits is refused before any session exists.
    assert semantic_problems(manifest) == []
    assert any("labels" in p for p in semantic_problems(replace(manifest, labels=manifest.labels[:-1])))


def test_ner_predict_cli_is_torch_free(tmp_path):
    folder = save_model(tmp_path / "ner", "bert", token_level=True)
    export_cli(folder, tmp_path / "bundle")
    text = INPUTS[3]
    code, out, err, guard = run_edge("predict", str(tmp_path / "bundle"), "--text", text, "--json")
    assert code == 0, err
    assert guard == {"modules": [], "sockets": 0}
    entities = json.loads(out)["predictions"][0]["entities"]
    want = _pipeline_entities(folder, [text])[0]
    assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in entities] == \
           [(e["entity_group"], e["start"], e["end"], e["word"]) for e in want]
    code, out, err, _ = run_edge("predict", str(tmp_path / "bundle"), "--text", text)
    assert code == 0, err
    first = out.splitlines()[0]
    assert all(f"[{e['start']}:{e['end']}]" in first for e in want) or (not want and first == "(no entities)")
    # The kiosk server returns the same entities over HTTP.
    srv = start_server(tmp_path, str(tmp_path / "bundle"), "--device", "cpu")
    try:
        res = srv.request("POST", "/v1/predict", json.dumps({"text": text}).encode(), {"Content-Type": "application/json"})
        assert res.status == 200, res.body
        assert [(e["entity_group"], e["start"], e["end"]) for e in res.json()["entities"]] == \
               [(e["entity_group"], e["start"], e["end"]) for e in want]
    finally:
        stop_server(srv)


def test_real_minilm_ner_model_matches_pipeline(tmp_path, minilm_dir):
    """The real all-MiniLM-L6-v2 encoder with a seeded token-classification head."""
    folder = tmp_path / "minilm-ner"
    tf.set_seed(0)
    model = tf.BertForTokenClassification.from_pretrained(
        minilm_dir, num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)),
        label2id={label: i for i, label in enumerate(NER_LABELS)})
    model.save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    export_cli(folder, tmp_path / "bundle")
    assert verify_bundle(tmp_path / "bundle").task == "token_classification"
    _check_against_pipeline(folder, tmp_path / "bundle")
