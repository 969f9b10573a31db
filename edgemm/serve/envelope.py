"""The envelope every request and answer of the app passes through: one error shape for everything.

:class:`EnvelopeMiddleware` is the outermost ASGI layer of the app
(:func:`edgemm.serve.app.build_app` wraps the Starlette app in it). It guarantees, in one place:

* every answer carries the security headers (:data:`~edgemm.serve.httperrors.SECURITY_HEADERS`);
* every error answer is JSON ``{"error": {"code", "message", "hint"}}`` with a stable code: one
  that is not (a framework default such as Starlette's ``Internal Server Error``) is rewritten
  with the code for its status;
* an unexpected exception becomes 500 ``internal``; its traceback goes to the log, never to the
  client;
* every error answer, and every answer of ``/v1/predict``, is counted in the metrics by status
  and code, with its latency. (499, the client went away, is counted as cancelled instead.)
* a query string that is not strict UTF-8 (``?text=%ff``) is refused with 400 ``invalid_utf8``
  before anything reads it: Starlette would decode it to U+FFFD.

Answers the connection layer writes itself (malformed HTTP, read timeouts, connection limits;
:mod:`edgemm.serve.protocol`) never reach the app; they are built by
:meth:`~edgemm.serve.httperrors.ApiError.http_bytes` and counted there.
"""

from __future__ import annotations

import http
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgemm.serve.httperrors import SECURITY_HEADERS, ApiError, api_error, code_for_status
from edgemm.serve.metrics import Metrics

log = logging.getLogger("edgemm.serve")

# Paths whose every answer is counted (the others only when they are errors).
COUNTED_PATHS = frozenset({"/v1/predict"})
# The client went away before its answer (see edgemm.serve.app); counted as cancelled.
CLIENT_GONE = 499
_SECURITY = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]


def query_refusal(query_string: bytes) -> ApiError | None:
    """The refusal for a query string that does not percent-decode to strict UTF-8, else ``None``.

    Args:
        query_string: The raw query string of the request (ASCII: the HTTP parser allows nothing else).
    """
    try:
        parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        return api_error("invalid_utf8", f"The query string is not valid UTF-8 (decoded byte {exc.start}).",
                         hint="Percent-encode text as UTF-8 (encodeURIComponent in a browser).")
    return None


def error_code(body: bytes) -> str | None:
    """The ``error.code`` of a JSON error body in the one shape, else ``None`` (not that shape)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and code else None


def _with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    present = {k.lower() for k, _ in headers}
    return [*headers, *((k, v) for k, v in _SECURITY if k not in present)]


class _Answer:
    """What one request was answered (filled in as the app sends it)."""

    def __init__(self) -> None:
        self.status = 0
        self.code: str | None = None
        self.started = False  # the status line went to the client
        self.start: Message | None = None  # an error answer's start, held until its body is complete
        self.body: list[bytes] = []


class EnvelopeMiddleware:
    """Outermost ASGI middleware: security headers, the one error shape, metrics, unexpected errors.

    Args:
        app: The app it wraps (the Starlette app).
        metrics: Where answers are counted.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request (other scope types pass through untouched)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        answer = _Answer()

        async def send_enveloped(message: Message) -> None:
            await self._send(answer, message, send)

        try:
            refusal = query_refusal(scope.get("query_string", b""))
            if refusal is not None:
                await self._send_error(refusal, send_enveloped)
            else:
                await self.app(scope, receive, send_enveloped)
            if not answer.started:
                log.error("%s %s ended without an answer", scope["method"], scope["path"])
                await self._send_error(_internal(), send_enveloped)
        except Exception:
            # Only the path: a query string may carry the user's text.
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            if not answer.started:
                await self._send_error(_internal(), send_enveloped)
            # else: the answer is already on its way; the server closes the connection.
        if answer.status and answer.status != CLIENT_GONE and (answer.status >= 400 or scope["path"] in COUNTED_PATHS):
            self.metrics.observe_response(answer.status, time.perf_counter() - began, answer.code)

    async def _send(self, answer: _Answer, message: Message, send: Send) -> None:
        if message["type"] == "http.response.start":
            answer.status = int(message["status"])
            message = {**message, "headers": _with_security_headers(list(message.get("headers", [])))}
            if answer.status >= 400:
                answer.start = message  # held until the body shows whether it is in the one shape
                return
            answer.started = True
            await send(message)
        elif message["type"] == "http.response.body" and answer.start is not None:
            answer.body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start, body = answer.start, b"".join(answer.body)
            answer.start, answer.body = None, []
            answer.code = error_code(body)
            if answer.code is None:
                start, body = _reshaped(start, answer)
            answer.started = True
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})
        else:
            await send(message)

    async def _send_error(self, error: ApiError, send: Send) -> None:
        body = error.json_bytes()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"),
                   *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items())]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _internal() -> ApiError:
    return api_error("internal", "The server could not answer this request.", hint="The kiosk log has the details.")


def _reshaped(start: Message, answer: _Answer) -> tuple[Message, bytes]:
    """An error answer that is not in the one shape, rewritten into it (same status)."""
    status = answer.status
    answer.code = code_for_status(status)
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = f"HTTP {status}"
    body = ApiError(status, answer.code, f"{phrase}.").json_bytes()
    kept: list[Any] = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-type", b"content-length")]
    headers = [*kept, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {**start, "headers": headers}, body
