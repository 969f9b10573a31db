"""A real ``edgemm serve`` process on loopback, and a small HTTP client for it."""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
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
    "edgemm_integrity_checks": "counter",  # re-verifications of the served files, by result
    "edgemm_integrity_failed": "gauge",
    "edgemm_decode_bytes_in_flight": "gauge",  # memory: what requests hold of the decode budget
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
                timeout: float = 30.0, source: str | None = None) -> Response:
        """One request; ``source`` binds the client to that address (127.0.0.2: a peer that is not local)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=(source, 0) if source else None)
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

    # -- connections: raw exchanges and error counts ------------------------------------------
    def error_count(self, code: str) -> float:
        """``edgemm_errors_total{code=...}`` now (0 before the first)."""
        found = re.search(rf'^edgemm_errors_total\{{code="{code}"\}} (\S+)$', self.metrics(), re.M)
        return float(found.group(1)) if found else 0.0

    def exchange(self, data: bytes, *, pieces: Sequence[bytes] = (), pause: float = 0.3,
                 source: str | None = None) -> Response | None:
        """Send raw ``data`` (then each of ``pieces`` after ``pause`` s) and read the answer (``None``: none)."""
        with raw_connection(self.port, data, source=source) as sock:
            try:
                for piece in pieces:
                    time.sleep(pause)
                    sock.sendall(piece)
            except OSError:
                pass  # answered and closed before the rest: fine
            return read_answer(sock)


def start_server(tmp: Path, *args: str, wait_ready: bool = True, timeout: float = 90.0,
                 launcher: str = "edgemm", env: dict[str, str] | None = None,
                 wrap: list[str] | None = None, nofile: int | None = None) -> Server:
    """Start ``edgemm serve ARGS --port 0`` and wait until it is ready (or only listening).

    Args:
        launcher: The module run with ``python -m`` (a test launcher that patches, then runs the CLI).
        env: Extra environment variables for the server process.
        wrap: A command that ends by exec'ing its arguments (the server keeps its pid), e.g. to
            run it in a mount namespace of its own.
        nofile: (connections) The server's open-file limit (``RLIMIT_NOFILE``, soft and hard), as
            a systemd unit's ``LimitNOFILE`` sets it.
    """
    port_file, log = tmp / f"port-{time.monotonic_ns()}", tmp / f"serve-{time.monotonic_ns()}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*(wrap or []), sys.executable, "-m", launcher, "-v", "serve", *args, "--port", "0",
                                 "--port-file", str(port_file)], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                preexec_fn=None if nofile is None else functools.partial(_limit_files, nofile))
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


def _limit_files(nofile: int) -> None:
    """(connections) In the server's child process, before exec: ``LimitNOFILE=nofile``."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


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


# -- connections: raw sockets, for what http.client will not send ------------------------------
def read_answer(sock: socket.socket) -> Response | None:
    """One HTTP answer read off a raw socket (past any ``100 Continue``); ``None`` when the server
    closed it without one."""
    data = b""
    while True:
        try:
            while b"\r\n\r\n" not in data:
                part = sock.recv(65536)
                if not part:
                    break
                data += part
        except ConnectionResetError:
            pass
        if b"\r\n\r\n" not in data:
            return None
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 1"):
            break
        data = rest  # an interim answer: the real one follows
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    try:
        while len(rest) < length:
            part = sock.recv(65536)
            if not part:
                break
            rest += part
    except ConnectionResetError:
        pass
    return Response(int(lines[0].split()[1]), headers, rest[:length])


def assert_one_shape(res: Response | None, status: int, code: str) -> None:
    """``res`` is ``status`` with JSON ``{"error": {"code", "message", "hint"}}`` and the security headers."""
    from edgemm.serve.httperrors import SECURITY_HEADERS

    assert res is not None, "closed without an answer"
    assert res.status == status, (res.status, res.body[:300])
    assert res.headers["content-type"].startswith("application/json")
    assert set(res.json()["error"]) == {"code", "message", "hint"}
    assert res.code == code, res.body
    for name, value in SECURITY_HEADERS.items():
        assert res.headers.get(name) == value, name


def raw_connection(port: int, data: bytes = b"", *, source: str | None = None, timeout: float = 60.0) -> socket.socket:
    """A socket to the server (from ``source``, e.g. 127.0.0.2), with ``data`` already sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    if data:
        sock.sendall(data)
    return sock


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
