"""Run the kiosk server: bind (loopback unless exposed), load in the background, serve."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from edgemm._deps import require
from edgemm.serve.config import LOOPBACK_HOSTS, ServeConfig

log = logging.getLogger("edgemm.serve")

# Exit status when the GPU context is poisoned: the supervisor (systemd Restart=always) starts
# a fresh process, the only way to get a working CUDA context back.
EXIT_GPU_POISONED = 70


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _fatal(reason: str) -> None:
    log.critical("exiting with status %d: %s", EXIT_GPU_POISONED, reason)
    logging.shutdown()
    os._exit(EXIT_GPU_POISONED)


def serve(config: ServeConfig, *, port_file: Path | None = None) -> None:
    """Serve until interrupted. Binds first (so liveness answers at once), then loads the model.

    Args:
        config: What to serve and how.
        port_file: Where to write the bound port (useful with ``port=0``).
    """
    for module in ("uvicorn", "starlette", "multipart"):
        require(module, extra="serve", purpose="edgemm serve")
    import uvicorn

    from edgemm.serve.app import build_app
    from edgemm.serve.host import ModelHost
    from edgemm.serve.metrics import Metrics

    if config.host not in LOOPBACK_HOSTS:
        print(f"WARNING: edgemm serve is listening on {config.host}: other machines can reach the API. "
              "Keep --allow-host to the names the kiosk is reached by.", file=sys.stderr)
    metrics = Metrics()
    host = ModelHost(config, metrics)
    app = build_app(config, host, metrics, on_fatal=_fatal)
    sock = _bind(config.host, config.port)
    port = sock.getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(str(port))
        os.replace(tmp, port_file)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    print(f"edgemm serve: listening on http://{shown}:{port}/", file=sys.stderr, flush=True)
    threading.Thread(target=host.load_initial, name="edgemm-initial-load", daemon=True).start()
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=host.check_for_update, daemon=True).start())
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=5, server_header=False))
    server.run(sockets=[sock])
