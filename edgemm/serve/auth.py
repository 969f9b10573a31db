"""Who may call the API: the TCP peer decides what is local; an API token when exposed; a rate limit.

* **Local** means the connection's peer address (ASGI ``scope["client"]``) is in
  ``ServeConfig.local_networks`` (loopback by default). The ``Host`` header never makes a
  request local: a loopback name in ``Host`` from any other peer is refused (421).
* **Exposed** (``--expose``), every endpoint but the health checks, the kiosk page and its
  static files needs ``Authorization: Bearer <token>``, from any peer (a reverse proxy on the
  kiosk makes every request look local). The token is generated on first use
  (``secrets.token_urlsafe(32)``), kept in a ``0600`` file and compared in constant time.
* **The kiosk page gets the token** from ``GET /v1/kiosk/token``, answered only to a local peer
  that names the server by a loopback name; its script then sends the header.
* **Rate limit**: a token bucket per non-local client address (an IPv6 client by its /64);
  the excess gets 429 ``rate_limited`` with ``Retry-After``. Local peers are the kiosk itself and
  are bounded by the queue and deadlines instead.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import math
import os
import re
import secrets
import stat
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from edgemm.errors import UsageError
from edgemm.serve.config import LOOPBACK_HOSTS, ServeConfig
from edgemm.serve.httperrors import ApiError, api_error

TOKEN_ENDPOINT = "/v1/kiosk/token"
# Paths anyone may call when exposed: health checks, the page and what it needs to get going.
OPEN_PATHS = frozenset({"/v1/health/live", "/v1/health/ready", "/", TOKEN_ENDPOINT})
_STATIC_PATH = re.compile(r"/static/[^/]+")
# RFC 6750 b64token characters; at least 32 of them (what token_urlsafe(32) gives is 43).
_TOKEN_FORMAT = re.compile(r"[A-Za-z0-9._~+/=-]{32,512}")
# Buckets kept at most: past this, the least recently seen client starts afresh.
MAX_TRACKED_CLIENTS = 4096

_TOKEN_HINT = ("Delete it to have a new token generated, or write one of 32 to 512 characters "
               "(A-Z a-z 0-9 - . _ ~ + / =) into it with mode 0600.")


def default_token_file() -> Path:
    """Where the API token lives without ``--token-file``: ``$XDG_STATE_HOME/edgemm/api-token``
    (``~/.local/state/edgemm/api-token``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edgemm" / "api-token"


def token_path(config: ServeConfig) -> Path:
    """The token file ``config`` uses (``--token-file`` or :func:`default_token_file`)."""
    return Path(config.token_file) if config.token_file is not None else default_token_file()


def load_or_create_token(path: Path) -> str:
    """The API token kept in ``path``, generated (``secrets.token_urlsafe(32)``, mode 0600) on first use.

    The file is created beside its final name and linked into place, so two servers starting at
    once agree on one token and neither reads a half-written file.

    Args:
        path: The token file.

    Returns:
        The token.

    Raises:
        UsageError: The file or its directory cannot be read or created, is not a regular file
            owned by this user, is readable by others, or holds no valid token.
    """
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".api-token-")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):  # another server made it first: use theirs
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"Cannot create the API token file {path}: {exc.strerror or exc}.",
                         hint="Choose a writable place with --token-file.") from None
    return _read_token(path)


def _read_token(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UsageError(f"Cannot read the API token file {path}: {exc.strerror or exc}.",
                         hint="It must be a regular file (not a link) readable by this user; or use --token-file.") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"The API token file {path} is not a regular file.", hint="Point --token-file at a file.")
        if st.st_uid != os.geteuid():
            raise UsageError(f"The API token file {path} belongs to another user (uid {st.st_uid}).",
                             hint="It must belong to the user the server runs as.")
        if st.st_mode & 0o077:
            raise UsageError(f"The API token file {path} is readable by other users (mode {st.st_mode & 0o777:o}).",
                             hint=f"chmod 600 {path}")
        text = fh.read(1024).decode("ascii", errors="replace").strip()
    if not _TOKEN_FORMAT.fullmatch(text):
        raise UsageError(f"The API token file {path} does not hold a valid token.", hint=_TOKEN_HINT)
    return text


class RateLimiter:
    """A token bucket per client: ``rate`` requests per second on average, bursts of ``burst``.

    Args:
        rate: Tokens added per second.
        burst: Bucket size (what a client that was quiet may send at once).
        max_clients: Buckets kept; the least recently seen client is forgotten first.
        clock: Monotonic seconds (a test may pass its own).
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = MAX_TRACKED_CLIENTS,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float:
        """Spend one token of ``client``'s bucket.

        Returns:
            0.0 when the request may proceed, else the seconds until it would.
        """
        now = self.clock()
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


def _peer_address(client: tuple[str, int] | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not client:
        return None
    try:
        addr = ipaddress.ip_address(str(client[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return addr


def _client_key(addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str:
    if addr is None:
        return "unknown"
    if addr.version == 6:  # one IPv6 client usually holds a whole /64
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def _host_name(headers: Headers) -> str:
    try:
        return (urlsplit("//" + headers.get("host", "")).hostname or "").lower()
    except ValueError:
        return ""


def _refuse(error: ApiError) -> Response:
    # Security headers and the metrics count are added by the app's envelope middleware.
    return Response(error.json_bytes(), status_code=error.status, headers=error.headers, media_type="application/json")


class AccessGate:
    """The access rules of one app (see the module docstring).

    Args:
        config: Exposure, token file, local networks and rate limit.

    Raises:
        UsageError: Exposed, and the token file cannot be read or created.
    """

    def __init__(self, config: ServeConfig):
        self.networks = config.local_networks
        self.token: bytes | None = load_or_create_token(token_path(config)).encode("ascii") if config.expose else None
        self.limiter = RateLimiter(config.rate_limit, config.rate_burst) if config.rate_limit > 0 else None

    def is_local(self, client: tuple[str, int] | None) -> bool:
        """Whether a connection from ``client`` (ASGI ``scope["client"]``) is the kiosk itself."""
        addr = _peer_address(client)
        return addr is not None and any(addr in net for net in self.networks)

    def refusal(self, scope: Scope) -> ApiError | None:
        """Why the request of ``scope`` is refused (rate, Host, token), or ``None`` to let it through."""
        client = scope.get("client")
        local = self.is_local(client)
        if not local and self.limiter is not None:
            wait = self.limiter.take(_client_key(_peer_address(client)))
            if wait > 0:
                return api_error("rate_limited", "Too many requests from this address.",
                                 hint="Slow down and retry after the time Retry-After gives.",
                                 headers={"Retry-After": str(max(1, math.ceil(wait)))})
        headers = Headers(scope=scope)
        if not local and _host_name(headers) in LOOPBACK_HOSTS:
            return api_error("host_not_allowed", "Loopback names are answered only to the kiosk itself.",
                             hint="Call the server by the name it was given with --allow-host.")
        path = scope.get("path", "")
        if self.token is None or path in OPEN_PATHS or _STATIC_PATH.fullmatch(path):
            return None
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode("latin-1"), self.token):
            return None
        challenge = 'Bearer realm="edgemm"' + (', error="invalid_token"' if credential else "")
        return api_error("unauthorized", "This API needs its token: send Authorization: Bearer <token>.",
                         hint="The kiosk's maintainer has it (the server's --token-file).",
                         headers={"WWW-Authenticate": challenge})

    async def kiosk_token(self, request: Request) -> Response:
        """``GET /v1/kiosk/token``: ``{"token": ...}`` for the kiosk's own page (``null`` when none is
        needed); 403 ``forbidden`` unless the peer is local and names the server by a loopback name."""
        if self.token is None:
            return JSONResponse({"token": None}, headers={"cache-control": "no-store"})
        host = _host_name(request.headers)
        origin = request.headers.get("origin")
        same_origin = origin is None or urlsplit(origin.lower()).netloc == request.headers.get("host", "").lower()
        if not (self.is_local(request.scope.get("client")) and host in LOOPBACK_HOSTS and same_origin):
            return _refuse(api_error("forbidden", "The API token is given only to the kiosk's own page.",
                                     hint="Open the page on the kiosk itself (http://127.0.0.1:<port>/), "
                                          "or ask its maintainer for the token."))
        return JSONResponse({"token": self.token.decode("ascii")}, headers={"cache-control": "no-store"})


class AuthMiddleware:
    """Applies :meth:`AccessGate.refusal` before routing (inside the Host guard).

    Args:
        app: The ASGI app it protects.
        gate: The rules.
    """

    def __init__(self, app: ASGIApp, gate: AccessGate):
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.gate.refusal(scope)
            if refusal is not None:
                await _refuse(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)
