"""``edgemm serve``."""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

import click

from edgemm.errors import UsageError


def render_systemd_unit(store: Path, port: int, policy: str, memory_max: str) -> str:
    """The shipped systemd unit with this machine's paths filled in (MemoryHigh = 80% of max).

    Raises:
        UsageError: ``memory_max`` is not a size such as ``1500M`` or ``2G``.
    """
    # memory: one reading of sizes, for the unit and for the budget
    from edgemm.serve.budget import parse_size

    high = f"{parse_size(memory_max, '--memory-max') * 4 // 5 // 2**20}M"
    template = (resources.files("edgemm.serve") / "systemd" / "edgemm-serve.service").read_text("utf-8")
    exe = shutil.which("edgemm") or f"{sys.executable} -m edgemm"
    return (template.replace("{EDGEMM}", exe).replace("{STORE}", str(store.resolve()))
            .replace("{PORT}", str(port)).replace("{POLICY}", policy)
            .replace("{MEMORY_MAX}", memory_max).replace("{MEMORY_HIGH}", high))


@click.command("serve")
@click.argument("bundle", required=False, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--store", type=click.Path(path_type=Path),
              help="Serve the active bundle of a device store (edgemm install) and pick up new ones.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless --expose).")
@click.option("--port", type=int, default=8310, show_default=True, help="Port (0: any free port).")
@click.option("--expose", is_flag=True, help="Allow binding a non-loopback address (prints a warning).")
@click.option("--allow-host", "allow_hosts", multiple=True, help="Extra Host header name to answer to.")
@click.option("--allow-origin", "allow_origins", multiple=True, help="Extra browser origin allowed to call the API.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt", "tensorrt-ep"]), default="auto",
              show_default=True, help="auto: TensorRT engine → ORT CUDA → ORT CPU, each skip logged.")
@click.option("--artifact", default=None,
              help="Serve this artifact by name [default: the best this machine can run, as predict and bench "
                   "choose it].")
@click.option("--device-policy", type=click.Choice(["allow_cpu", "require_gpu"]), default="allow_cpu",
              show_default=True, help="require_gpu: never become ready on the CPU.")
@click.option("--max-batch", type=int, default=16, show_default=True, help="Micro-batch size limit.")
@click.option("--max-delay-ms", type=float, default=5.0, show_default=True, help="Micro-batch wait limit.")
@click.option("--max-queue", type=int, default=256, show_default=True, help="Waiting requests before 503.")
@click.option("--deadline", "deadline_s", type=float, default=10.0, show_default=True,
              help="Seconds a request may wait before it is refused with 503.")
@click.option("--max-body-mb", type=float, default=12.0, show_default=True, help="Request body cap.")
@click.option("--max-text-chars", type=int, default=2000, show_default=True)
@click.option("--max-pixels", type=int, default=None,
              help="Image pixel cap; the bundle's own applies too [default: 256 times the bundle's input "
                   "size, at least 16 MP].")
@click.option("--max-audio-seconds", type=float, default=30.0, show_default=True)
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@click.option("--reload-interval", "reload_interval_s", type=float, default=2.0, show_default=True,
              help="Seconds between checks of the store for a newly installed bundle (also on SIGHUP).")
@click.option("--port-file", type=click.Path(path_type=Path), help="Write the bound port here.")
# -- auth and integrity --
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="API token file for --expose (created 0600 on first use) "
                   "[default: $XDG_STATE_HOME/edgemm/api-token].")
@click.option("--local-peer", "local_peers", multiple=True,
              help="Peer address or network that counts as the kiosk itself (repeatable) [default: loopback].")
@click.option("--rate-limit", type=float, default=10.0, show_default=True,
              help="Requests per second per client address other than the kiosk itself (0: no limit).")
@click.option("--rate-burst", type=int, default=20, show_default=True, help="Burst allowed above --rate-limit.")
@click.option("--verify-interval", "verify_interval_s", type=float, default=600.0, show_default=True,
              help="Seconds between re-verifications of the served bundle's files (also on SIGHUP; 0: SIGHUP only).")
# -- connections: read timeouts and connection limits (edgemm.serve.protocol) --
@click.option("--header-timeout", "header_timeout_s", type=float, default=10.0, show_default=True,
              help="Seconds a client has to send its request line and headers.")
@click.option("--body-timeout", "body_timeout_s", type=float, default=10.0, show_default=True,
              help="Seconds a request body may send nothing before the connection is cut.")
@click.option("--min-body-rate-kb", type=float, default=64.0, show_default=True,
              help="KiB/s a request body must average (after --body-timeout) to be read to its end.")
@click.option("--max-connections", type=int, default=None,
              help="Open connections in all [default: half of the open-file limit].")
@click.option("--max-client-connections", type=int, default=128, show_default=True,
              help="Open connections per client address.")
@click.option("--max-client-requests", type=int, default=64, show_default=True,
              help="Requests in flight per client address.")
@click.option("--systemd-unit", is_flag=True, help="Print a systemd unit for this store and exit.")
# -- memory: the decode budget and the limit it comes from (edgemm.serve.budget) --
@click.option("--memory-max", default=None,
              help="The server's memory limit, e.g. 2G: sizes the decode budget [default: the cgroup's limit, "
                   "else 2G]; with --systemd-unit, the unit's MemoryMax [default: 2G].")
@click.option("--decode-budget", default=None,
              help="Memory for decoding images and audio in flight, all requests together, e.g. 600M "
                   "[default: half of what --memory-max leaves beside the loaded model].")
def serve(bundle: Path | None, store: Path | None, host: str, port: int, expose: bool,
          allow_hosts: tuple[str, ...], allow_origins: tuple[str, ...], device: str, artifact: str | None,
          device_policy: str,
          max_batch: int, max_delay_ms: float, max_queue: int, deadline_s: float, max_body_mb: float,
          max_text_chars: int, max_pixels: int | None, max_audio_seconds: float, threads: int | None,
          reload_interval_s: float, port_file: Path | None, systemd_unit: bool, memory_max: str | None,
          decode_budget: str | None,
          token_file: Path | None, local_peers: tuple[str, ...], rate_limit: float, rate_burst: int,
          verify_interval_s: float,
          # connections
          header_timeout_s: float, body_timeout_s: float, min_body_rate_kb: float, max_connections: int | None,
          max_client_connections: int, max_client_requests: int) -> None:
    """Serve BUNDLE (or a device store's active bundle) as a local API and kiosk page.

    Binds to loopback; the API is POST /v1/predict, GET /v1/health/live, /v1/health/ready,
    /v1/model and /metrics; the kiosk page is at /. With --expose, all but the health checks and
    the page need 'Authorization: Bearer <token>' (the token file is made on first use).
    """
    from edgemm.fsio import check_output_dir
    from edgemm.serve.config import ServeConfig

    if store is not None:  # a store that is a file would never become ready: say so now
        check_output_dir(store, "Store")
    if systemd_unit:
        if store is None:
            raise UsageError("--systemd-unit needs --store.", hint="The unit serves a device store.")
        click.echo(render_systemd_unit(store, port, device_policy, memory_max or "2G"), nl=False)
        return
    if artifact is not None:
        _check_artifact(bundle, store, artifact)
    from edgemm.serve.budget import parse_size  # memory

    memory_max_bytes = None if memory_max is None else parse_size(memory_max, "--memory-max")
    decode_budget_bytes = None if decode_budget is None else parse_size(decode_budget, "--decode-budget")
    config = ServeConfig(
        bundle=bundle, store=store, host=host, port=port, expose=expose, allowed_hosts=allow_hosts,
        allowed_origins=allow_origins, device=device, artifact=artifact, device_policy=device_policy,
        max_body_bytes=int(max_body_mb * 2**20), max_text_chars=max_text_chars, max_pixels=max_pixels,
        max_audio_seconds=max_audio_seconds, max_batch=max_batch, max_delay_ms=max_delay_ms,
        max_queue=max_queue, deadline_s=deadline_s, threads=threads, reload_interval_s=reload_interval_s,
        # auth and integrity
        token_file=token_file, local_peers=local_peers, rate_limit=rate_limit, rate_burst=rate_burst,
        verify_interval_s=verify_interval_s,
        # connections
        header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
        min_body_rate=max(1, int(min_body_rate_kb * 1024)), max_connections=max_connections,
        max_client_connections=max_client_connections, max_client_requests=max_client_requests,
        # memory
        memory_max=memory_max_bytes, decode_budget=decode_budget_bytes)
    from edgemm.serve.server import serve as run_server

    run_server(config, port_file=port_file)



def _check_artifact(bundle: Path | None, store: Path | None, artifact: str) -> None:
    """Refuse an ``--artifact`` the bundle (or the store's active bundle) does not have, before serving.

    Raises:
        UnknownArtifactError: No artifact of that name (usage error; the hint lists the names).
    """
    from edgemm.bundle.verify import verify_bundle

    if bundle is None:
        from edgemm.deploy.store import DeviceStore

        active = DeviceStore(store).active() if store is not None else None
        if active is None:
            return  # nothing installed yet: the name is checked when a bundle arrives
        bundle = active.bundle
    verify_bundle(bundle, check_hashes=False).artifact(artifact)
