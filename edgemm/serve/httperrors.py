"""Stable, machine-readable HTTP error codes: every 4xx/5xx the API sends comes from here.

A kiosk front end or a fleet monitor switches on ``error.code``; the strings below never change
meaning. Messages describe the problem, never echo the payload.
"""

from __future__ import annotations

import http
import json
from typing import Any

from edgemm.errors import (
    EdgemmError,
    InputTooLargeError,
    InvalidInputError,
    MissingModalityError,
    UnsupportedMediaError,
)


class ApiError(Exception):
    """An HTTP error answer: ``status``, stable ``code``, message, optional hint and headers.

    Args:
        status: The HTTP status.
        code: The stable error code (one of :data:`CODES`).
        message: What went wrong; never echoes the payload.
        hint: What to do about it.
        headers: Extra response headers (e.g. ``Retry-After``).
    """

    def __init__(self, status: int, code: str, message: str, *, hint: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"code", "message", "hint"}}``."""
        return {"error": {"code": self.code, "message": self.message, "hint": self.hint}}

    def json_bytes(self) -> bytes:
        """:meth:`body` as JSON bytes; ASCII-escaped, so that no message can fail to encode.

        (A message naming an unknown field may carry a lone surrogate from a ``\\ud800`` escape;
        UTF-8 cannot encode it, and the answer must never turn into a 500 because of it.)
        """
        return json.dumps(self.body(), ensure_ascii=True, separators=(",", ":")).encode("ascii")

    def http_bytes(self) -> bytes:
        """The whole HTTP/1.1 answer (status line, headers, JSON body), ending the connection.

        Written straight to a socket by the connection layer (:mod:`edgemm.serve.protocol`) when
        there is no request for the app to answer: a malformed request, a read timeout, a
        connection over a limit.
        """
        body = self.json_bytes()
        phrase = http.HTTPStatus(self.status).phrase
        headers = {"content-type": "application/json", "content-length": str(len(body)),
                   "connection": "close", "cache-control": "no-store", **SECURITY_HEADERS,
                   **{k.lower(): v for k, v in self.headers.items()}}
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return f"HTTP/1.1 {self.status} {phrase}\r\n{head}\r\n".encode("latin-1") + body


# On every answer, errors included (added by :class:`edgemm.serve.envelope.EnvelopeMiddleware`,
# and by :meth:`ApiError.http_bytes` for answers the connection layer writes itself).
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "content-security-policy": ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                                "style-src 'self'; script-src 'self'; connect-src 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
}


# code → HTTP status; documented in the README's API table.
CODES: dict[str, int] = {
    "invalid_request": 400,
    "invalid_json": 400,
    "json_too_deep": 400,
    "invalid_utf8": 400,
    "invalid_input": 400,
    "malformed_http": 400,
    "host_not_allowed": 421,
    "origin_not_allowed": 403,
    "unauthorized": 401,  # auth: exposed, and no or a wrong API token
    "forbidden": 403,  # auth: the kiosk token asked for by anything but the kiosk's own page
    "rate_limited": 429,  # auth: a non-local client over its rate limit
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "input_too_large": 413,
    "unsupported_media_type": 415,
    "unsupported_media": 415,
    "header_timeout": 408,
    "body_timeout": 408,
    "headers_too_large": 431,
    "too_many_client_connections": 429,
    "too_many_client_requests": 429,
    "missing_modality": 422,
    "overloaded": 503,
    "deadline_exceeded": 503,
    "not_ready": 503,
    "too_many_connections": 503,
    "internal": 500,
    "unsupported_transfer_encoding": 501,
}

# The code an error answer gets when whatever produced it gave none (see
# :func:`edgemm.serve.envelope.EnvelopeMiddleware`): by HTTP status, else by its class.
CODE_FOR_STATUS = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 408: "header_timeout",
                   413: "body_too_large", 415: "unsupported_media_type", 431: "headers_too_large",
                   501: "unsupported_transfer_encoding", 503: "overloaded"}


def code_for_status(status: int) -> str:
    """The stable code for an error answer of ``status`` that carried none of its own."""
    return CODE_FOR_STATUS.get(status, "invalid_request" if status < 500 else "internal")


def api_error(code: str, message: str, *, hint: str | None = None,
              headers: dict[str, str] | None = None) -> ApiError:
    """An :class:`ApiError` with the status that belongs to ``code``.

    Args:
        code: A key of :data:`CODES`.
        message / hint / headers: See :class:`ApiError`.

    Raises:
        KeyError: ``code`` is not a documented code (a bug in edgemm).
    """
    return ApiError(CODES[code], code, message, hint=hint, headers=headers)


def from_edgemm(error: EdgemmError) -> ApiError:
    """Map a runtime input error onto its HTTP code (anything else is an internal error).

    Args:
        error: What the runtime raised for a request.

    Returns:
        ``missing_modality``, ``input_too_large``, ``unsupported_media`` or ``invalid_input``
        with the error's message and hint; ``internal`` for any other :class:`EdgemmError`.
    """
    if isinstance(error, MissingModalityError):
        code = "missing_modality"
    elif isinstance(error, InputTooLargeError):
        code = "input_too_large"
    elif isinstance(error, UnsupportedMediaError):
        code = "unsupported_media"
    elif isinstance(error, InvalidInputError):
        code = "invalid_input"
    else:
        return api_error("internal", "The model could not answer this request.",
                         hint="The kiosk log has the details.")
    return api_error(code, error.message, hint=error.hint)
