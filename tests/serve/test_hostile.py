"""A corpus of >= 100 hostile requests, each answered with its expected status and stable code,
after which the server is still ready and has sent no 5xx; plus what only a raw socket sends
(malformed HTTP, answered by the HTTP layer in the same JSON shape) and slow or greedy clients
(cut off by the shipped read timeouts and per-client caps), each answered while the server stays ready."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from benchmarks.serve_load import multipart
from edgemm.runtime.preprocess.audio import encode_wav
from tests.serve.conftest import assert_one_shape, png_bytes, raw_connection, read_answer, wav_bytes

GOOD_PNG = png_bytes()
GOOD_WAV = wav_bytes(0.5)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A few hundred bytes claiming 2.5 gigapixels (decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def encoded(fmt: str, mode: str = "RGB", size=(40, 30), **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 120).save(buf, fmt, **kw)
    return buf.getvalue()


def wav_header(*, channels=1, rate=16000, bits=16, fmt=1, data_size=None, data=b"\0\0" * 800,
               riff=b"RIFF", wave=b"WAVE") -> bytes:
    block = channels * bits // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, rate * block, block, bits)
    size = len(data) if data_size is None else data_size
    body = wave + b"fmt " + struct.pack("<I", 16) + fmt_chunk + b"data" + struct.pack("<I", size) + data
    return riff + struct.pack("<I", min(len(body), 2**32 - 1)) + body


def float_wav_with_nan() -> bytes:
    samples = np.zeros(1600, dtype=np.float32)
    samples[10] = np.nan
    data = samples.tobytes()
    return wav_header(fmt=3, bits=32, data=data)


BAD_IMAGES = {  # name → (payload, status, code)
    "bomb_png": (png_bomb(), 413, "input_too_large"),
    "bomb_png_wide": (png_bomb(1_000_000, 30), 413, "input_too_large"),
    "wav_as_jpg": (GOOD_WAV, 415, "unsupported_media"),
    "pdf_as_jpg": (b"%PDF-1.7\n1 0 obj<<>>endobj\n", 415, "unsupported_media"),
    "svg_as_png": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', 415, "unsupported_media"),
    "tiff_not_allowed": (encoded("TIFF"), 415, "unsupported_media"),
    "ico_not_allowed": (encoded("ICO", size=(16, 16)), 415, "unsupported_media"),
    "truncated_png": (GOOD_PNG[: len(GOOD_PNG) // 2], 415, "unsupported_media"),
    "empty": (b"", 415, "unsupported_media"),
    "zip_as_png": (b"PK\x03\x04" + b"\0" * 40, 415, "unsupported_media"),
    "html_as_png": (b"<html><body>hi</body></html>", 415, "unsupported_media"),
    "png_header_only": (GOOD_PNG[:33], 415, "unsupported_media"),
}
GOOD_IMAGES = {
    "jpeg_cmyk": encoded("JPEG", "CMYK"),
    "png_gray": encoded("PNG", "L"),
    "png_palette": encoded("PNG", "P"),
    "png_16bit": encoded("PNG", "I;16"),
    "png_rgba": encoded("PNG", "RGBA"),
    "gif": encoded("GIF", "P"),
    "webp": encoded("WEBP"),
    "bmp": encoded("BMP"),
    "one_pixel": encoded("PNG", size=(1, 1)),
    "jpg_named_png": encoded("JPEG"),
}
BAD_AUDIO = {
    "zero_channels": (wav_header(channels=0), 415, "unsupported_media"),
    "claims_4gib": (wav_header(data_size=2**32 - 2), 415, "unsupported_media"),
    "one_hour": (wav_header(data_size=16000 * 2 * 3600, data=b""), 415, "unsupported_media"),
    "too_long": (encode_wav(np.zeros(16000 * 40, np.float32), 16000), 413, "input_too_large"),
    "mp3_in_wav": (wav_header(fmt=0x55), 415, "unsupported_media"),
    "not_riff": (b"OggS" + b"\0" * 60, 415, "unsupported_media"),
    "riff_not_wave": (wav_header(wave=b"AVI "), 415, "unsupported_media"),
    "rate_zero": (wav_header(rate=0), 415, "unsupported_media"),
    "bits_7": (wav_header(bits=7), 415, "unsupported_media"),
    "truncated": (GOOD_WAV[:30], 415, "unsupported_media"),
    "nan_samples": (float_wav_with_nan(), 400, "invalid_input"),
    "png_as_wav": (GOOD_PNG, 415, "unsupported_media"),
}
GOOD_TEXTS = {
    "bidi_override": "\u202eevil\u202c seven",
    "bidi_isolates": "\u2067שבע\u2069 \u2066seven\u2069",
    "arabic": "سبعة",
    "hebrew": "שבע",
    "emoji_zwj": "👨‍👩‍👧 seven 🇺🇦",
    "nul_inside": "sev\x00en",
    "zero_width": "se\u200bven\ufeff",
    "combining": "s̶e̶v̶e̶n̶",
    "empty": "",
    "cjk": "七",
}


def mp(**parts) -> tuple[bytes, dict[str, str]]:
    fields = {}
    for name, value in parts.items():
        if name == "text":
            fields["text"] = (None, value if isinstance(value, bytes) else value.encode(), "text/plain; charset=utf-8")
        else:
            fields[name] = (f"f.{'wav' if name == 'audio' else 'jpg'}", value, "application/octet-stream")
    return multipart(fields)


def js(**parts) -> tuple[bytes, dict[str, str]]:
    doc = {k: (v if k == "text" else base64.b64encode(v).decode()) for k, v in parts.items()}
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


def corpus() -> list[tuple[str, str, str, bytes, dict[str, str], int, str | None]]:
    """(id, method, path, body, headers, status, code)."""
    cases = []

    def add(cid, body_headers, status, code, path="/v1/predict", method="POST", extra=None):
        body, headers = body_headers
        cases.append((cid, method, path, body, {**headers, **(extra or {})}, status, code))

    for name, (payload, status, code) in BAD_IMAGES.items():
        # An empty file part is what a browser sends when no file was chosen: no image at all.
        mp_status, mp_code = (422, "missing_modality") if name == "empty" else (status, code)
        add(f"image-mp-{name}", mp(text="seven", image=payload), mp_status, mp_code)
        add(f"image-json-{name}", js(text="seven", image=payload), status, code)
        add(f"image-raw-{name}", (payload, {"Content-Type": "image/jpeg"}), status, code, path="/v1/predict?text=x")
    for name, payload in GOOD_IMAGES.items():
        add(f"image-ok-{name}", mp(text="seven", image=payload), 200, None)
    for name, (payload, status, code) in BAD_AUDIO.items():
        add(f"audio-mp-{name}", mp(text="seven", image=GOOD_PNG, audio=payload), status, code)
        add(f"audio-json-{name}", js(text="seven", image=GOOD_PNG, audio=payload), status, code)
    for name, text in GOOD_TEXTS.items():
        add(f"text-mp-{name}", mp(text=text, image=GOOD_PNG), 200, None)
        add(f"text-json-{name}", js(text=text, image=GOOD_PNG), 200, None)
    long_text = "x" * 100_000
    add("text-100k-mp", mp(text=long_text, image=GOOD_PNG), 413, "input_too_large")
    add("text-100k-json", js(text=long_text, image=GOOD_PNG), 413, "input_too_large")
    add("text-2001", mp(text="y" * 2001, image=GOOD_PNG), 413, "input_too_large")
    add("text-2000", mp(text="y" * 2000, image=GOOD_PNG), 200, None)
    for i, bad in enumerate([b"\xff\xfe", b"abc\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]):
        add(f"utf8-mp-{i}", mp(text=bad, image=GOOD_PNG), 400, "invalid_utf8")
        add(f"utf8-json-{i}", (b'{"text": "' + bad + b'", "image": "' + base64.b64encode(GOOD_PNG) + b'"}',
                               {"Content-Type": "application/json"}), 400, "invalid_utf8")
    add("utf8-plain", (b"\xff\xfe", {"Content-Type": "text/plain; charset=utf-8"}), 422, "missing_modality")
    add("lone-surrogate-json", (b'{"text": "\\ud800", "image": "' + base64.b64encode(GOOD_PNG) + b'"}',
                                {"Content-Type": "application/json"}), 400, "invalid_input")
    for depth in (5, 100, 100_000):
        add(f"deep-json-{depth}", (b"[" * depth + b"]" * depth, {"Content-Type": "application/json"}),
            400, "json_too_deep")
    add("deep-json-object", (b'{"text": ' + b'{"a": ' * 50 + b"1" + b"}" * 51, {"Content-Type": "application/json"}),
        400, "json_too_deep")
    for i, body in enumerate([b"{", b"nul", b'{"text": "x",}', b"\"just a string\"", b"[1, 2]", b"{\"text\": 5}",
                              b'{"image": "!!!notbase64"}', b'{"model": "x", "text": "y"}', b""]):
        code = "invalid_json" if i in (0, 1, 2, 8) else "invalid_request"
        add(f"json-bad-{i}", (body, {"Content-Type": "application/json"}), 400, code)
    for ctype in ("application/xml", "application/x-www-form-urlencoded", "video/mp4", "",
                  "text/plain; charset=latin-1", "application/octet-stream"):
        add(f"ctype-{ctype or 'none'}", (b"data", {"Content-Type": ctype} if ctype else {}), 415,
            "unsupported_media_type")
    add("missing-image", mp(text="seven"), 422, "missing_modality")
    add("missing-text", mp(image=GOOD_PNG), 422, "missing_modality")
    add("audio-only", mp(audio=GOOD_WAV), 422, "missing_modality")
    add("empty-multipart", multipart({}), 422, "missing_modality")
    add("plain-text-only", (b"seven", {"Content-Type": "text/plain"}), 422, "missing_modality")
    add("bad-boundary", (b"--nope\r\n\r\n", {"Content-Type": "multipart/form-data; boundary=other"}), 400,
        "invalid_request")
    add("no-boundary", (b"x", {"Content-Type": "multipart/form-data"}), 400, "invalid_request")
    add("unknown-field", multipart({"model_url": (None, b"http://x", "text/plain")}), 400, "invalid_request")
    add("duplicate-text", (b"--B\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\na\r\n--B\r\nContent-Disposition: form-data; "
         b"name=\"text\"\r\n\r\nb\r\n--B--\r\n", {"Content-Type": "multipart/form-data; boundary=B"}),
        400, "invalid_request")
    add("too-many-files", (b"".join(b"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\nx\r\n"
                                    for _ in range(3)) + b"--B--\r\n",
                           {"Content-Type": "multipart/form-data; boundary=B"}), 400, "invalid_request")
    for host in ("evil.example", "attacker.test:80", "127.0.0.1.evil.example", "localhost.evil", "10.0.0.1"):
        add(f"host-{host}", mp(text="seven", image=GOOD_PNG), 421, "host_not_allowed", extra={"Host": host})
    for origin in ("http://evil.example", "null", "http://localhost.evil:8310", "https://127.0.0.1.nip.io"):
        add(f"origin-{origin}", mp(text="seven", image=GOOD_PNG), 403, "origin_not_allowed",
            extra={"Origin": origin})
    for path in ("/v1/models/load", "/v1/model/unload", "/v1/predict/../../etc/passwd", "/static/../../x",
                 "/static/kiosk.js.map", "/v2/predict", "/admin",
                 "/v1/health/live/", "/metrics/", "/v1/model/"):  # connections: no 307 to a Host-made Location
        add(f"path-{path}", (b"", {}), 404, "not_found", path=path, method="GET")
    add("path-predict-slash", mp(text="seven", image=GOOD_PNG), 404, "not_found", path="/v1/predict/")
    for method in ("PUT", "DELETE", "PATCH"):
        add(f"method-{method}", mp(text="seven", image=GOOD_PNG), 405, "method_not_allowed", method=method)
    add("content-length-too-big", (b"tiny", {"Content-Type": "image/png", "Content-Length": str(2**30)}), 413,
        "body_too_large")
    # -- connections: JSON the parser chokes on (was a plain-text 500), strict UTF-8 query strings --
    png64 = base64.b64encode(GOOD_PNG)
    for name, doc in {"bigint-text": b'{"text": ' + b"7" * 5000 + b', "image": "' + png64 + b'"}',
                      "bigint-unknown-key": b'{"n": ' + b"9" * 4301 + b"}",
                      "bigint-negative": b'{"text": "x", "n": -' + b"1" * 10_000 + b"}",
                      "bigint-in-list": b'{"text": [' + b"3" * 6000 + b"]}"}.items():
        add(f"json-{name}", (doc, {"Content-Type": "application/json"}), 400, "invalid_json")
    add("json-huge-exponent", (b'{"text": 1e999999, "image": "' + png64 + b'"}', {"Content-Type": "application/json"}),
        400, "invalid_request")
    for name, doc in {"lone-high-key": b'{"\\ud800": "x"}', "lone-low-key": b'{"text": "x", "\\udfff": 1}',
                      "lone-key-with-image": b'{"\\udbff": "x", "image": "' + png64 + b'"}',
                      "reversed-pair-key": b'{"\\ude00\\ud83d": null}'}.items():
        add(f"json-surrogate-{name}", (doc, {"Content-Type": "application/json"}), 400, "invalid_request")
    add("json-lone-low-surrogate-text", (b'{"text": "\\udfff", "image": "' + png64 + b'"}',
                                         {"Content-Type": "application/json"}), 400, "invalid_input")
    add("json-surrogate-pair-text", (b'{"text": "\\ud83d\\ude00 seven", "image": "' + png64 + b'"}',
                                     {"Content-Type": "application/json"}), 200, None)
    raw_png = (GOOD_PNG, {"Content-Type": "image/png"})
    for i, bad in enumerate(["%ff%fe", "%c3%28", "%ed%a0%80", "%c0%af", "%f8%88%80%80%80", "%e2%82", "seven%80",
                             "%fe%ff%00s%00e"]):
        add(f"query-utf8-raw-{i}", raw_png, 400, "invalid_utf8", path=f"/v1/predict?text={bad}")
    add("query-utf8-multipart", mp(text="seven", image=GOOD_PNG), 400, "invalid_utf8", path="/v1/predict?text=%ff")
    add("query-utf8-other-key", raw_png, 400, "invalid_utf8", path="/v1/predict?text=seven&lang=%ff")
    add("query-utf8-key", raw_png, 400, "invalid_utf8", path="/v1/predict?%ff=1&text=seven")
    for path in ("/v1/health/live?probe=%ff", "/v1/model?x=%c3", "/?lang=%ed%b0%80"):
        add(f"query-utf8-get-{path}", (b"", {}), 400, "invalid_utf8", path=path, method="GET")
    add("query-utf8-ok", raw_png, 200, None, path="/v1/predict?text=%E4%B8%83+%F0%9F%91%8D")
    return cases


CORPUS = corpus()


def test_corpus_has_at_least_100_cases():
    assert len(CORPUS) >= 100
    assert len({c[0] for c in CORPUS}) == len(CORPUS)


@pytest.fixture(scope="module")
def answers(server):
    out = {}
    for cid, method, path, body, headers, _, _ in CORPUS:
        if "Content-Length" in headers:  # a lying header: send it raw
            out[cid] = raw_exchange(server.port, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n", body)
        else:
            out[cid] = server.request(method, path, body, headers)
    return out


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_request(case, answers):
    cid, _, _, _, _, status, code = case
    res = answers[cid]
    assert res.status == status, (cid, res.status, res.body[:300])
    if code is not None:
        assert res.code == code, (cid, res.body[:300])


def raw_exchange(port: int, head: str, body: bytes, *, chunks: int = 0, chunk: bytes = b""):
    """Send a hand-made request (lying or endless bodies) and parse the first response."""
    with raw_connection(port, head.encode() + body, timeout=30) as s:
        try:
            for _ in range(chunks):
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except OSError:
            pass  # the server answered and closed: exactly what we want
        res = read_answer(s)
    assert res is not None, "closed without an answer"
    return res


def test_one_gigabyte_chunked_body_is_cut_off_at_the_cap(server):
    head = ("POST /v1/predict?text=x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    # Up to 1 GiB in 1 MiB chunks; the server must answer 413 long before.
    res = raw_exchange(server.port, head, b"", chunks=1024, chunk=b"\0" * 2**20)
    assert (res.status, res.code) == (413, "body_too_large")


def test_server_survives_the_corpus(server, answers):
    assert all(res.status < 500 for res in answers.values())
    assert server.get("/v1/health/ready").status == 200
    metrics = server.metrics()
    # Every error answer is counted, the readiness probes' 503 while the model loaded included: no
    # 500 and no internal error is what "survives" means.
    assert not re.search(r'edgemm_requests_total\{status="500"\}', metrics)
    assert 'edgemm_errors_total{code="internal"}' not in metrics
    assert "edgemm_errors_total{code=\"json_too_deep\"}" in metrics


# -- connections: malformed HTTP, answered by the HTTP layer in the one shape and counted -------
HOST = b"Host: 127.0.0.1\r\n"
MALFORMED = {  # name → (bytes, status, code)
    "request-line-garbage": (b"GARBAGE\r\n\r\n", 400, "malformed_http"),
    "request-line-without-version": (b"GET /\r\n\r\n", 400, "malformed_http"),
    "request-line-tab-in-target": (b"GET /a\tb HTTP/1.1\r\n" + HOST + b"\r\n", 400, "malformed_http"),
    "request-line-non-ascii-target": (b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + HOST + b"\r\n", 400, "malformed_http"),
    "request-line-nul-in-target": (b"GET /a\x00b HTTP/1.1\r\n" + HOST + b"\r\n", 400, "malformed_http"),
    "header-without-colon": (b"GET / HTTP/1.1\r\n" + HOST + b"NoColon\r\n\r\n", 400, "malformed_http"),
    "header-space-before-colon": (b"GET / HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n", 400, "malformed_http"),
    "header-name-with-space": (b"GET / HTTP/1.1\r\n" + HOST + b"X Y: a\r\n\r\n", 400, "malformed_http"),
    "header-empty-name": (b"GET / HTTP/1.1\r\n" + HOST + b": a\r\n\r\n", 400, "malformed_http"),
    "header-nul-in-value": (b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x00b\r\n\r\n", 400, "malformed_http"),
    "host-missing": (b"GET / HTTP/1.1\r\n\r\n", 400, "malformed_http"),
    "host-twice": (b"GET / HTTP/1.1\r\n" + HOST + HOST + b"\r\n", 400, "malformed_http"),
    "content-length-not-a-number": (b"POST /v1/predict HTTP/1.1\r\n" + HOST + b"Content-Length: abc\r\n\r\n",
                                    400, "malformed_http"),
    "content-length-negative": (b"POST /v1/predict HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n",
                                400, "malformed_http"),
    "content-length-plus-sign": (b"POST /v1/predict HTTP/1.1\r\n" + HOST + b"Content-Length: +5\r\n\r\nabcde",
                                 400, "malformed_http"),
    "content-length-conflicting": (b"POST /v1/predict HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
                                   b"Content-Length: 6\r\n\r\nabcdef", 400, "malformed_http"),
    "content-length-30-digits": (b"POST /v1/predict HTTP/1.1\r\n" + HOST + b"Content-Length: " + b"9" * 30
                                 + b"\r\n\r\n", 400, "malformed_http"),
    "chunk-size-not-hex": (b"POST /v1/predict?text=x HTTP/1.1\r\n" + HOST + b"Content-Type: image/png\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "malformed_http"),
    "transfer-encoding-gzip": (b"POST /v1/predict HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
                               501, "unsupported_transfer_encoding"),
    "headers-too-large-at-once": (b"GET / HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 40_000 + b"\r\n\r\n",
                                  431, "headers_too_large"),
    "headers-too-many": (b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(3000))
                         + b"\r\n", 431, "headers_too_large"),
}



@pytest.fixture(scope="module")
def malformed_answers(server):
    """name → (answer, how much its code's error count rose), one case at a time."""
    out = {}
    for name, (data, _, code) in MALFORMED.items():
        before = server.error_count(code)
        res = server.exchange(data)
        out[name] = res, server.error_count(code) - before
    return out


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_http(name, malformed_answers):
    _, status, code = MALFORMED[name]
    res, counted = malformed_answers[name]
    assert_one_shape(res, status, code)
    assert res.headers["connection"] == "close"
    assert counted == 1


# -- connections: slow and greedy clients, run at once against the shipped timeouts (10 s) ------
STALLED_BODY = (b"POST /v1/predict?text=x HTTP/1.1\r\n" + HOST + b"Content-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\n\x89PNG")
SLOW = {  # name → (status, code), or None: closed without an answer
    "half-request-line": (408, "header_timeout"),
    "headers-never-end": (408, "header_timeout"),
    "headers-a-byte-a-second": (408, "header_timeout"),
    "kept-alive-then-half-a-request": (408, "header_timeout"),
    "silent-connection": None,
    "stalled-body": (408, "body_timeout"),
    "stalled-chunked-body": (408, "body_timeout"),
    "stalled-multipart-body": (408, "body_timeout"),
    "stalled-body-after-100-continue": (408, "body_timeout"),
    "client-over-its-connection-cap": (429, "too_many_client_connections"),
    "client-over-its-in-flight-cap": (429, "too_many_client_requests"),
}


def _kept_alive_then_half(server):
    with raw_connection(server.port, b"GET /v1/health/live HTTP/1.1\r\n" + HOST + b"\r\n") as sock:
        assert read_answer(sock).status == 200
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nCont")
        return read_answer(sock)


def _over_connection_cap(server, source="127.0.9.1", cap=128):
    # The shipped per-client cap: one more connection displaces the one that waited longest.
    held = [raw_connection(server.port, b"GET /v1/health/li", source=source) for _ in range(cap)]
    try:
        assert server.get("/v1/health/live", source=source).status == 200
        return read_answer(held[0])
    finally:
        for sock in held:
            sock.close()


def _over_in_flight_cap(server, source="127.0.9.2", cap=64):
    held = [raw_connection(server.port, STALLED_BODY, source=source) for _ in range(cap)]
    try:
        time.sleep(0.5)  # their headers are read: all of them are in flight
        return server.exchange(b"GET /v1/health/live HTTP/1.1\r\n" + HOST + b"\r\n", source=source)
    finally:
        for sock in held:
            sock.close()


@pytest.fixture(scope="module")
def slow_answers(server):
    body, headers = mp(text="seven", image=GOOD_PNG)
    mp_head = ("POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Content-Type: {headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    head = b"GET /v1/health/live HTTP/1.1\r\n" + HOST + b"X-Slow: yes\r\n\r\n"
    runs = {
        "half-request-line": lambda: server.exchange(b"GET /v1/health/re"),
        "headers-never-end": lambda: server.exchange(b"GET /v1/health/live HTTP/1.1\r\n" + HOST),
        "headers-a-byte-a-second": lambda: server.exchange(head[:1], pieces=[bytes([b]) for b in head[1:]], pause=1.0),
        "kept-alive-then-half-a-request": lambda: _kept_alive_then_half(server),
        "silent-connection": lambda: server.exchange(b""),
        "stalled-body": lambda: server.exchange(STALLED_BODY),
        "stalled-chunked-body": lambda: server.exchange(
            b"POST /v1/predict?text=x HTTP/1.1\r\n" + HOST + b"Content-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n4\r\n\x89PNG\r\n"),
        "stalled-multipart-body": lambda: server.exchange(mp_head + body[: len(body) // 2]),
        "stalled-body-after-100-continue": lambda: server.exchange(STALLED_BODY.replace(
            b"Content-Length", b"Expect: 100-continue\r\nContent-Length").removesuffix(b"\x89PNG")),
        "client-over-its-connection-cap": lambda: _over_connection_cap(server),
        "client-over-its-in-flight-cap": lambda: _over_in_flight_cap(server),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run) for name, run in runs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", sorted(SLOW))
def test_slow_or_greedy_client(name, slow_answers, server):
    res = slow_answers[name]
    if SLOW[name] is None:
        assert res is None
    else:
        assert_one_shape(res, *SLOW[name])
    assert server.get("/v1/health/ready").status == 200
