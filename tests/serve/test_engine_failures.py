"""Engine failures through the real server: a poisoned CUDA context exits 70, others answer 500 and serve on.

The server is the real ``edgemm serve`` process, started through :mod:`tests.serve.fault_launcher`,
whose ONNX Runtime backend reports ``cuda`` and raises an engine error (or a plain bug) on demand;
everything from ``Backend.run`` up is the shipped code.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgemm.serve.server import EXIT_GPU_POISONED
from tests.serve.conftest import Response, Server, png_bytes, start_server, stop_server
from tests.serve.fault_launcher import ENGINE_MESSAGE, FAULT_FILE_ENV

LAUNCHER = "tests.serve.fault_launcher"


def start_faulty_server(bundle: Path, tmp: Path, max_delay_ms: float = 2) -> tuple[Server, Path]:
    """A server over ``bundle`` whose backend fails as the returned file says (see the launcher)."""
    fault_file = tmp / "fault"
    server = start_server(tmp, str(bundle), "--device", "cpu", "--max-delay-ms", str(max_delay_ms),
                          launcher=LAUNCHER, env={FAULT_FILE_ENV: str(fault_file)})
    return server, fault_file


def predict(server: Server) -> Response:
    """One ordinary, valid request."""
    return server.request("POST", "/v1/predict?text=seven", png_bytes(), {"Content-Type": "image/png"})


def test_a_poisoned_cuda_context_answers_500_then_exits_70(serve_bundle, tmp_path):
    server, fault_file = start_faulty_server(serve_bundle, tmp_path)
    try:
        assert server.get("/v1/model").json()["device"] == "cuda"
        assert predict(server).status == 200
        fault_file.write_text("poison")
        res = predict(server)
        assert not fault_file.exists(), "the stand-in backend never ran"
        assert (res.status, res.code) == (500, "internal"), res.body
        assert res.headers["content-type"] == "application/json"
        assert server.proc.wait(timeout=30) == EXIT_GPU_POISONED
    finally:
        if server.proc.poll() is None:
            stop_server(server)
    log = server.log.read_text()
    assert "CUDA context is poisoned (RuntimeException)" in log
    assert f"exiting with status {EXIT_GPU_POISONED}" in log


def test_a_poisoning_while_a_failed_batch_is_retried_stops_every_later_model_call(serve_bundle, tmp_path):
    # Three requests share one model call, which fails as an ordinary engine error; retried one by
    # one, the first retry poisons the context. The other two must not run on it: had they run,
    # the stand-in (out of failures by then) would have answered them with 200.
    server, fault_file = start_faulty_server(serve_bundle, tmp_path, max_delay_ms=500)
    try:
        fault_file.write_text("engine poison")
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: predict(server), range(3)))
        assert not fault_file.exists(), "the stand-in backend never ran"
        assert [(res.status, res.code) for res in answers] == [(500, "internal")] * 3
        assert server.proc.wait(timeout=30) == EXIT_GPU_POISONED
    finally:
        if server.proc.poll() is None:
            stop_server(server)


@pytest.fixture(scope="module")
def faulty(serve_bundle, tmp_path_factory) -> Iterator[tuple[Server, Path]]:
    """One stand-in server shared by the tests that expect it to survive."""
    server, fault_file = start_faulty_server(serve_bundle, tmp_path_factory.mktemp("faulty"))
    yield server, fault_file
    stop_server(server)


def fail_once(server: Server, fault_file: Path, kind: str) -> tuple[Response, str]:
    """Make the next model call raise ``kind``; return the answer and what the server logged meanwhile."""
    logged_before = len(server.log.read_bytes())
    fault_file.write_text(kind)
    res = predict(server)
    assert not fault_file.exists(), "the stand-in backend never ran"
    return res, server.log.read_bytes()[logged_before:].decode()


def test_b_an_ordinary_engine_error_answers_500_and_the_server_keeps_serving(faulty):
    server, fault_file = faulty
    res, log = fail_once(server, fault_file, "engine")
    assert (res.status, res.code) == (500, "internal"), res.body
    assert ENGINE_MESSAGE in log and "Traceback" not in log
    assert server.proc.poll() is None
    assert predict(server).status == 200
    assert server.get("/v1/health/ready").status == 200
    metrics = server.metrics()
    assert 'edgemm_errors_total{code="internal"}' in metrics and "edgemm_on_gpu 1" in metrics


def test_c_a_bug_answers_500_with_its_traceback_in_the_log_not_70(faulty):
    server, fault_file = faulty
    res, log = fail_once(server, fault_file, "bug")
    assert (res.status, res.code) == (500, "internal"), res.body
    assert "Traceback" in log and "TypeError: unsupported operand" in log
    assert "poisoned" not in log
    assert server.proc.poll() is None
    assert predict(server).status == 200
