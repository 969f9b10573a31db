"""Stable, machine-readable HTTP error codes: every 4xx/5xx the API sends comes from here.

A kiosk front end or a fleet monitor switches on ``error.code``; the strings below never change
meaning. Messages describe the problem, never echo the payload.
"""

from __future__ import annotations

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


# code → HTTP status; documented in the README's API table.
CODES: dict[str, int] = {
    "invalid_request": 400,
    "invalid_json": 400,
    "json_too_deep": 400,
    "invalid_utf8": 400,
    "invalid_input": 400,
    "host_not_allowed": 421,
    "origin_not_allowed": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "input_too_large": 413,
    "unsupported_media_type": 415,
    "unsupported_media": 415,
    "missing_modality": 422,
    "overloaded": 503,
    "deadline_exceeded": 503,
    "not_ready": 503,
    "internal": 500,
}


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
