"""Connection discipline: read timeouts, a cap on open connections, per-client limits.

uvicorn's h11 protocol, pinned (``uvicorn.Config(http=...)`` gets it from :func:`uvicorn_options`,
never ``"auto"``, which would switch to httptools when that happens to be installed), with:

* **A header read timeout**: a connection that has not sent a complete request line and headers
  within ``header_timeout_s`` of opening (or of the first byte of its next request on a kept-alive
  connection) is cut off: 408 ``header_timeout`` if it sent anything, else closed quietly. (uvicorn
  closes an idle kept-alive connection after its own keep-alive timeout, but has no timeout at
  all while a request is read.)
* **A body read timeout**: a body that sends nothing for ``body_timeout_s``, or that is still
  incomplete ``body_timeout_s + declared length / min_body_rate`` seconds after its headers, is
  cut off: 408 ``body_timeout`` if the app has not answered yet, the app sees the client as gone
  (so it drops what it buffered at once), and the connection closes.
* **A cap on open connections** (``max_connections``, derived from ``RLIMIT_NOFILE`` by
  :func:`connection_limits`) and **per-client caps** (``max_client_connections`` open,
  ``max_client_requests`` in flight, per peer address). A new connection over a cap displaces
  the connection of that scope that has waited longest without a complete request (idle or
  still sending headers: the slowest client loses, not the newest; it is told why in the cap's
  error, unless it is an idle kept-alive connection, closed quietly); when every connection of the
  scope is busy with a request, the new one is refused at once, before anything is read: 503
  ``too_many_connections`` or 429 ``too_many_client_connections``. A request over the per-client
  in-flight cap gets 429 ``too_many_client_requests``.
* **Malformed HTTP** (request line, headers, ``Content-Length``, oversized headers, an unknown
  ``Transfer-Encoding``) is answered in the one JSON error shape with the security headers
  (400 ``malformed_http``, 431 ``headers_too_large``, 501 ``unsupported_transfer_encoding``)
  instead of uvicorn's plain-text 400.

Every answer written here is built by :meth:`~edgemm.serve.httperrors.ApiError.http_bytes`
and counted in the metrics. The accept backlog is kept small (:attr:`ConnectionLimits.backlog`):
asyncio accepts up to a backlog of sockets per wake-up before any of them can be refused, so
the cap plus a few bursts stays far below the file limit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from edgemm.errors import UsageError
from edgemm.serve.config import ServeConfig
from edgemm.serve.httperrors import ApiError, api_error
from edgemm.serve.metrics import Metrics

log = logging.getLogger("edgemm.serve")

# Of the open-file limit, the share connections may use; the rest is for the model, its
# sessions' threads, logs, the store, and sockets accepted in a burst before they are refused.
CONNECTION_SHARE = 0.5
# The most file descriptors a server needs besides connections and accept bursts.
RESERVED_FDS = 256
# Seconds between two warnings of one kind (a flood would otherwise flood the log too).
WARN_EVERY_S = 10.0
# The most connections a derived cap allows, however high the open-file limit (a container's
# may be 2^20): each may hold MAX_HEADER_BYTES of unfinished headers, 128 MiB at this many.
MAX_DERIVED_CONNECTIONS = 8192
# The most bytes a request line and headers may take (431 beyond). h11 enforces it while they
# arrive in pieces (uvicorn's ``h11_max_incomplete_event_size``), :meth:`DisciplinedH11Protocol._run_app`
# when they arrive at once.
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """What :class:`DisciplinedH11Protocol` enforces (see the module docstring).

    Attributes:
        max_connections: Open connections, all clients together.
        max_client_connections: Open connections per peer address.
        max_client_requests: Requests in flight per peer address.
        header_timeout_s: Seconds to send a request line and headers.
        body_timeout_s: Seconds a body may send nothing.
        min_body_rate: Bytes per second a body must average (beyond ``body_timeout_s``).
        max_body_bytes: The body cap (the deadline of a chunked body assumes this length).
        backlog: The listen backlog (also the most sockets accepted in one wake-up).
    """

    max_connections: int
    max_client_connections: int
    max_client_requests: int
    header_timeout_s: float
    body_timeout_s: float
    min_body_rate: int
    max_body_bytes: int
    backlog: int

    def body_deadline_s(self, declared: int | None) -> float:
        """Seconds a body of ``declared`` bytes (``None``: chunked) may take in all."""
        length = self.max_body_bytes if declared is None else min(declared, self.max_body_bytes)
        return self.body_timeout_s + length / self.min_body_rate


def connection_limits(config: ServeConfig, open_file_limit: int | None = None) -> ConnectionLimits:
    """The limits for ``config`` under this process's open-file limit.

    Args:
        config: The server settings; ``max_connections=None`` derives the cap from the limit.
        open_file_limit: ``RLIMIT_NOFILE`` (soft); default: this process's.

    Returns:
        The cap is :data:`CONNECTION_SHARE` of the limit (less under a limit too small to keep
        :data:`RESERVED_FDS` beside it, never under 16, never over :data:`MAX_DERIVED_CONNECTIONS`);
        the backlog a sixteenth of the cap (16 to 128).

    Raises:
        UsageError: ``config.max_connections`` does not fit under the limit with room for the
            model, logs and accept bursts.
    """
    if open_file_limit is None:
        open_file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if open_file_limit == resource.RLIM_INFINITY:
            open_file_limit = 1 << 20
    # Half of the limit; under a small limit, what is left beside the reserve and bursts of 16.
    derived = max(16, min(int(open_file_limit * CONNECTION_SHARE), open_file_limit - RESERVED_FDS - 4 * 16,
                          MAX_DERIVED_CONNECTIONS))
    cap = derived if config.max_connections is None else config.max_connections
    backlog = min(128, max(16, cap // 16))
    room = open_file_limit - RESERVED_FDS - 4 * backlog
    if config.max_connections is not None and cap > room:
        raise UsageError(f"--max-connections {cap} does not fit under this process's open-file limit "
                         f"({open_file_limit}): at most {max(room, 0)}.",
                         hint="Leave it unset (half of the limit is used), or raise LimitNOFILE / ulimit -n.")
    return ConnectionLimits(
        max_connections=cap, max_client_connections=config.max_client_connections,
        max_client_requests=config.max_client_requests, header_timeout_s=config.header_timeout_s,
        body_timeout_s=config.body_timeout_s, min_body_rate=config.min_body_rate,
        max_body_bytes=config.max_body_bytes, backlog=backlog)


class ConnectionGuard:
    """The book-keeping every connection of one server shares: who is open, who is waiting.

    Connections are kept in the order they last began waiting for a request (opened, or
    finished an answer), overall and per peer address, so the one that has waited longest is
    found first. Everything runs on the event loop: no locks.

    Args:
        limits: The caps and timeouts.
        metrics: Where the answers written by the connection layer are counted.
    """

    def __init__(self, limits: ConnectionLimits, metrics: Metrics):
        self.limits = limits
        self.metrics = metrics
        self.open: dict[DisciplinedH11Protocol, None] = {}
        self.by_client: dict[str, dict[DisciplinedH11Protocol, None]] = {}
        self.in_flight: dict[str, int] = {}
        self._warned: dict[str, float] = {}

    def admit(self, conn: DisciplinedH11Protocol) -> ApiError | None:
        """Register a new connection, displacing a waiting one where a cap is reached.

        Returns:
            The refusal to send ``conn`` when it cannot be admitted (it is then not registered).
        """
        mine = self.by_client.get(conn.peer, {})
        if len(mine) >= self.limits.max_client_connections and not self._displace(mine, "too_many_client_connections"):
            return api_error("too_many_client_connections",
                             f"This client has {len(mine)} connections open, each busy with a request; "
                             f"the limit is {self.limits.max_client_connections}.",
                             hint="Reuse connections (keep-alive) and wait for answers.", headers={"Retry-After": "1"})
        if len(self.open) >= self.limits.max_connections and not self._displace(self.open, "too_many_connections"):
            return api_error("too_many_connections", "The server has as many connections open as it takes.",
                             hint="Try again shortly.", headers={"Retry-After": "1"})
        self.open[conn] = None
        self.by_client.setdefault(conn.peer, {})[conn] = None
        return None

    def _displace(self, pool: dict[DisciplinedH11Protocol, None], code: str) -> bool:
        victim = next((c for c in pool if c.waiting), None)
        if victim is None:
            self.warn(code, f"a new connection was refused ({code}): every connection in its scope is busy")
            return False
        self.warn(code, f"connection limit reached ({code}): closing the connection that waited longest")
        victim.cut(api_error(code, "The server needed this connection for another client; it had not sent a "
                                   "complete request.", hint="Send the whole request at once.")
                   # Only an idle kept-alive connection is closed quietly. A new one is answered
                   # even with no bytes read yet: the loop reads sockets in no fixed order, so its
                   # request may already wait unread in the socket (seen in a full test run under load).
                   if victim.partial or not victim.answered else None)
        self.release(victim)
        return True

    def release(self, conn: DisciplinedH11Protocol) -> None:
        """Forget ``conn`` (closed or displaced; idempotent)."""
        self.open.pop(conn, None)
        mine = self.by_client.get(conn.peer)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self.by_client[conn.peer]

    def requeue(self, conn: DisciplinedH11Protocol) -> None:
        """``conn`` begins waiting for its next request: it moves to the back of the queues."""
        if conn in self.open:
            self.open[conn] = self.open.pop(conn)
            mine = self.by_client[conn.peer]
            mine[conn] = mine.pop(conn)

    def count(self, error: ApiError) -> None:
        """Count an answer the connection layer wrote (its status and code)."""
        self.metrics.observe_response(error.status, 0.0, error.code)

    def warn(self, kind: str, message: str) -> None:
        """Log ``message`` at most once per :data:`WARN_EVERY_S` for each ``kind``."""
        now = time.monotonic()
        if now - self._warned.get(kind, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[kind] = now
            log.warning("%s (further ones within %.0f s are not logged)", message, WARN_EVERY_S)


class _Connection(h11.Connection):
    """h11's connection, keeping the last protocol error it raised (uvicorn only passes on a text).

    Attributes:
        error: The error.
        error_in_body: Whether it broke the body of a request whose headers were fine (a bad chunk).
    """

    error: h11.RemoteProtocolError | None = None
    error_in_body = False

    def next_event(self) -> Any:
        """h11's next event; a :class:`h11.RemoteProtocolError` is kept before it propagates."""
        in_body = self.their_state is h11.SEND_BODY
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error, self.error_in_body = exc, in_body
            raise


class DisciplinedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read timeouts, connection caps and the one error shape.

    Args:
        config / server_state / app_state / _loop: As uvicorn passes them.
        guard: The book-keeping shared by the server's connections.
    """

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, guard: ConnectionGuard) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard = guard
        self.limits = guard.limits
        max_incomplete = config.h11_max_incomplete_event_size
        self.conn: _Connection = (_Connection(h11.SERVER) if max_incomplete is None
                                  else _Connection(h11.SERVER, max_incomplete))
        self.peer = "unknown"
        self.answered = False  # an answer went out on it: when idle, it is a kept-alive connection
        self._app = self.app
        self.app = self._run_app
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_started = self._body_last = 0.0  # when the body began, last made progress (loop time)
        self._body_deadline = 0.0
        self._cycle: Any = None  # the request whose headers were seen last

    @property
    def waiting(self) -> bool:
        """No request in progress: idle, or still sending a request line and headers."""
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    @property
    def partial(self) -> bool:
        """Part of a request line or headers arrived (and no more): someone to answer."""
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])

    # -- connection life ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Admit the connection (or refuse it at once) and start its header timer."""
        super().connection_made(transport)
        self.peer = self.client[0] if self.client else "unknown"
        refusal = self.guard.admit(self)
        if refusal is not None:
            self.cut(refusal)
            return
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timers and forget the connection."""
        self._cancel_timers()
        self.guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed h11 as uvicorn does, then start or stop the read timers for what arrived."""
        if self._body_timer is not None:
            self._body_last = self.loop.time()
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        """An answer went out: the connection waits for its next request (kept alive)."""
        super().on_response_complete()
        self.answered = True
        self.guard.requeue(self)
        self._track()

    def _track(self) -> None:
        """Start or stop the timers after h11 processed what arrived (or a new cycle began)."""
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            # A kept-alive connection that began its next request: uvicorn only has an idle timer.
            if self._header_timer is None and self.partial:
                self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timed_out)
            return
        if self.cycle is not self._cycle:  # the headers of a new request are complete
            self._cycle = self.cycle
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if state is h11.SEND_BODY:
                now = self.loop.time()
                self._body_started = self._body_last = now
                self._body_deadline = now + self.limits.body_deadline_s(_declared_length(self.headers))
                self._arm_body_timer(now + self.limits.body_timeout_s)
        if state is not h11.SEND_BODY and self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # -- timeouts -------------------------------------------------------------------------
    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.waiting:
            return
        if self.partial:
            self.guard.warn("header_timeout", f"a client sent no complete request headers within "
                                              f"{self.limits.header_timeout_s:g} s: connection closed")
            self.cut(api_error("header_timeout", f"The request line and headers did not arrive within "
                                                 f"{self.limits.header_timeout_s:g} s.",
                               hint="Send the whole request at once."))
        else:  # opened and never used: nothing to answer
            self.cut(None)

    def _arm_body_timer(self, when: float) -> None:
        self._body_timer = self.loop.call_at(when, self._check_body)

    def _check_body(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the app has not taken what arrived: the wait is ours, not the client's
            self._body_last = now
            self._body_deadline = max(self._body_deadline, now + self.limits.body_timeout_s)
        stalled = now - self._body_last >= self.limits.body_timeout_s
        if stalled or now >= self._body_deadline:
            self.guard.warn("body_timeout", "a client's request body stalled or crawled: connection closed")
            answered = self.cycle is not None and self.cycle.response_started
            why = (f"sent nothing for {self.limits.body_timeout_s:g} s" if stalled
                   else f"was not complete within {self._body_deadline - self._body_started:.0f} s")
            self.cut(None if answered else api_error(
                "body_timeout", f"The request body {why}.", hint="Send the whole body without pauses."))
            return
        self._arm_body_timer(min(self._body_last + self.limits.body_timeout_s, self._body_deadline))

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer, self.timeout_keep_alive_task):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = self.timeout_keep_alive_task = None

    # -- answers written here ---------------------------------------------------------------
    def cut(self, error: ApiError | None) -> None:
        """End the connection now: ``error`` is written first (and counted) when there is one.

        A request in progress sees its client as gone: the app stops reading and drops the body
        it buffered at once, and nothing it sends later reaches the socket.
        """
        self._cancel_timers()
        if self.transport.is_closing():
            return
        if error is not None:
            self.transport.write(error.http_bytes())
            self.guard.count(error)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.body = bytearray()
            self.cycle.message_event.set()
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to malformed HTTP, in the one JSON shape (the status h11 suggests)."""
        hint = self.conn.error.error_status_hint if self.conn.error is not None else 400
        if self.conn.error_in_body and self.cycle is not None and self.cycle.response_started:
            self.cut(None)  # a bad chunk after the app began its answer: there is no second answer
            return
        if hint == 431:
            error = _headers_too_large()
        elif hint == 501:
            error = api_error("unsupported_transfer_encoding", "Only Transfer-Encoding: chunked is supported.",
                              hint="Send the body with a Content-Length, or chunked.")
        else:
            error = api_error("malformed_http", "The request is not valid HTTP/1.1.",
                              hint="Send a well-formed request line, headers and Content-Length.")
        self.cut(error)

    async def _run_app(self, scope: Any, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        """Run the app for one request within the header size and the peer's in-flight cap."""
        size = len(scope["raw_path"]) + len(scope["query_string"]) + sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if size > MAX_HEADER_BYTES:
            self.cut(_headers_too_large())
            return
        in_flight = self.guard.in_flight
        if in_flight.get(self.peer, 0) >= self.limits.max_client_requests:
            self.guard.warn("too_many_client_requests", "a client went over its in-flight request limit")
            error = api_error("too_many_client_requests",
                              f"This client has {self.limits.max_client_requests} requests in flight already.",
                              hint="Wait for answers before sending more.", headers={"Retry-After": "1"})
            self.cut(error)
            return
        in_flight[self.peer] = in_flight.get(self.peer, 0) + 1
        try:
            await self._app(scope, receive, send)
        finally:
            in_flight[self.peer] -= 1
            if not in_flight[self.peer]:
                del in_flight[self.peer]


def _headers_too_large() -> ApiError:
    return api_error("headers_too_large", f"The request line and headers are over {MAX_HEADER_BYTES // 1024} KiB.",
                     hint="Send fewer or shorter headers.")


def _declared_length(headers: list[tuple[bytes, bytes]] | None) -> int | None:
    for name, value in headers or ():
        if name == b"content-length":
            return int(value)  # h11 has checked it is a number
    return None


def uvicorn_options(guard: ConnectionGuard) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments that put ``guard`` in charge of the connections.

    :class:`DisciplinedH11Protocol` per connection (pinned: never uvicorn's ``"auto"`` choice), no
    WebSocket, the small backlog and header size of this module, and the TCP peer as the client
    (no ``X-Forwarded-For``: nothing sits in front of a kiosk server, and the peer decides what is
    local and whose limits apply).
    """
    return {"http": functools.partial(DisciplinedH11Protocol, guard=guard), "ws": "none",
            "backlog": guard.limits.backlog, "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
            "proxy_headers": False}
