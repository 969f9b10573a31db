"""A bundle from a Hugging Face directory goes everywhere a FusionModel's does: the kiosk server,
the benchmark with PyTorch and Optimum peers run as a transformers user runs them, and Triton."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers as tf
from click.testing import CliRunner

from edgemm.cli import cli
from edgemm.triton import RepositoryOptions, write_repository
from edgemm.triton.pbtxt import validate_config
from tests.serve.conftest import start_server, stop_server

LABELS = ["negative", "positive"]
TEXTS = ["I loved this lesson", "This was boring and too long", "我很喜欢这个故事", "the answer is seven"]


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory, minilm_dir) -> Path:
    """A small BertForSequenceClassification with the real MiniLM tokenizer, as save_pretrained writes it."""
    folder = tmp_path_factory.mktemp("hf") / "sentiment"
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_dir, local_files_only=True)
    config = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37, max_position_embeddings=64, num_labels=2,
                           id2label=dict(enumerate(LABELS)), label2id={k: i for i, k in enumerate(LABELS)})
    tf.set_seed(0)
    tf.BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sentiment_bundle(sentiment_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "sentiment.bundle"
    result = CliRunner().invoke(cli, ["export", str(sentiment_dir), "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_the_kiosk_server_answers_text_only_requests(sentiment_bundle, sentiment_dir, tmp_path):
    reference = tf.pipeline("text-classification", model=str(sentiment_dir), top_k=None)
    srv = start_server(tmp_path, str(sentiment_bundle), "--device", "cpu")
    try:
        model = srv.get("/v1/model").json()
        assert model["labels"] == LABELS and list(model["modalities"]) == ["text"]
        for text in TEXTS:
            res = srv.request("POST", "/v1/predict", json.dumps({"text": text}).encode(),
                              {"Content-Type": "application/json"})
            assert res.status == 200, res.body
            answer = res.json()
            expected = {r["label"]: r["score"] for r in reference([text])[0]}
            assert answer["label"] == max(expected, key=expected.get)
            for label, score in answer["scores"].items():
                assert abs(score - expected[label]) < 1e-4
        res = srv.request("POST", "/v1/predict", b"{}", {"Content-Type": "application/json"})
        assert (res.status, res.code) == (422, "missing_modality")
        res = srv.request("POST", "/v1/predict", json.dumps({"text": "x", "image": "AAAA"}).encode(),
                          {"Content-Type": "application/json"})
        assert (res.status, res.code) == (400, "invalid_input")  # a modality this bundle does not take
    finally:
        stop_server(srv)


def test_bench_runs_the_transformers_model_and_optimum_as_peers(sentiment_bundle, tmp_path):
    result = CliRunner().invoke(cli, ["bench", str(sentiment_bundle), "--iterations", "4", "--rounds", "2",
                                      "--warmup", "1", "--peers", "torch-eager,optimum", "--no-cold-start", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    names = {c["name"] for c in doc["contenders"]}
    assert {"torch-eager", "optimum"} <= names and any(n.startswith("edgemm:") for n in names)
    accuracy = {r["contender"]: r for r in doc["accuracy"]["rows"]}
    assert accuracy["torch-eager"]["top1_agreement"] == 1.0 and accuracy["torch-eager"]["max_abs_diff"] < 1e-4
    assert {r["peer"] for r in doc["ratios"]["speedup"]} == {"torch-eager", "optimum"}


def test_a_triton_repository_is_written_for_it(sentiment_bundle, tmp_path):
    repo = tmp_path / "repo"
    write_repository(sentiment_bundle, repo, RepositoryOptions())
    configs = sorted(repo.glob("*/config.pbtxt"))
    assert configs
    for config in configs:
        validate_config(config.read_text(), name=config.parent.name)
