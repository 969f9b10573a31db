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

import asyncio
import base64
import binascii
import concurrent.futures
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from edgemm.bundle.manifest import Manifest
from edgemm.errors import EdgemmError
from edgemm.runtime.preprocess.audio import load_audio
from edgemm.runtime.preprocess.image import DEFAULT_FORMATS, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from edgemm.runtime.preprocess.image.decode import PendingImage, image_bytes, open_image
from edgemm.runtime.preprocess.image.transforms import ImageRecipe, parse_image_section
from edgemm.runtime.preprocess.text import check_text
from edgemm.runtime.sessions import default_threads
from edgemm.serve.budget import Lease, MemoryBudget
from edgemm.serve.config import ServeConfig
from edgemm.serve.httperrors import ApiError, api_error, from_edgemm

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
    except ValueError:  # connections: an integer of over 4,300 digits (Python's int conversion limit)
        raise api_error("invalid_json", "The body has a number too long to read.") from None
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


# -- memory: decoding within the memory budget and the request's deadline (edgemm.serve.budget) --

# The pixel cap when --max-pixels is not given: a generous multiple of the pixels the bundle's
# preprocessing resizes to, and never below a 16 MP camera (4608x3456; phones take 12 MP,
# 4032x3024); the bundle's own cap applies too.
PIXEL_CAP_MULTIPLE = 256
PIXEL_CAP_FLOOR = 16_000_000
# A decoded image is rendered once more at full size (transparency composited onto the
# bundle's background) before its resize on the inference thread: a request holds twice its image.
_PREPROCESS_COPIES = 2
# Decoding a WAV holds the payload's copy, float32 samples, a float64 mix of the channels and the
# float32 result: at most 16 bytes per payload byte (an 8-bit file has one sample per byte).
_AUDIO_BYTES_PER_BYTE = 16


def deadline_exceeded(seconds: float, stage: str) -> ApiError:
    """The 503 for a request not answered within its deadline (which runs from its arrival).

    Args:
        seconds: The server's deadline (``--deadline``).
        stage: Where the request was when the deadline passed, e.g. ``"while it was decoded"``.
    """
    return api_error("deadline_exceeded", f"The request was not answered within its deadline of {seconds:g} s "
                     f"({stage}).", hint="The kiosk is busy; try again in a moment.", headers={"Retry-After": "1"})


@dataclass(frozen=True)
class ImageLimits:
    """How the server decodes a bundle's images.

    Attributes:
        max_pixels: The pixel cap (``--max-pixels``, else sized to the preprocessing; the
            bundle's own cap applies too).
        max_bytes: The payload cap (the body cap and the bundle's ``max_bytes``).
        formats: The formats the bundle accepts.
        reduce_to: The ``(width, height)`` the preprocessing resizes to (images may be reduced
            while decoding to a margin above it), or ``None`` where it does not resize.
    """

    max_pixels: int
    max_bytes: int
    formats: tuple[str, ...]
    reduce_to: tuple[int, int] | None


def _resize_target(recipe: ImageRecipe) -> tuple[int, int] | None:
    """The smallest ``(width, height)`` the preprocessing's resize needs, or ``None`` without one."""
    resize = recipe.resize
    if resize is None:
        return None
    if resize["mode"] == "exact":
        return int(resize["width"]), int(resize["height"])
    edge = int(resize["shortest_edge"])
    if resize["mode"] == "crop_pct":
        edge = int(edge / float(resize["crop_pct"]))
    return edge, edge  # the short side becomes ``edge``: both sides need at least that


def image_limits(manifest: Manifest, config: ServeConfig) -> ImageLimits:
    """How images for ``manifest``'s bundle are decoded by this server.

    Args:
        manifest: The serving bundle's manifest (it takes images).
        config: The server's caps.

    Returns:
        The caps, formats and reduction target.

    Raises:
        BundleError: The image preprocessing section is malformed (the bundle was checked at load).
    """
    section = manifest.preprocessing["image"]
    bundle_cap = int(section.get("max_pixels", DEFAULT_MAX_PIXELS))
    recipe = parse_image_section(section)
    target = _resize_target(recipe)
    if config.max_pixels is not None:
        cap = config.max_pixels
    else:
        needed = target or (recipe.center_crop[::-1] if recipe.center_crop else None)
        cap = PIXEL_CAP_FLOOR if needed is None else max(PIXEL_CAP_FLOOR, PIXEL_CAP_MULTIPLE * needed[0] * needed[1])
    return ImageLimits(max_pixels=min(cap, bundle_cap),
                       max_bytes=min(config.max_body_bytes, int(section.get("max_bytes", DEFAULT_MAX_BYTES))),
                       formats=tuple(section.get("formats", DEFAULT_FORMATS)), reduce_to=target)


def _checked_text(raw: RawInputs, manifest: Manifest, config: ServeConfig) -> str | list[str] | None:
    if raw.text is None:
        return None
    text = raw.text
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise api_error("invalid_utf8", f"Text is not valid UTF-8 (byte {exc.start}).",
                            hint="Send text encoded as UTF-8.") from None
    cap = min(config.max_text_chars, int(manifest.preprocessing.get("text", {}).get("max_chars", config.max_text_chars)))
    if isinstance(text, list):
        if manifest.task != "image_text_similarity":
            raise api_error("invalid_request", "Only image–text similarity models take a list of texts.")
        return [check_text(t, max_chars=cap) for t in text]
    return check_text(text, max_chars=cap)


def _prepare(raw: RawInputs, manifest: Manifest, config: ServeConfig) -> tuple[DecodedInputs, PendingImage | None]:
    """The cheap checks (modalities, text, the image's header), before any memory is committed."""
    modalities = manifest.modalities
    unknown = [m for m in raw.given() if m not in modalities]
    if unknown:
        raise api_error("invalid_input", f"This model does not take {', '.join(unknown)}.",
                        hint=f"It takes: {', '.join(modalities)}.")
    missing = [m for m in manifest.required_modalities() if getattr(raw, m) is None]
    if missing:
        raise api_error("missing_modality", f"This model needs {', '.join(missing)} with every request.")
    try:
        out = DecodedInputs(text=_checked_text(raw, manifest, config))
        pending = None
        if raw.image is not None:
            limits = image_limits(manifest, config)
            pending = open_image(raw.image, max_pixels=limits.max_pixels, formats=limits.formats,
                                 max_bytes=limits.max_bytes, reduce_to=limits.reduce_to)
    except EdgemmError as exc:
        raise from_edgemm(exc) from None
    return out, pending


def _decode(out: DecodedInputs, pending: PendingImage | None, raw: RawInputs, manifest: Manifest,
            config: ServeConfig) -> DecodedInputs:
    """The expensive part: the image's pixels and the recording's samples (CPU-bound)."""
    try:
        if pending is not None:
            out.image = pending.decode()
        if raw.audio is not None:
            cfg = manifest.preprocessing["audio"]
            rate = int(cfg["sampling_rate"])
            out.audio = (load_audio(raw.audio, target_rate=rate, max_seconds=_audio_seconds(manifest, config)), rate)
    except EdgemmError as exc:
        raise from_edgemm(exc) from None
    return out


def _audio_seconds(manifest: Manifest, config: ServeConfig) -> float:
    return min(config.max_audio_seconds,
               float(manifest.preprocessing["audio"].get("max_seconds") or config.max_audio_seconds))


def _before(deadline: float, seconds: float, stage: str, work: Callable[..., Any]) -> Callable[..., Any]:
    """``work``, unless the deadline passed while it waited for a thread."""

    def run(*args: Any) -> Any:
        if time.monotonic() > deadline:
            raise deadline_exceeded(seconds, stage)
        return work(*args)

    return run


class RequestDecoder:
    """Decodes requests off the event loop, each within the memory budget and its deadline.

    A request's modalities, text and image header are checked first; then the decode's
    worst-case memory is acquired from the budget (waiting behind earlier requests, up to the
    deadline); then it is decoded on a decode thread, and the lease shrinks to what the decoded
    inputs keep. The deadline runs from the request's arrival: a request still waiting or
    decoding when it passes gets ``deadline_exceeded`` at once, and whatever memory a decode in
    progress holds goes back to the budget when it ends.

    Args:
        config: The server's caps and deadline.
        budget: The server-wide memory budget.
    """

    def __init__(self, config: ServeConfig, budget: MemoryBudget):
        self.config = config
        self.budget = budget
        # As many decodes at once as the cores this process may use (at most 4, as for inference:
        # the kiosk's UI needs some); the budget bounds their memory.
        self._pool = concurrent.futures.ThreadPoolExecutor(default_threads(), thread_name_prefix="edgemm-decode")

    async def decode(self, raw: RawInputs, manifest: Manifest, deadline: float) -> tuple[DecodedInputs, Lease]:
        """Check, admit and decode one request.

        Args:
            raw: The request's raw parts.
            manifest: The serving bundle's manifest (modalities, preprocessing caps and formats).
            deadline: ``time.monotonic()`` by which the request must be answered.

        Returns:
            The decoded inputs and their lease on the budget; the caller releases the lease once
            its answer is sent (the batcher holds it too while the request is queued).

        Raises:
            ApiError: Invalid UTF-8, unknown or missing modality, over a cap, unsupported media,
                ``overloaded`` (the decode needs more than the whole budget) or
                ``deadline_exceeded``.
        """
        seconds = self.config.deadline_s
        out, pending = await self._in_thread(deadline, "while its inputs were checked",
                                             _prepare, raw, manifest, self.config)
        cost = 0 if pending is None else pending.working_bytes
        if raw.audio is not None:
            cfg = manifest.preprocessing["audio"]
            cost += len(raw.audio) * _AUDIO_BYTES_PER_BYTE + int(8 * _audio_seconds(manifest, self.config)
                                                                 * int(cfg["sampling_rate"]))
        try:
            lease = await self.budget.acquire(cost, deadline)
        except asyncio.TimeoutError:
            raise deadline_exceeded(seconds, "waiting for memory to decode it") from None
        decoded = await self._in_thread(deadline, "while it was decoded", _decode, out, pending, raw, manifest,
                                        self.config, lease=lease)
        kept = 0 if decoded.image is None else _PREPROCESS_COPIES * image_bytes(decoded.image)
        lease.shrink(kept + (0 if decoded.audio is None else int(decoded.audio[0].nbytes)))
        return decoded, lease

    async def _in_thread(self, deadline: float, stage: str, work: Callable[..., Any], *args: Any,
                         lease: Lease | None = None) -> Any:
        """Run ``work(*args)`` on a decode thread until the deadline.

        ``lease`` (held for the work's memory) is released if the work fails, or, when the
        deadline passes or the request is cancelled first, once the work has ended.
        """
        seconds = self.config.deadline_s
        job = self._pool.submit(_before(deadline, seconds, stage, work), *args)
        future = asyncio.wrap_future(job)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            _abandon(job, future, lease)
            raise deadline_exceeded(seconds, stage) from None
        except BaseException:  # the work failed, or the request was cancelled
            _abandon(job, future, lease)
            raise


def _abandon(job: concurrent.futures.Future, future: asyncio.Future, lease: Lease | None) -> None:
    """Nobody waits for ``job`` any more: cancel it if it has not started, and release ``lease``
    now if it is finished or never started, else on the event loop once it finishes."""
    future.add_done_callback(lambda done: done.cancelled() or done.exception())  # a late failure is nobody's
    if job.cancel() or lease is None:
        if lease is not None:
            lease.release()
        return
    loop = asyncio.get_running_loop()
    job.add_done_callback(lambda _: loop.call_soon_threadsafe(lease.release))
