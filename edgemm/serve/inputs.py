"""Turn an HTTP request body into decoded, checked model inputs.

Three ways to send a request to ``POST /v1/predict``:

* ``multipart/form-data`` with fields ``text`` and files ``image`` / ``audio`` (what the kiosk
  page and ``curl -F`` send);
* ``application/json``: ``{"text": "...", "image": "<base64>", "audio": "<base64>"}``;
* a raw body: ``image/*``, ``audio/wav`` or ``text/plain; charset=utf-8``, with the text of
  a paired request in the ``text`` query parameter.

Decoding (image header → pixel cap → decode, WAV header checks → duration cap, UTF-8 and length
checks) happens here, per request, so that one bad input never fails a micro-batch.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from edgemm.bundle.manifest import Manifest
from edgemm.errors import EdgemmError
from edgemm.runtime.preprocess.audio import load_audio
from edgemm.runtime.preprocess.image import DEFAULT_FORMATS, DEFAULT_MAX_BYTES, decode_image
from edgemm.runtime.preprocess.text import check_text
from edgemm.serve.config import ServeConfig
from edgemm.serve.httperrors import api_error, from_edgemm

MAX_JSON_DEPTH = 4
MODALITIES = ("text", "image", "audio")
_WAV_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"}


@dataclass
class RawInputs:
    """The undecoded parts of one request (text may still be bytes, media are raw bytes)."""

    text: bytes | str | list[str] | None = None
    image: bytes | None = None
    audio: bytes | None = None

    def given(self) -> list[str]:
        """The modalities present, in the order text, image, audio."""
        return [m for m in MODALITIES if getattr(self, m) is not None]


@dataclass
class DecodedInputs:
    """One request's inputs, decoded and within every cap: ready to join a batch."""

    text: str | list[str] | None = None  # a list: candidate texts of a similarity bundle
    image: Any = None  # a loaded PIL image
    audio: tuple[Any, int] | None = None  # (float32 samples, rate)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = content_type.partition(";")
    params = {}
    for part in rest.split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            params[key.lower()] = value.strip().strip('"').lower()
    return kind.strip().lower(), params


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether ``body`` nests arrays/objects deeper than ``limit``, found without parsing it.

    Python's parser recurses per level; a 100,000-deep document must be refused before it runs.

    Args:
        body: The raw JSON bytes (brackets inside strings do not count).
        limit: The deepest nesting allowed.

    Returns:
        True as soon as a bracket opens level ``limit + 1``.
    """
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _from_json(body: bytes) -> RawInputs:
    if json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise api_error("json_too_deep", f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.",
                        hint='Send a flat object: {"text": ..., "image": <base64>, "audio": <base64>}.')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise api_error("invalid_utf8", "The JSON body is not valid UTF-8.") from None
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise api_error("invalid_json", f"The body is not valid JSON ({type(exc).__name__}).") from None
    if not isinstance(doc, dict):
        raise api_error("invalid_request", "The JSON body must be an object.",
                        hint='Send {"text": ..., "image": <base64>, "audio": <base64>}.')
    unknown = sorted(set(doc) - set(MODALITIES))
    if unknown:
        raise api_error("invalid_request", f"Unknown field(s): {', '.join(unknown)[:200]}.",
                        hint=f"Fields: {', '.join(MODALITIES)}.")
    raw = RawInputs()
    if doc.get("text") is not None:
        text = doc["text"]
        if not (isinstance(text, str) or (isinstance(text, list) and 0 < len(text) <= 64
                                          and all(isinstance(t, str) for t in text))):
            raise api_error("invalid_request", "Field 'text' must be a string (or a list of up to 64 "
                            "candidate strings for an image–text similarity model).")
        raw.text = doc["text"]
    for name in ("image", "audio"):
        value = doc.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise api_error("invalid_request", f"Field {name!r} must be a base64 string.")
        try:
            setattr(raw, name, base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise api_error("invalid_request", f"Field {name!r} is not valid base64.") from None
    return raw


class _StrictUtf8Parser(MultiPartParser):
    """Starlette's parser silently decodes a non-UTF-8 form field as Latin-1; refuse it instead."""

    def on_part_end(self) -> None:
        if self._current_part.file is None:
            try:
                bytes(self._current_part.data).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise api_error("invalid_utf8", f"Form field text is not valid UTF-8 (byte {exc.start}).",
                                hint="Send text encoded as UTF-8.") from None
        super().on_part_end()


async def _from_multipart(body: bytes, headers: Headers) -> RawInputs:
    parser = _StrictUtf8Parser(headers, _once(body), max_files=2, max_fields=4)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise api_error("invalid_request", f"Malformed multipart body: {exc.message}.") from None
    raw = RawInputs()
    try:
        unknown = sorted(set(form.keys()) - set(MODALITIES))
        if unknown:
            raise api_error("invalid_request", f"Unknown form field(s): {', '.join(unknown)[:200]}.",
                            hint=f"Fields: {', '.join(MODALITIES)}.")
        for name in MODALITIES:
            values = form.getlist(name)
            if len(values) > 1:
                raise api_error("invalid_request", f"Form field {name!r} was sent {len(values)} times.")
            if not values:
                continue
            value = values[0]
            data = await value.read() if isinstance(value, UploadFile) else value.encode("utf-8")
            if name == "text":
                raw.text = data
            elif data:
                setattr(raw, name, data)
    finally:
        await form.close()
    return raw


async def parse_body(body: bytes, headers: Headers, query: Mapping[str, str]) -> RawInputs:
    """Split a request body into its raw parts by ``Content-Type``.

    Args:
        body: The whole body (already capped by :func:`edgemm.serve.app.read_body`).
        headers: The request headers (``Content-Type`` and the multipart boundary).
        query: The query parameters; ``text`` pairs a raw image or audio body with its text.

    Returns:
        The raw parts, at least one of them present.

    Raises:
        ApiError: Unsupported media type, malformed multipart/JSON, too deep JSON, invalid UTF-8.
    """
    kind, params = _media_type(headers.get("content-type", ""))
    if kind == "multipart/form-data":
        raw = await _from_multipart(body, headers)
    elif kind == "application/json":
        raw = _from_json(body)
    elif kind == "text/plain":
        if params.get("charset", "utf-8") not in ("utf-8", "utf8"):
            raise api_error("unsupported_media_type", "Text must be sent as UTF-8.",
                            hint="Use Content-Type: text/plain; charset=utf-8.")
        raw = RawInputs(text=body)
    elif kind.startswith("image/"):
        raw = RawInputs(image=body)
    elif kind in _WAV_TYPES:
        raw = RawInputs(audio=body)
    else:
        raise api_error("unsupported_media_type", f"Cannot read a {kind or 'body without a content type'}.",
                        hint="Send multipart/form-data, application/json, image/*, audio/wav or text/plain.")
    if "text" in query and kind not in ("multipart/form-data", "application/json", "text/plain"):
        raw.text = query["text"]
    if not raw.given():
        raise api_error("missing_modality", "The request has no input.", hint="Send text, an image or audio.")
    return raw


def decode_inputs(raw: RawInputs, manifest: Manifest, config: ServeConfig) -> DecodedInputs:
    """Decode and check one request against the bundle's and the server's caps (CPU-bound).

    Args:
        raw: The request's raw parts.
        manifest: The serving bundle's manifest (modalities, preprocessing caps and formats).
        config: The server's own caps (the tighter of the two wins).

    Returns:
        The decoded inputs, ready to join a batch.

    Raises:
        ApiError: Invalid UTF-8, unknown or missing modality, over a cap, unsupported media.
    """
    modalities = manifest.modalities
    unknown = [m for m in raw.given() if m not in modalities]
    if unknown:
        raise api_error("invalid_input", f"This model does not take {', '.join(unknown)}.",
                        hint=f"It takes: {', '.join(modalities)}.")
    missing = [m for m in manifest.required_modalities() if getattr(raw, m) is None]
    if missing:
        raise api_error("missing_modality", f"This model needs {', '.join(missing)} with every request.")
    prep = manifest.preprocessing
    out = DecodedInputs()
    try:
        if raw.text is not None:
            if isinstance(raw.text, bytes):
                try:
                    raw.text = raw.text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise api_error("invalid_utf8", f"Text is not valid UTF-8 (byte {exc.start}).",
                                    hint="Send text encoded as UTF-8.") from None
            cap = min(config.max_text_chars, int(prep.get("text", {}).get("max_chars", config.max_text_chars)))
            if isinstance(raw.text, list):
                if manifest.task != "image_text_similarity":
                    raise api_error("invalid_request", "Only image–text similarity models take a list of texts.")
                out.text = [check_text(t, max_chars=cap) for t in raw.text]
            else:
                out.text = check_text(raw.text, max_chars=cap)
        if raw.image is not None:
            cfg = prep["image"]
            out.image = decode_image(raw.image,
                                     max_pixels=min(config.max_pixels, int(cfg.get("max_pixels", config.max_pixels))),
                                     formats=cfg.get("formats", DEFAULT_FORMATS),
                                     max_bytes=min(config.max_body_bytes, int(cfg.get("max_bytes", DEFAULT_MAX_BYTES))))
        if raw.audio is not None:
            cfg = prep["audio"]
            rate = int(cfg["sampling_rate"])
            seconds = min(config.max_audio_seconds, float(cfg.get("max_seconds") or config.max_audio_seconds))
            out.audio = (load_audio(raw.audio, target_rate=rate, max_seconds=seconds), rate)
    except EdgemmError as exc:
        raise from_edgemm(exc) from None
    return out
