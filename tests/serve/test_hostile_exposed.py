"""The hostile corpus, continued: a LAN client against an exposed kiosk, and inputs sized to hurt.

Two more classes of the issue's probe, each case answered with its expected status and stable
code while the server stays ready:

* **exposed mode** (``--expose``; 127.0.0.2 is a LAN peer): every way of getting the token
  wrong on every protected endpoint and method is 401 ``unauthorized``; loopback names in
  ``Host`` from a LAN peer are 421; the token endpoint is 403 to LAN peers; health stays open;
  with the token the API answers as on loopback;
* **memory** (a server with a small ``--memory-max``): images over the bundle-sized pixel cap in
  every format, decompression bombs and tiny files that decode large are refused from the header
  (413) or by the decode budget (503 ``overloaded``), never decoded into an out-of-memory kill.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from edgemm.serve.auth import TOKEN_ENDPOINT
from tests.serve.conftest import Server, png_bytes, start_server, stop_server

LAN = "127.0.0.2"
NAME = "kiosk.test"
PNG = png_bytes()
PROTECTED = [("GET", "/v1/model"), ("GET", "/metrics"), ("POST", "/v1/predict?text=seven"),
             ("GET", "/v1/unknown"), ("PUT", "/v1/predict"), ("DELETE", "/v1/model"), ("OPTIONS", "/v1/predict"),
             ("GET", "/v1/predict")]


def _bad_credentials(token: str) -> dict[str, dict[str, str]]:
    """Every way a LAN client gets the token wrong (none of them may pass)."""
    return {
        "none": {},
        "empty-bearer": {"Authorization": "Bearer "},
        "wrong-token": {"Authorization": "Bearer " + "x" * len(token)},
        "short-prefix": {"Authorization": "Bearer " + token[:8]},
        "longer": {"Authorization": "Bearer " + token + "x"},
        "basic": {"Authorization": "Basic " + token},
        "token-scheme": {"Authorization": "Token " + token},
        "no-scheme": {"Authorization": token},
        "in-cookie": {"Cookie": f"token={token}"},
        "x-api-key": {"X-API-Key": token},
        "case-flipped": {"Authorization": "Bearer " + token.swapcase()},
    }


def corpus(token: str) -> list[tuple[str, str, str, bytes, dict[str, str], int, str]]:
    """``(id, method, path, body, headers, status, code)`` for a LAN peer of an exposed server."""
    cases = []
    lan = {"Host": NAME}
    for cred_name, cred in _bad_credentials(token).items():
        for method, path in PROTECTED:
            body = PNG if method == "POST" else b""
            headers = {**lan, **cred, **({"Content-Type": "image/png"} if method == "POST" else {})}
            cases.append((f"{cred_name}-{method}-{path}", method, path, body, headers, 401, "unauthorized"))
    # The token given in the query string is not a credential either (it would end up in logs).
    cases.append(("token-in-query", "GET", f"/v1/model?token={token}", b"", lan, 401, "unauthorized"))
    auth = {"Authorization": f"Bearer {token}"}
    for host in ("127.0.0.1", "localhost", "[::1]", "127.0.0.1:8310", "LOCALHOST"):
        cases.append((f"loopback-host-{host}", "GET", "/v1/model", b"", {"Host": host, **auth}, 421, "host_not_allowed"))
        cases.append((f"loopback-host-no-token-{host}", "GET", "/v1/model", b"", {"Host": host}, 421, "host_not_allowed"))
    for fwd in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        value = "for=127.0.0.1" if fwd == "Forwarded" else "127.0.0.1"
        cases.append((f"spoofed-{fwd}", "GET", "/v1/model", b"", {**lan, fwd: value}, 401, "unauthorized"))
    cases.append(("token-endpoint-lan", "GET", TOKEN_ENDPOINT, b"", {**lan, **auth}, 403, "forbidden"))
    for path in ("/v1/health/live", "/v1/health/ready"):
        cases.append((f"health-open-{path}", "GET", path, b"", lan, 200, None))
    cases.append(("with-token-model", "GET", "/v1/model", b"", {**lan, **auth}, 200, None))
    cases.append(("with-token-predict", "POST", "/v1/predict?text=seven", PNG,
                  {**lan, **auth, "Content-Type": "image/png"}, 200, None))
    cases.append(("with-token-bad-input", "POST", "/v1/predict?text=seven", b"not an image",
                  {**lan, **auth, "Content-Type": "image/png"}, 415, "unsupported_media"))
    return cases


@pytest.fixture(scope="module")
def exposed(serve_bundle, tmp_path_factory) -> Iterator[tuple[Server, str]]:
    token_file = tmp_path_factory.mktemp("hostile-exposed-state") / "api-token"
    srv = start_server(tmp_path_factory.mktemp("hostile-exposed"), str(serve_bundle), "--device", "cpu", "--expose",
                       "--allow-host", NAME, "--local-peer", "127.0.0.1", "--token-file", str(token_file),
                       "--rate-burst", "10000", "--rate-limit", "10000")
    yield srv, token_file.read_text().strip()
    stop_server(srv)


def test_exposed_corpus(exposed):
    srv, token = exposed
    cases = corpus(token)
    assert len(cases) >= 100 and len({c[0] for c in cases}) == len(cases)
    wrong = []
    for cid, method, path, body, headers, status, code in cases:
        res = srv.request(method, path, body or None, headers, source=LAN)
        if res.status != status or (code is not None and res.code != code):
            wrong.append((cid, res.status, res.body[:200]))
        if res.status >= 400:
            assert res.headers["content-type"] == "application/json", cid
            assert "content-security-policy" in res.headers, cid
        assert token not in res.body.decode("utf-8", "replace"), f"{cid}: the token leaked into an answer"
    assert not wrong, wrong
    assert srv.get("/v1/health/ready").status == 200
    metrics = srv.get("/metrics", headers={"Authorization": f"Bearer {token}"}).body.decode()
    assert re.search(r'edgemm_errors_total\{code="unauthorized"\} (\d+)', metrics)
    assert 'edgemm_errors_total{code="internal"}' not in metrics


def test_a_lan_flood_is_rate_limited_while_the_kiosk_is_not(serve_bundle, tmp_path):
    token_file = tmp_path / "state" / "api-token"
    srv = start_server(tmp_path, str(serve_bundle), "--device", "cpu", "--expose", "--allow-host", NAME,
                       "--local-peer", "127.0.0.1", "--token-file", str(token_file), "--rate-limit", "2",
                       "--rate-burst", "5")
    try:
        auth = {"Host": NAME, "Authorization": f"Bearer {token_file.read_text().strip()}"}
        statuses = [srv.get("/v1/model", headers=auth, source=LAN).status for _ in range(30)]
        assert 429 in statuses and statuses[:5] == [200] * 5
        limited = srv.get("/v1/model", headers=auth, source=LAN)
        assert limited.code == "rate_limited" and "retry-after" in limited.headers
        local = {"Authorization": auth["Authorization"]}
        assert all(srv.get("/v1/model", headers=local).status == 200 for _ in range(30))  # the kiosk itself
    finally:
        stop_server(srv)


# -- memory: inputs sized to hurt --------------------------------------------------------------------


def _image(fmt: str, size: tuple[int, int], mode: str = "RGB", **save: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 200).save(out, fmt, **save)
    return out.getvalue()


def memory_corpus() -> list[tuple[str, bytes, str, tuple[int, ...], str]]:
    """``(id, body, content type, statuses, code)``: over the bundle-sized cap, or too big to decode."""
    over = (4200, 4100)  # 17.2 MP: over the 16 MP floor of the cap for a 32 px model
    cases = [
        ("png-rgb-over-cap", _image("PNG", over), "image/png", (413,), "input_too_large"),
        ("png-rgba-over-cap", _image("PNG", over, "RGBA"), "image/png", (413,), "input_too_large"),
        ("png-gray-over-cap", _image("PNG", over, "L"), "image/png", (413,), "input_too_large"),
        ("png-palette-over-cap", _image("PNG", over, "P"), "image/png", (413,), "input_too_large"),
        ("jpeg-over-cap", _image("JPEG", over, quality=30), "image/jpeg", (413,), "input_too_large"),
        ("webp-over-cap", _image("WEBP", over, quality=5), "image/webp", (413,), "input_too_large"),
        ("gif-over-cap", _image("GIF", over, "P"), "image/gif", (413,), "input_too_large"),
        ("bmp-1bit-over-cap", _image("BMP", (4100, 4100), "1"), "image/bmp", (413,), "input_too_large"),
        ("png-one-row-million-wide", _image("PNG", (1_000_000, 20), "L"), "image/png", (413,), "input_too_large"),
        ("png-one-column-million-tall", _image("PNG", (20, 1_000_000), "L"), "image/png", (413,), "input_too_large"),
    ]
    # Just under the cap: small files that decode to 16 MP. Refused by the decode budget of a
    # server with little memory, or answered — never an out-of-memory kill.
    under = (4000, 4000)
    for fmt, mode, ctype in (("PNG", "RGBA", "image/png"), ("WEBP", "RGB", "image/webp"), ("JPEG", "RGB", "image/jpeg"),
                             ("GIF", "P", "image/gif"), ("PNG", "L", "image/png")):
        cases.append((f"{fmt.lower()}-{mode.lower()}-16mp", _image(fmt, under, mode), ctype, (200, 503), ""))
    return cases


@pytest.fixture(scope="module")
def small_memory(serve_bundle, tmp_path_factory) -> Iterator[Server]:
    """A kiosk with 600 MB (the decode budget is what remains after the model, halved)."""
    srv = start_server(tmp_path_factory.mktemp("hostile-memory"), str(serve_bundle), "--device", "cpu",
                       "--memory-max", "600M")
    yield srv
    stop_server(srv)


def test_memory_corpus(small_memory):
    cases = memory_corpus()
    wrong = []
    for cid, body, ctype, statuses, code in cases:
        res = small_memory.request("POST", "/v1/predict?text=seven", body, {"Content-Type": ctype})
        if res.status not in statuses or (code and res.code != code):
            wrong.append((cid, res.status, res.body[:200]))
        if res.status == 503:
            assert res.code in ("overloaded", "deadline_exceeded"), (cid, res.body)
    assert not wrong, wrong
    assert small_memory.get("/v1/health/ready").status == 200
    status = Path(f"/proc/{small_memory.proc.pid}/status").read_text()
    peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    assert peak_kib < 600 * 1024, f"peak RSS {peak_kib // 1024} MiB over the 600 MB limit"


def test_the_two_corpora_bring_the_hostile_total_over_300(exposed):
    from tests.serve.test_hostile import CORPUS, MALFORMED, SLOW

    _, token = exposed
    total = len(CORPUS) + len(MALFORMED) + len(SLOW) + len(corpus(token)) + len(memory_corpus())
    assert total >= 300, total
