"""A real tritonserver (from the nvidia-pytriton wheel) serving a generated repository.

The server runs the Python-backend ensemble (edgemm preprocessing → ONNX Runtime inside the
Python backend → edgemm postprocessing). The wheel ships no onnxruntime backend, so the
``onnxruntime``-backend models are validated by protobuf only (test_repository.py).
"""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

NAME = "tiny-concat-vit"
ENSEMBLE = f"{NAME}_python"
MODEL = f"{NAME}_fp32_python"
ATOL = 1e-5


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def golden_requests(tiny_bundle: Path) -> list[tuple[str, bytes]]:
    """The golden set's raw examples as (text, PNG bytes): what a client sends."""
    from edgemm.bundle.golden import GoldenSet

    raw = GoldenSet.load(tiny_bundle / "golden.npz").raw_requests()
    return [(text, _png(image)) for text, image in zip(raw["text"], raw["image"])]


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path):
    from edgemm.runtime.predictor import Predictor

    with Predictor.load(tiny_bundle, device="cpu") as p:
        yield p


def _raw_inputs(texts: list[str], images: list[bytes]) -> list[httpclient.InferInput]:
    text = httpclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=object))
    image = httpclient.InferInput("IMAGE", [len(images), 1], "BYTES")
    image.set_data_from_numpy(np.array([[b] for b in images], dtype=object))
    return [text, image]


def test_health_and_metadata(triton_server):
    client = httpclient.InferenceServerClient(triton_server.url)
    assert client.is_server_live() and client.is_server_ready()
    for model in (ENSEMBLE, MODEL, f"{NAME}_preprocess", f"{NAME}_postprocess"):
        assert client.is_model_ready(model), model
    assert not client.is_model_ready(f"{NAME}_fp32")  # onnxruntime backend: not loaded here

    meta = client.get_model_metadata(ENSEMBLE)
    assert meta["platform"] == "ensemble" and meta["versions"] == ["1"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("TEXT", "BYTES", [-1, 1]), ("IMAGE", "BYTES", [-1, 1])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("PREDICTION", "BYTES", [-1, 1]), ("LABEL", "BYTES", [-1, 1]), ("SCORE", "FP32", [-1, 1]),
        ("logits", "FP32", [-1, 3])]
    model = client.get_model_metadata(MODEL)
    assert model["platform"] == "python"
    assert [(i["name"], i["datatype"], i["shape"]) for i in model["inputs"]] == [
        ("input_ids", "INT64", [-1, -1]), ("attention_mask", "INT64", [-1, -1]), ("pixel_values", "FP32", [-1, 3, 32, 32])]
    config = client.get_model_config(MODEL)
    assert config["max_batch_size"] == 64 and config["dynamic_batching"]["preferred_batch_size"] == [4, 8, 16]
    index = {m["name"]: m.get("state") for m in client.get_model_repository_index()}
    assert index[ENSEMBLE] == "READY" and index[f"{NAME}_fp32"] != "READY"


def test_ensemble_matches_edgemm_predict(triton_server, tiny_bundle: Path, golden_requests, predictor, tmp_path):
    """Raw bytes in, the same predictions as `edgemm predict --json` and Predictor.predict out."""
    from edgemm.cli import cli

    client = httpclient.InferenceServerClient(triton_server.url)
    runner = CliRunner()
    for i, (text, image) in enumerate(golden_requests):
        result = client.infer(ENSEMBLE, _raw_inputs([text], [image]))
        served = json.loads(result.as_numpy("PREDICTION")[0, 0])
        image_path = tmp_path / f"{i}.png"
        image_path.write_bytes(image)
        cli_run = runner.invoke(cli, ["predict", str(tiny_bundle), "--text", text, "--image", str(image_path),
                                      "--device", "cpu", "--json"])
        assert cli_run.exit_code == 0, cli_run.output
        expected = json.loads(cli_run.stdout)["predictions"][0]
        assert served["label"] == expected["label"] == result.as_numpy("LABEL")[0, 0].decode()
        assert served["score"] == pytest.approx(expected["score"], abs=ATOL)
        assert result.as_numpy("SCORE")[0, 0] == pytest.approx(expected["score"], abs=ATOL)
        assert served["scores"].keys() == expected["scores"].keys()
        for label, score in expected["scores"].items():
            assert served["scores"][label] == pytest.approx(score, abs=ATOL)
        reference = predictor.predict(text=text, image=image)
        np.testing.assert_allclose(result.as_numpy("logits")[0], reference.outputs["logits"], atol=ATOL)

    # One request carrying the whole golden set as a batch.
    texts, images = zip(*golden_requests)
    batch = client.infer(ENSEMBLE, _raw_inputs(list(texts), list(images)))
    references = predictor.predict(text=list(texts), image=list(images))
    assert [json.loads(d)["label"] for d in batch.as_numpy("PREDICTION")[:, 0]] == [r.label for r in references]
    np.testing.assert_allclose(batch.as_numpy("logits"), [r.outputs["logits"] for r in references], atol=ATOL)


def test_python_backend_model_matches_predictor(triton_server, golden_requests, predictor):
    """The Python-backend model variant on preprocessed feeds equals the Predictor's backend."""
    client = httpclient.InferenceServerClient(triton_server.url)
    texts, images = zip(*golden_requests)
    feed = predictor.preprocessor({"text": list(texts), "image": list(images)})
    inputs = []
    for name, array in feed.items():
        tensor = httpclient.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(MODEL, inputs)
    np.testing.assert_allclose(result.as_numpy("logits"), predictor.run(feed)["logits"], atol=ATOL)


def test_bad_input_is_a_clear_per_request_error(triton_server, golden_requests):
    client = httpclient.InferenceServerClient(triton_server.url)
    text, _ = golden_requests[0]
    with pytest.raises(InferenceServerException, match="E_UNSUPPORTED_MEDIA"):
        client.infer(ENSEMBLE, _raw_inputs([text], [b"%PDF-1.4 not an image"]))
    with pytest.raises(InferenceServerException, match=r"E_MISSING_MODALITY|TEXT"):
        client.infer(ENSEMBLE, _raw_inputs([text], [b""])[:1])
    assert client.is_server_ready()  # the server and its models keep serving


def _stats(client, model: str) -> dict:
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return {
        "inference_count": int(stats["inference_count"]),
        "execution_count": int(stats["execution_count"]),
        "success": int(stats["inference_stats"]["success"]["count"]),
        "fail": int(stats["inference_stats"]["fail"]["count"]),
        "batches": {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])},
    }


def test_concurrent_load_is_dynamically_batched(triton_server, golden_requests, predictor):
    """500 requests from 16 threads: no failures, and the model ran batches larger than one."""
    requests, concurrency = 500, 16
    admin = httpclient.InferenceServerClient(triton_server.url)
    before = {m: _stats(admin, m) for m in (ENSEMBLE, MODEL)}
    expected = [predictor.predict(text=t, image=i).label for t, i in golden_requests]
    local = threading.local()
    failures: list[str] = []

    def one(k: int) -> bool:
        if not hasattr(local, "client"):  # tritonclient.http clients are not shared across threads
            local.client = httpclient.InferenceServerClient(triton_server.url, connection_timeout=30,
                                                            network_timeout=60)
        text, image = golden_requests[k % len(golden_requests)]
        try:
            result = local.client.infer(ENSEMBLE, _raw_inputs([text], [image]))
        except InferenceServerException as exc:
            failures.append(str(exc))
            return False
        return result.as_numpy("LABEL")[0, 0].decode() == expected[k % len(golden_requests)]

    with ThreadPoolExecutor(concurrency) as pool:
        correct = list(pool.map(one, range(requests)))
    after = {m: _stats(admin, m) for m in (ENSEMBLE, MODEL)}
    model = {k: after[MODEL][k] - before[MODEL][k] for k in ("inference_count", "execution_count", "success", "fail")}
    batches = {size: count - before[MODEL]["batches"].get(size, 0) for size, count in after[MODEL]["batches"].items()}
    print(f"\n{requests} requests, concurrency {concurrency}: model {model}; "
          f"batch sizes {dict(sorted((s, c) for s, c in batches.items() if c))}")
    assert failures == [] and all(correct)
    assert after[ENSEMBLE]["success"] - before[ENSEMBLE]["success"] == requests
    assert after[ENSEMBLE]["fail"] == before[ENSEMBLE]["fail"]
    assert model["inference_count"] == requests and model["fail"] == 0
    # Dynamic batching at work: fewer model executions than requests, some batches > 1.
    assert model["execution_count"] < model["inference_count"]
    assert any(size > 1 and count > 0 for size, count in batches.items())
    # Every request ran in exactly one of those executions.
    assert sum(size * count for size, count in batches.items()) == requests
    assert sum(batches.values()) == model["execution_count"]
