"""Run the kiosk server: bind (loopback unless exposed), load in the background, serve."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from edgemm._deps import require_all
from edgemm.serve.config import LOOPBACK_HOSTS, ServeConfig

log = logging.getLogger("edgemm.serve")

# Exit status when the GPU context is poisoned: the supervisor (systemd Restart=always) starts
# a fresh process, the only way to get a working CUDA context back.
EXIT_GPU_POISONED = 70

# Seconds uvicorn waits for requests in flight when it stops, and how long after a poisoning the
# process exits even if that shutdown hangs (a wedged GPU may never return a call).
GRACEFUL_SHUTDOWN_S = 5
FATAL_EXIT_DEADLINE_S = 2 * GRACEFUL_SHUTDOWN_S


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:  # port in use, not our address, privileged port: the user's to fix
        from edgemm.fsio import bind_error

        sock.close()
        raise (bind_error(exc, host, port) or exc) from None
    sock.set_inheritable(True)
    return sock


def _exit_poisoned() -> None:
    # os._exit, not sys.exit: finalizers would call into the poisoned CUDA context and may hang.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_GPU_POISONED)


class FatalExit:
    """``on_fatal`` of the app: stop uvicorn gracefully (answers in flight are sent), then exit 70.

    Attributes:
        server: The uvicorn server to stop (set once it exists, before it runs).
        reason: Why the process exits, once it does.
    """

    def __init__(self) -> None:
        self.server: Any = None
        self.reason: str | None = None

    def __call__(self, reason: str) -> None:
        """Begin the exit; called on the event loop once the failing batch is answered (idempotent)."""
        if self.reason is not None:
            return
        self.reason = reason
        log.critical("exiting with status %d: %s", EXIT_GPU_POISONED, reason)
        self.server.should_exit = True
        watchdog = threading.Timer(FATAL_EXIT_DEADLINE_S, _exit_poisoned)
        watchdog.daemon = True
        watchdog.start()

    def exit_if_fatal(self) -> None:
        """After uvicorn returned: exit with :data:`EXIT_GPU_POISONED` if the GPU was poisoned."""
        if self.reason is not None:
            _exit_poisoned()


def serve(config: ServeConfig, *, port_file: Path | None = None) -> None:
    """Serve until interrupted. Binds first (so liveness answers at once), then loads the model.

    Returns when stopped by a signal. When the GPU context is poisoned, the requests in flight
    are answered and the process exits with :data:`EXIT_GPU_POISONED` instead of returning.

    Args:
        config: What to serve and how.
        port_file: Where to write the bound port (useful with ``port=0``).

    Raises:
        MissingDependencyError: The ``serve`` extra is not installed.
        UsageError: (connections) ``max_connections`` does not fit under the open-file limit.
        OSError: The address cannot be bound (in use, or not this machine's).
    """
    require_all("uvicorn", "starlette", "multipart", "prometheus_client", extra="serve", purpose="edgemm serve")
    import prometheus_client
    import uvicorn

    from edgemm.serve.app import build_app
    from edgemm.serve.budget import bound_allocator
    from edgemm.serve.host import ModelHost
    from edgemm.serve.metrics import Metrics
    from edgemm.serve.protocol import ConnectionGuard, connection_limits, uvicorn_options

    if config.host not in LOOPBACK_HOSTS:
        print(f"WARNING: edgemm serve is listening on {config.host}: other machines can reach the API. "
              "Keep --allow-host to the names the kiosk is reached by.", file=sys.stderr)
    # This process is the server's own: its scrapes carry no ``*_created`` series (one per
    # counter and histogram child, which a kiosk's monitoring has no use for).
    prometheus_client.disable_created_metrics()
    # memory: freed image buffers go back to the system (before the server's threads exist).
    bound_allocator()
    metrics = Metrics()
    # connections: the caps come from the open-file limit; a --max-connections over it is refused before binding.
    guard = ConnectionGuard(connection_limits(config), metrics)
    log.info("connections: at most %d open (%d per client, %d requests in flight per client); "
             "headers within %g s, bodies without a pause of %g s", guard.limits.max_connections,
             guard.limits.max_client_connections, guard.limits.max_client_requests,
             guard.limits.header_timeout_s, guard.limits.body_timeout_s)
    host = ModelHost(config, metrics)
    fatal = FatalExit()
    app = build_app(config, host, metrics, on_fatal=fatal)
    sock = _bind(config.host, config.port)
    port = sock.getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(str(port))
        os.replace(tmp, port_file)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    print(f"edgemm serve: listening on http://{shown}:{port}/", file=sys.stderr, flush=True)
    if config.expose:  # auth: where the token is, never the token itself (logs end up in journald)
        from edgemm.serve.auth import token_path

        print(f"edgemm serve: the API needs 'Authorization: Bearer <token>'; the token is in {token_path(config)}",
              file=sys.stderr, flush=True)
    threading.Thread(target=host.load_initial, name="edgemm-initial-load", daemon=True).start()
    # integrity: SIGHUP looks for a new store bundle and re-verifies the served files at once;
    # the checker thread also re-verifies them every --verify-interval seconds.
    host.start_checker()
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: host.request_check())
    # connections: our h11 protocol (pinned), its backlog and header size, the TCP peer as the client.
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False,
                                           **uvicorn_options(guard)))
    fatal.server = server
    server.run(sockets=[sock])
    fatal.exit_if_fatal()
