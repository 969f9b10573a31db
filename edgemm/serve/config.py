"""Server settings: one frozen dataclass, with defaults sized for a classroom kiosk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgemm.errors import UsageError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEVICE_POLICIES = ("allow_cpu", "require_gpu")


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
        device_policy: ``allow_cpu`` (a GPU that is missing or fell back is reported as degraded)
            or ``require_gpu`` (the server refuses to become ready without one).
        max_body_bytes: Request body cap, enforced while the body streams in.
        max_text_chars / max_pixels / max_audio_seconds: Input caps (the bundle's own caps apply
            too; the tighter wins).
        max_batch / max_delay_ms: Micro-batching: at most this many requests per model call, and
            at most this long waiting for more after the first.
        max_queue: Requests waiting beyond this get 503 with Retry-After.
        deadline_s: A request not started within this time gets 503 instead of a late answer.
        reload_interval_s: How often the store's active bundle is checked for a change.
        threads: ONNX Runtime intra-op threads.

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
    device_policy: str = "allow_cpu"
    max_body_bytes: int = 12 * 1024 * 1024
    max_text_chars: int = 2000
    max_pixels: int = 24_000_000
    max_audio_seconds: float = 30.0
    max_batch: int = 16
    max_delay_ms: float = 5.0
    max_queue: int = 256
    deadline_s: float = 10.0
    reload_interval_s: float = 2.0
    threads: int | None = None

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
        for name in ("max_body_bytes", "max_text_chars", "max_pixels", "max_batch", "max_queue"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be at least 1.")
        if self.max_delay_ms < 0 or self.deadline_s <= 0 or self.max_audio_seconds <= 0:
            raise UsageError("max_delay_ms must be >= 0; deadline_s and max_audio_seconds > 0.")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"Port {self.port} is out of range.")

    @property
    def host_allow_list(self) -> frozenset[str]:
        """Host header names (without port) the server answers to."""
        names = {*LOOPBACK_HOSTS, "[::1]", *self.allowed_hosts}
        if self.expose and self.host not in ("0.0.0.0", "::"):
            names.add(self.host)
        return frozenset(n.lower() for n in names)
