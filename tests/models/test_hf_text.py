"""Fine-tuned transformers text classifiers: ``edgemm export DIR`` with no flags, then the
torch-free bundle answers as ``transformers.pipeline("text-classification")`` does."""

from __future__ import annotations

import json

import pytest
import transformers as tf

from edgemm.bundle.verify import verify_bundle
from edgemm.runtime.predictor import Predictor
from tests.conftest import run_edge
from tests.models.hf_text_builders import (
    ARCHITECTURES,
    INPUTS,
    SENTIMENT_LABELS,
    export_cli,
    save_model,
)

# Exported in the default run; the rest (same code path, other tokenizers) with -m slow.
FAST = ("bert", "bert-chinese", "roberta")


def _pipeline_scores(folder, texts):
    classify = tf.pipeline("text-classification", model=str(folder), tokenizer=str(folder), device="cpu")
    return [{d["label"]: d["score"] for d in row} for row in classify(texts, top_k=None)]


def _check_against_pipeline(folder, bundle, texts=INPUTS):
    expected = _pipeline_scores(folder, texts)
    with Predictor.load(bundle, device="cpu") as predictor:
        got = predictor.predict(text=list(texts))
    assert len(got) == len(texts) >= 10
    for text, want, pred in zip(texts, expected, got):
        assert pred.label == max(want, key=want.get), text
        assert set(pred.scores) == set(want), text
        for label, score in want.items():
            assert abs(pred.scores[label] - score) < 1e-4, (text, label, pred.scores[label], score)


@pytest.mark.parametrize("kind", [k if k in FAST else pytest.param(k, marks=pytest.mark.slow) for k in ARCHITECTURES])
def test_sequence_classifier_matches_pipeline(tmp_path, kind):
    folder = save_model(tmp_path / f"{kind}-sentiment", kind, token_level=False)
    report = export_cli(folder, tmp_path / "bundle")
    manifest = verify_bundle(tmp_path / "bundle")
    assert manifest.task == "classification" and manifest.labels == SENTIMENT_LABELS
    assert manifest.source["family"] == "hf-text-classification" and report["parity"]["passed"]
    assert manifest.postprocessing["type"] == "softmax"
    takes_types = kind in ("bert", "bert-chinese", "electra")  # DeBERTa-v3-style: type_vocab_size 0
    assert ("token_type_ids" in [t.name for t in manifest.inputs]) == takes_types
    _check_against_pipeline(folder, tmp_path / "bundle")


def test_multilabel_head_gets_a_sigmoid_per_label(tmp_path):
    labels = ["toxic", "insult", "question"]
    folder = save_model(tmp_path / "multi", "bert", token_level=False, labels=labels,
                        problem_type="multi_label_classification")
    export_cli(folder, tmp_path / "bundle")
    manifest = verify_bundle(tmp_path / "bundle")
    assert manifest.task == "multilabel" and manifest.postprocessing["type"] == "sigmoid"
    _check_against_pipeline(folder, tmp_path / "bundle")


def test_predict_cli_is_torch_free(tmp_path):
    folder = save_model(tmp_path / "zh", "bert-chinese", token_level=False)
    export_cli(folder, tmp_path / "bundle")
    code, out, err, guard = run_edge("predict", str(tmp_path / "bundle"), "--text", INPUTS[6], "--text", INPUTS[0], "--json")
    assert code == 0, err
    assert guard == {"modules": [], "sockets": 0}
    predictions = json.loads(out)["predictions"]
    expected = _pipeline_scores(folder, [INPUTS[6], INPUTS[0]])
    for pred, want in zip(predictions, expected):
        assert pred["label"] == max(want, key=want.get) and pred["entities"] == []
        assert all(abs(pred["scores"][k] - v) < 1e-4 for k, v in want.items())


def test_real_minilm_sentiment_model_matches_pipeline(tmp_path, minilm_dir):
    """The tutorials' sentiment model: the real all-MiniLM-L6-v2 encoder, a seeded 2-label head."""
    folder = tmp_path / "minilm-sentiment"
    tf.set_seed(0)
    model = tf.BertForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=2, id2label=dict(enumerate(SENTIMENT_LABELS)),
        label2id={label: i for i, label in enumerate(SENTIMENT_LABELS)})
    model.save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    export_cli(folder, tmp_path / "bundle")
    manifest = verify_bundle(tmp_path / "bundle")
    assert manifest.inputs[0].profile["seq"][2] == 512  # MiniLM's model_max_length caps the tokens
    _check_against_pipeline(folder, tmp_path / "bundle")
