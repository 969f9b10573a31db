"""A token-classification (NER) bundle on a real tritonserver: one Python model runs the Predictor,
because the entities are words and offsets in the request's text, which an ensemble never sees."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgemm.errors import UsageError
from edgemm.triton import RepositoryOptions, write_repository
from edgemm.triton.pbtxt import validate_config
from tests.models.hf_text_builders import INPUTS, save_model
from tests.triton.server import TritonProcess, find_server

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def ner_bundle(tmp_path_factory):
    from edgemm.export.pipeline import export_bundle

    folder = tmp_path_factory.mktemp("ner")
    return export_bundle(save_model(folder / "tiny-ner", "bert", token_level=True), folder / "ner").bundle


def _request(texts: list[str]) -> list:
    text = httpclient.InferInput("TEXT", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=object))
    return [text]


def test_repository_has_one_unbatched_python_model(ner_bundle, tmp_path):
    report = write_repository(ner_bundle, tmp_path / "repo", RepositoryOptions(device="cpu"))
    assert list(report.models) == [report.ensemble] and report.python_ensemble is None
    config = validate_config((tmp_path / "repo" / report.ensemble / "config.pbtxt").read_text(), name=report.ensemble)
    assert config.backend == "python" and config.max_batch_size == 0
    assert [(t.name, list(t.dims)) for t in config.input] == [("TEXT", [1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("PREDICTION", [1])]
    with pytest.raises(UsageError, match="not batched"):
        write_repository(ner_bundle, tmp_path / "other", RepositoryOptions(max_batch_size=4))
    assert not (tmp_path / "other").exists()


def test_entities_on_tritonserver_match_the_predictor(ner_bundle, tmp_path):
    from edgemm.runtime.predictor import Predictor

    paths, reason = find_server()
    if paths is None:
        pytest.skip(f"cannot run tritonserver here: {reason}")
    report = write_repository(ner_bundle, tmp_path / "repo", RepositoryOptions(device="cpu"))
    texts = list(INPUTS)
    with Predictor.load(ner_bundle, device="cpu") as predictor:
        expected = [predictor.predict(text=t).entities for t in texts]
    assert sum(len(e) for e in expected) > 0
    server = TritonProcess(paths, report.repository, tmp_path / "server", [report.ensemble])
    try:
        server.wait_ready()

        def ask(index: int) -> list[dict]:
            client = httpclient.InferenceServerClient(server.url)  # the gevent client is one thread's
            result = client.infer(report.ensemble, _request([texts[index % len(texts)]]))
            return json.loads(result.as_numpy("PREDICTION")[0])["entities"]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(2 * len(texts))))
        for index, entities in enumerate(answers):
            want = expected[index % len(texts)]
            assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in entities] == \
                   [(e["entity_group"], e["start"], e["end"], e["word"]) for e in want]
            assert [e["score"] for e in entities] == pytest.approx([e["score"] for e in want], abs=1e-5)

        client = httpclient.InferenceServerClient(server.url)
        with pytest.raises(InferenceServerException, match="E_INVALID_INPUT"):
            client.infer(report.ensemble, _request([""]))
        assert [e["start"] for e in ask(0)] == [e["start"] for e in expected[0]]  # still serving
    finally:
        server.stop()
