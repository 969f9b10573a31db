"""Server settings: one frozen dataclass, with defaults sized for a classroom kiosk."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from edgemm.errors import UsageError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEVICE_POLICIES = ("allow_cpu", "require_gpu")
# (auth) Peers that count as the kiosk itself unless --local-peer says otherwise.
_LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``edgemm serve`` can be told.

    Attributes:
        bundle: A bundle directory to serve as is (no hot swap), or ``None`` with ``store``.
        store: A device store (``edgemm install`` target); its active bundle is served and a newly
            committed one is picked up without dropping requests.
        host / port: Where to listen. Anything but loopback needs ``expose=True``.
        expose: Acknowledges that the API is reachable from other machines.
        allowed_hosts: Host header values accepted (DNS-rebinding guard); loopback names always.
        allowed_origins: Extra browser origins allowed to call the API (same origin always is).
        device: ``auto`` / ``cpu`` / ``cuda`` for the predictor.
        artifact: Serve this artifact by name (``None``: the best this machine can run, the
            artifact ``predict`` and ``bench`` choose too).
        device_policy: ``allow_cpu`` (a GPU that is missing or fell back is reported as degraded)
            or ``require_gpu`` (the server refuses to become ready without one).
        max_body_bytes: Request body cap, enforced while the body streams in.
        max_text_chars / max_pixels / max_audio_seconds: Input caps (the bundle's own caps apply
            too; the tighter wins). ``max_pixels=None`` (memory): sized to what the bundle's
            preprocessing needs (see :func:`edgemm.serve.inputs.image_limits`).
        max_batch / max_delay_ms: Micro-batching: at most this many requests per model call, and
            at most this long waiting for more after the first.
        max_queue: Requests waiting beyond this get 503 with Retry-After.
        deadline_s: A request not started within this time gets 503 instead of a late answer.
        reload_interval_s: How often the store's active bundle is checked for a change.
        threads: ONNX Runtime intra-op threads.
        token_file: (auth) Where the API token that ``expose`` requires is kept (created 0600 on
            first use); ``None``: ``$XDG_STATE_HOME/edgemm/api-token``.
        local_peers: (auth) Peer addresses or networks that count as the kiosk itself (they may
            fetch the token for the kiosk page and use loopback Host names); empty: loopback.
        rate_limit / rate_burst: (auth) Requests per second, and burst, per non-local client
            (429 beyond); ``rate_limit=0`` turns the limit off.
        verify_interval_s: (integrity) Seconds between re-verifications of the served bundle's
            files (also on SIGHUP); 0: only on SIGHUP.
        header_timeout_s / body_timeout_s: (connections) Seconds a client has to send its request
            line and headers; seconds a request body may send nothing (edgemm.serve.protocol).
        min_body_rate: (connections) Bytes per second a body must average beyond ``body_timeout_s``.
        max_connections: (connections) Open connections in all; ``None``: half of the open-file limit.
        max_client_connections / max_client_requests: (connections) Open connections and requests
            in flight per client address.
        memory_max: (memory) The memory limit the server lives under, in bytes; ``None``: the
            cgroup's limit, else a default (see :func:`edgemm.serve.budget.memory_limit`).
        decode_budget: (memory) Bytes of decoding in flight across all requests; ``None``:
            derived from the memory limit and the model's resident size (edgemm.serve.budget).

    Raises:
        UsageError: Neither or both of ``bundle`` and ``store``, an unknown device policy, a
            public address without ``expose``, or a limit out of range.
    """

    bundle: Path | None = None
    store: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8310
    expose: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    device: str = "auto"
    artifact: str | None = None
    device_policy: str = "allow_cpu"
    max_body_bytes: int = 12 * 1024 * 1024
    max_text_chars: int = 2000
    max_pixels: int | None = None  # memory: None sizes it to the bundle's preprocessing
    max_audio_seconds: float = 30.0
    max_batch: int = 16
    max_delay_ms: float = 5.0
    max_queue: int = 256
    deadline_s: float = 10.0
    reload_interval_s: float = 2.0
    threads: int | None = None
    # -- auth and integrity (edgemm.serve.auth, ModelHost.verify) --
    token_file: Path | None = None
    local_peers: tuple[str, ...] = ()
    rate_limit: float = 10.0
    rate_burst: int = 20
    verify_interval_s: float = 600.0
    # -- connections (edgemm.serve.protocol): read timeouts and connection limits --
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    min_body_rate: int = 64 * 1024
    max_connections: int | None = None
    max_client_connections: int = 128
    max_client_requests: int = 64
    # -- memory (edgemm.serve.budget): the decode budget and the limit it is derived from --
    memory_max: int | None = None
    decode_budget: int | None = None

    def __post_init__(self) -> None:
        if (self.bundle is None) == (self.store is None):
            raise UsageError("Serve either a bundle directory or a device store, not both or neither.",
                             hint="edgemm serve BUNDLE, or edgemm serve --store DIR.")
        if self.device_policy not in DEVICE_POLICIES:
            raise UsageError(f"Unknown device policy {self.device_policy!r}.",
                             hint=f"Choose one of: {', '.join(DEVICE_POLICIES)}.")
        if self.host not in LOOPBACK_HOSTS and not self.expose:
            raise UsageError(f"Refusing to listen on {self.host}: the kiosk API binds to loopback by default.",
                             hint="Pass --expose to make it reachable from other machines (and set --allow-host).")
        for name in ("max_body_bytes", "max_text_chars", "max_batch", "max_queue"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be at least 1.")
        if self.max_delay_ms < 0 or self.deadline_s <= 0 or self.max_audio_seconds <= 0:
            raise UsageError("max_delay_ms must be >= 0; deadline_s and max_audio_seconds > 0.")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"Port {self.port} is out of range.")
        # -- auth and integrity --
        if self.rate_limit < 0 or self.rate_burst < 1 or self.verify_interval_s < 0:
            raise UsageError("rate_limit and verify_interval_s must be >= 0 (0 turns them off); rate_burst >= 1.")
        _ = self.local_networks  # refuses a --local-peer that is not an address or network
        # -- connections --
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0:
            raise UsageError("header_timeout_s and body_timeout_s must be > 0.")
        for name in ("min_body_rate", "max_client_connections", "max_client_requests"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be at least 1.")
        if self.max_connections is not None and self.max_connections < 1:
            raise UsageError("max_connections must be at least 1.")
        # -- memory --
        for name in ("max_pixels", "memory_max", "decode_budget"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be at least 1.")

    @property
    def local_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """(auth) The peer networks that count as the kiosk itself (``local_peers``, else loopback).

        Raises:
            UsageError: A ``local_peers`` entry is not an IP address or network.
        """
        try:
            return tuple(ipaddress.ip_network(p, strict=False) for p in self.local_peers or _LOOPBACK_NETWORKS)
        except ValueError as exc:
            raise UsageError(f"--local-peer: {exc}.", hint="Give an address or network, e.g. 127.0.0.1 or 10.0.0.0/24.") from None

    @property
    def host_allow_list(self) -> frozenset[str]:
        """Host header names (without port) the server answers to."""
        names = {*LOOPBACK_HOSTS, "[::1]", *self.allowed_hosts}
        if self.expose and self.host not in ("0.0.0.0", "::"):
            names.add(self.host)
        return frozenset(n.lower() for n in names)
