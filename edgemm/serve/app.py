"""The ASGI application: guard middleware, the ``/v1`` API, metrics and the kiosk page."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edgemm.serve.auth import TOKEN_ENDPOINT, AccessGate, AuthMiddleware
from edgemm.serve.batcher import MicroBatcher
from edgemm.serve.budget import MemoryBudget
from edgemm.serve.config import ServeConfig
from edgemm.serve.envelope import EnvelopeMiddleware
from edgemm.serve.host import GPU_DEVICES, ModelHost
from edgemm.serve.httperrors import ApiError, api_error
from edgemm.serve.inputs import RequestDecoder, image_limits, parse_body
from edgemm.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edgemm.serve.metrics import Metrics

log = logging.getLogger("edgemm.serve")

_STATIC = {"kiosk.js": "text/javascript; charset=utf-8", "kiosk.css": "text/css; charset=utf-8"}


def error_response(error: ApiError) -> Response:
    """The JSON answer for ``error``: its status, ``{"error": {...}}`` body and headers.

    (connections: the body is ASCII-escaped JSON, which no message can fail to encode; security
    headers and metrics are added by :class:`~edgemm.serve.envelope.EnvelopeMiddleware`.)
    """
    return Response(error.json_bytes(), status_code=error.status, headers=error.headers,
                    media_type="application/json")


class GuardMiddleware:
    """Host allow-list and Origin check (DNS rebinding, cross-site posts).

    Runs before routing, so a foreign Host never reaches a handler or the body reader.

    Args:
        app: The ASGI app it guards.
        config: The Host allow-list and the extra allowed origins.
    """

    def __init__(self, app: ASGIApp, config: ServeConfig):
        self.app = app
        self.allowed = config.host_allow_list
        self.origins = {o.rstrip("/").lower() for o in config.allowed_origins}

    def _refusal(self, scope: Scope) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if _hostname(host) not in self.allowed:
            return api_error("host_not_allowed", "This server does not answer to that Host name.",
                             hint="Use http://127.0.0.1:<port>/ on the kiosk itself, or start it with --allow-host.")
        origin = headers.get("origin")
        if origin is not None:
            low = origin.rstrip("/").lower()
            same = urlsplit(low).netloc == host.lower()
            if not (same or low in self.origins):
                return api_error("origin_not_allowed", "Cross-origin requests are refused.",
                                 hint="Open the kiosk page from this server, or start it with --allow-origin.")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        # connections: security headers and the metrics count come from the envelope, for every answer.
        if refusal is not None:
            await error_response(refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8310
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``cap`` (chunked bodies too).

    Args:
        request: The request whose body streams in.
        cap: The most bytes accepted.

    Returns:
        The whole body.

    Raises:
        ApiError: ``body_too_large`` (declared or streamed over ``cap``), ``invalid_request``
            (a Content-Length that is not a number).
        ClientDisconnect: The client went away while sending.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise api_error("invalid_request", "Content-Length is not a number.")
        if int(declared) > cap:
            raise api_error("body_too_large", f"The body is {int(declared)} bytes; the limit is {cap}.",
                            hint="Send a smaller photo or a shorter recording.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise api_error("body_too_large", f"The body is over the limit of {cap} bytes.",
                            hint="Send a smaller photo or a shorter recording.")
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait_or_disconnect(request: Request, future: asyncio.Future) -> bool:
    """Wait for ``future``; return False as soon as the client disconnects instead."""

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    return future in done


def build_app(config: ServeConfig, host: ModelHost, metrics: Metrics | None = None,
              on_fatal: Callable[[str], None] | None = None) -> ASGIApp:
    """The kiosk ASGI app over ``host`` (which the caller loads; see :func:`edgemm.serve.server.serve`).

    Args:
        config: Guards, limits and batching.
        host: Owns the serving predictor; the app starts its bundle watcher with the lifespan.
        metrics: Where the app records (default: ``host.metrics``); ``/metrics`` exposes it.
        on_fatal: Called on the event loop with a reason once the GPU context is poisoned and
            the failing requests are answered; it should end the process (exit status 70).

    Returns:
        The ASGI app: the Starlette app with its guards, inside the
        :class:`~edgemm.serve.envelope.EnvelopeMiddleware` (error shape, headers, metrics).
    """
    metrics = metrics or host.metrics
    gate = AccessGate(config)  # auth: local peers, the API token when exposed, rate limit
    batcher = MicroBatcher(host, config, metrics, on_fatal=on_fatal)
    # memory: requests decode within one server-wide budget and their deadline
    decoder = RequestDecoder(config, MemoryBudget(decode_budget=config.decode_budget, memory_max=config.memory_max))
    metrics.watch("edgemm_decode_bytes_in_flight", lambda: decoder.budget.in_use)
    metrics.watch("edgemm_queue_depth", lambda: batcher.depth)
    metrics.watch("edgemm_ready", lambda: float(host.ready))
    metrics.watch("edgemm_degraded", lambda: float(bool(host.current and host.current.predictor.degraded)))
    metrics.watch("edgemm_on_gpu", lambda: float(bool(host.current and host.current.predictor.device in GPU_DEVICES)))
    metrics.watch_model(host.info)

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        deadline = time.monotonic() + config.deadline_s  # memory: the deadline runs from the arrival
        code: str | None = None
        lease = None
        try:
            if not host.ready:
                raise api_error("not_ready", f"The model is not ready: {host.not_ready_reason}",
                                headers={"Retry-After": "5"})
            cur = host.current
            body = await read_body(request, config.max_body_bytes)
            raw = await parse_body(body, request.headers, request.query_params)
            decoded, lease = await decoder.decode(raw, cur.predictor.manifest, deadline)
            job = batcher.submit(decoded, deadline=deadline, lease=lease)
            if not await _wait_or_disconnect(request, job.future):
                job.cancelled = True
                metrics.count_cancelled()
                return Response(status_code=499)
            prediction = job.future.result()
            payload = {**prediction.to_dict(), "model": {
                "name": cur.predictor.manifest.name, "artifact": job.artifact,
                "device": cur.predictor.device, "batch": job.batch_size}}
            response: Response = JSONResponse(payload, headers={"cache-control": "no-store"})
        except ApiError as exc:
            code = exc.code
            response = error_response(exc)
        except ClientDisconnect:
            metrics.count_cancelled()
            return Response(status_code=499)
        finally:
            if lease is not None:  # memory: the batcher holds its own share while it needs the inputs
                lease.release()
            # memory: an error answer's traceback holds this frame, which would hold the job and so
            # that same error: a cycle that keeps the decoded image until the next full collection.
            job = None
        elapsed = time.perf_counter() - started
        # Never the payload: status, code and time only.
        log.info("POST /v1/predict %d%s %.1f ms", response.status_code, f" {code}" if code else "", elapsed * 1e3)
        return response

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def ready(request: Request) -> Response:
        cur = host.current
        body: dict[str, Any] = {"ready": host.ready, "policy": config.device_policy}
        if cur is not None:
            body.update(device=cur.predictor.device, degraded=cur.predictor.degraded,
                        artifact=cur.predictor.artifact.name)
        if not host.ready:
            body["error"] = {"code": "not_ready", "message": host.not_ready_reason}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse(body)

    async def model(request: Request) -> Response:
        cur = host.current
        if cur is None:
            return error_response(api_error("not_ready", f"No model is loaded: {host.not_ready_reason}"))
        m = cur.predictor.manifest
        limits = {"max_body_bytes": config.max_body_bytes, "max_text_chars": config.max_text_chars,
                  # memory: the pixel cap in force for this bundle (sized to its preprocessing by default)
                  "max_pixels": image_limits(m, config).max_pixels if "image" in m.modalities else config.max_pixels,
                  "max_audio_seconds": config.max_audio_seconds}
        return JSONResponse({
            "name": m.name, "task": m.task, "labels": m.labels, "version": cur.version,
            # The kiosk page's words per language (edgemm.bundle.display); null: it humanises the labels.
            "display": m.display or None,
            "modalities": {k: {"required": v.required} for k, v in m.modality_specs().items()},
            "image_formats": m.preprocessing.get("image", {}).get("formats"),
            "artifact": {"name": cur.predictor.artifact.name, "precision": cur.predictor.artifact.precision},
            "device": cur.predictor.device, "degraded": cur.predictor.degraded, "limits": limits,
            "batching": {"max_batch": config.max_batch, "max_delay_ms": config.max_delay_ms},
        })

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    page = resources.files("edgemm.serve") / "static"

    async def index(request: Request) -> Response:
        return Response(page.joinpath("index.html").read_bytes(), media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return error_response(api_error("not_found", "No such file."))
        return Response(page.joinpath(name).read_bytes(), media_type=_STATIC[name])

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
        return error_response(api_error(code, "No such endpoint." if status == 404 else "Method not allowed."))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        host.start_watcher()
        try:
            yield
        finally:
            host.stop()
            await batcher.stop()

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/v1/health/live", live),
        Route("/v1/health/ready", ready),
        Route("/v1/model", model),
        Route("/metrics", prometheus),
        Route(TOKEN_ENDPOINT, gate.kiosk_token),  # auth: the kiosk page's token, loopback only
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    # connections: /v1/predict/ is 404 not_found, not a 307 to a Location built from the Host header.
    app.router.redirect_slashes = False
    # auth: added first, so it runs after the Host/Origin guard.
    app.add_middleware(AuthMiddleware, gate=gate)
    app.add_middleware(GuardMiddleware, config=config)
    # connections: outermost, the one error shape, security headers and the metrics count of every answer.
    return EnvelopeMiddleware(app, metrics)
