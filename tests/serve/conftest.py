"""A real ``edgemm serve`` process on loopback, and a small HTTP client for it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.serve_load import rss_kib
from tests.conftest import REPO

# What the README's /metrics row promises, as Prometheus' text parser names the families.
METRIC_FAMILIES = {
    "edgemm_requests": "counter",  # responses by status
    "edgemm_errors": "counter",  # errors by code
    "edgemm_request_duration_seconds": "histogram",
    "edgemm_batch_size": "histogram",
    "edgemm_cancelled": "counter",
    "edgemm_reloads": "counter",
    "edgemm_queue_depth": "gauge",
    "edgemm_ready": "gauge",
    "edgemm_degraded": "gauge",
    "edgemm_on_gpu": "gauge",
    "edgemm_model_info": "gauge",
}


@pytest.fixture(scope="session")
def serve_bundle(work, minilm_dir) -> Path:
    """A tiny text + image + optional audio bundle (random weights)."""
    from transformers import AutoTokenizer

    from edgemm.export.pipeline import export_bundle
    from tests.factories import build_fusion

    ckpt = build_fusion(work / "serve-ckpt", AutoTokenizer.from_pretrained(minilm_dir), audio="logmel-cnn")
    return export_bundle(ckpt, work / "serve.bundle").bundle


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        try:
            return self.json().get("error", {}).get("code")
        except ValueError:
            return None


@dataclass
class Server:
    """A running server process and how to talk to it."""

    proc: subprocess.Popen
    port: int
    log: Path

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 30.0) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            res = conn.getresponse()
            return Response(res.status, {k.lower(): v for k, v in res.getheaders()}, res.read())
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def metrics(self) -> str:
        return self.get("/metrics").body.decode()

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)


def start_server(tmp: Path, *args: str, wait_ready: bool = True, timeout: float = 90.0,
                 launcher: str = "edgemm", env: dict[str, str] | None = None) -> Server:
    """Start ``edgemm serve ARGS --port 0`` and wait until it is ready (or only listening).

    Args:
        launcher: The module run with ``python -m`` (a test launcher that patches, then runs the CLI).
        env: Extra environment variables for the server process.
    """
    port_file, log = tmp / f"port-{time.monotonic_ns()}", tmp / f"serve-{time.monotonic_ns()}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", launcher, "-v", "serve", *args, "--port", "0",
                                 "--port-file", str(port_file)], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.monotonic() + timeout
    server = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        if server is None and port_file.exists():
            server = Server(proc, int(port_file.read_text()), log)
        if server is not None:
            if not wait_ready:
                return server
            try:
                if server.get("/v1/health/ready", timeout=5).status == 200:
                    return server
            except OSError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server not ready in {timeout} s:\n{log.read_text()}")


def stop_server(server: Server) -> int:
    server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        return server.proc.wait()


@pytest.fixture(scope="module")
def server(serve_bundle, tmp_path_factory) -> Iterator[Server]:
    """One server over the tiny bundle, shared by a test module."""
    srv = start_server(tmp_path_factory.mktemp("serve"), str(serve_bundle), "--device", "cpu",
                       "--max-delay-ms", "10", "--max-audio-seconds", "4")
    yield srv
    stop_server(srv)


def png_bytes(width: int = 64, height: int = 48, color=(200, 30, 30), fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    return buf.getvalue()


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    import numpy as np

    from edgemm.runtime.preprocess.audio import encode_wav

    t = np.arange(int(seconds * rate)) / rate
    return encode_wav((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
