"""The kiosk API over real HTTP on loopback: endpoints, equality with Predictor, guards, batching."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.serve_load import multipart
from edgemm.runtime.predictor import Predictor
from tests.serve.conftest import METRIC_FAMILIES, png_bytes, start_server, stop_server, wav_bytes


def test_health_model_and_metrics(server, serve_bundle):
    assert server.get("/v1/health/live").json() == {"status": "alive"}
    ready = server.get("/v1/health/ready").json()
    assert ready["ready"] is True and ready["device"] == "cpu" and ready["policy"] == "allow_cpu"
    model = server.get("/v1/model").json()
    assert model["labels"] == ["zero", "one", "two"]
    assert model["modalities"] == {"text": {"required": True}, "image": {"required": True},
                                   "audio": {"required": False}}
    text = server.metrics()
    for name in ("edgemm_requests_total", "edgemm_request_duration_seconds_bucket", "edgemm_queue_depth",
                 "edgemm_ready 1", "edgemm_degraded 0", "edgemm_on_gpu 0", 'device="cpu"'):
        assert name in text, name
    assert {f.name: f.type for f in text_string_to_metric_families(text)} == METRIC_FAMILIES


def test_predictions_equal_the_predictor(server, serve_bundle):
    image, audio = png_bytes(80, 60, (20, 160, 90)), wav_bytes(0.7)
    with Predictor.load(serve_bundle, device="cpu") as predictor:
        expected = predictor.predict(text="seven", image=image, audio=audio)
        expected_no_audio = predictor.predict(text="vier", image=image)
    body, headers = multipart({"text": (None, b"seven", "text/plain; charset=utf-8"),
                               "image": ("a.png", image, "image/png"), "audio": ("a.wav", audio, "audio/wav")})
    got = server.request("POST", "/v1/predict", body, headers).json()
    assert got["label"] == expected.label
    assert got["scores"] == pytest.approx(expected.scores, abs=1e-5)
    as_json = json.dumps({"text": "seven", "image": base64.b64encode(image).decode(),
                          "audio": base64.b64encode(audio).decode()}).encode()
    got_json = server.request("POST", "/v1/predict", as_json, {"Content-Type": "application/json"}).json()
    assert got_json["scores"] == pytest.approx(expected.scores, abs=1e-5)
    raw = server.request("POST", "/v1/predict?text=vier", image, {"Content-Type": "image/png"}).json()
    assert raw["scores"] == pytest.approx(expected_no_audio.scores, abs=1e-5)
    assert raw["model"] == {"name": "tiny-concat-vit-logmel-cnn", "artifact": "fp32", "device": "cpu",
                            "batch": raw["model"]["batch"]}


def test_concurrent_requests_are_micro_batched_and_answered_correctly(server, serve_bundle):
    image = png_bytes()
    texts = [f"answer {i} 🙂" for i in range(48)]
    with Predictor.load(serve_bundle, device="cpu") as predictor:
        expected = predictor.predict(text=texts, image=[image] * len(texts))

    def ask(text: str):
        body, headers = multipart({"text": (None, text.encode(), "text/plain"), "image": ("x.png", image, "image/png")})
        return server.request("POST", "/v1/predict", body, headers)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, texts))
    assert all(r.status == 200 for r in results)
    for res, exp in zip(results, expected):
        assert res.json()["scores"] == pytest.approx(exp.scores, abs=1e-4)
    assert max(r.json()["model"]["batch"] for r in results) > 1, "no request shared a batch"
    buckets = {float(le): float(n) for le, n in
               re.findall(r'edgemm_batch_size_bucket\{le="([^"]+)"\} (\S+)', server.metrics())}
    assert buckets[float("inf")] > buckets[1.0]


def test_kiosk_page_and_assets_are_local(server):
    page = server.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    html = page.body.decode()
    assert "http://" not in html and "https://" not in html  # no CDN
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        res = server.get(asset)
        assert res.status == 200 and b"https://" not in res.body
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert server.get("/static/../../etc/passwd").status == 404


@pytest.mark.parametrize(("host", "status"), [("evil.example", 421), ("127.0.0.1.nip.io", 421),
                                              ("localhost:1234", 200), ("[::1]:80", 200)])
def test_host_allow_list(server, host, status):
    res = server.get("/v1/health/live", headers={"Host": host})
    assert res.status == status
    if status != 200:
        assert res.code == "host_not_allowed"


def test_cross_origin_post_is_refused(server):
    body, headers = multipart({"text": (None, b"x", "text/plain"), "image": ("x.png", png_bytes(), "image/png")})
    res = server.request("POST", "/v1/predict", body, {**headers, "Origin": "http://evil.example"})
    assert (res.status, res.code) == (403, "origin_not_allowed")
    same = server.request("POST", "/v1/predict", body, {**headers, "Origin": f"http://127.0.0.1:{server.port}"})
    assert same.status == 200


def test_unknown_endpoints_and_methods(server):
    assert (server.get("/v1/models/load").status, server.get("/v1/models/load").code) == (404, "not_found")
    res = server.request("GET", "/v1/predict")
    assert (res.status, res.code) == (405, "method_not_allowed")
    assert server.request("DELETE", "/v1/model").status == 405


def test_payloads_never_reach_the_log(server):
    secret = "my-secret-answer-42"
    server.request("POST", f"/v1/predict?text={secret}", png_bytes(), {"Content-Type": "image/png"})
    server.request("POST", "/v1/predict", secret.encode(), {"Content-Type": "text/plain"})
    assert secret not in server.log.read_text()


def test_full_queue_answers_503_with_retry_after(serve_bundle, tmp_path):
    srv = start_server(tmp_path, str(serve_bundle), "--device", "cpu", "--max-queue", "1", "--max-batch", "1",
                       "--max-delay-ms", "0")
    try:
        body, headers = multipart({"text": (None, b"x", "text/plain"),
                                   "image": ("x.png", png_bytes(512, 512), "image/png")})
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(lambda _: srv.request("POST", "/v1/predict", body, headers), range(48)))
        codes = {r.status for r in results}
        assert codes <= {200, 503} and 503 in codes and 200 in codes
        busy = next(r for r in results if r.status == 503)
        assert busy.code == "overloaded" and busy.headers["retry-after"] == "1"
        assert srv.get("/v1/health/ready").status == 200
    finally:
        stop_server(srv)


def test_client_disconnect_cancels_queued_work(serve_bundle, tmp_path):
    # A long batching window keeps the requests queued while their clients go away.
    srv = start_server(tmp_path, str(serve_bundle), "--device", "cpu", "--max-batch", "64", "--max-delay-ms", "2500")
    try:
        body, headers = multipart({"text": (None, b"x", "text/plain"), "image": ("x.png", png_bytes(), "image/png")})
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body

        def hit_and_run() -> None:
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.sendall(request)
                threading.Event().wait(0.3)  # queued behind the others, then gone

        threads = [threading.Thread(target=hit_and_run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        threading.Event().wait(3)
        metrics = srv.metrics()
        assert int(re.search(r"edgemm_cancelled_total (\d+)", metrics).group(1)) == 4
        assert 'edgemm_batch_size_count 0' in metrics  # the model never ran for them
        assert srv.get("/v1/health/ready").status == 200
    finally:
        stop_server(srv)


def test_require_gpu_policy_without_a_gpu_is_live_but_never_ready(serve_bundle, tmp_path):
    srv = start_server(tmp_path, str(serve_bundle), "--device-policy", "require_gpu", wait_ready=False)
    try:
        for _ in range(100):
            ready = srv.get("/v1/health/ready")
            if "starting" not in json.dumps(ready.json()):
                break
            threading.Event().wait(0.1)
        assert srv.get("/v1/health/live").status == 200
        assert ready.status == 503 and ready.json()["error"]["code"] == "not_ready"
        assert "GPU" in ready.json()["error"]["message"] or "cuda" in ready.json()["error"]["message"].lower()
        res = srv.request("POST", "/v1/predict?text=x", png_bytes(), {"Content-Type": "image/png"})
        assert (res.status, res.code) == (503, "not_ready")
        assert "edgemm_ready 0" in srv.metrics()
    finally:
        stop_server(srv)


def test_serve_refuses_a_public_bind_without_expose(serve_bundle):
    from click.testing import CliRunner

    from edgemm.cli import cli

    result = CliRunner().invoke(cli, ["serve", str(serve_bundle), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--expose" in result.output


def test_systemd_unit_restarts_and_caps_memory(tmp_path):
    from click.testing import CliRunner

    from edgemm.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--store", str(tmp_path), "--systemd-unit", "--memory-max", "2G"])
    assert result.exit_code == 0, result.output
    unit = result.output
    assert "Restart=always" in unit and "MemoryMax=2G" in unit and "MemoryHigh=1638M" in unit
    assert f"--store {tmp_path.resolve()}" in unit and "--host 127.0.0.1" in unit


def test_gpu_poisoning_errors_are_recognised():
    from edgemm.serve.host import poisons_gpu

    err = RuntimeError("CUDA failure 700: an illegal memory access was encountered")
    assert poisons_gpu(err, "cuda") and poisons_gpu(err, "tensorrt") and not poisons_gpu(err, "cpu")
    assert not poisons_gpu(RuntimeError("Invalid input shape"), "cuda")
