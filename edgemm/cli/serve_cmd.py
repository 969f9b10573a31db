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
    units = {"M": 1, "G": 1024}
    if len(memory_max) < 2 or memory_max[-1] not in units or not memory_max[:-1].isdigit():
        raise UsageError(f"--memory-max {memory_max!r} is not a size such as 1500M or 2G.")
    high = f"{int(memory_max[:-1]) * units[memory_max[-1]] * 4 // 5}M"
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
@click.option("--device-policy", type=click.Choice(["allow_cpu", "require_gpu"]), default="allow_cpu",
              show_default=True, help="require_gpu: never become ready on the CPU.")
@click.option("--max-batch", type=int, default=16, show_default=True, help="Micro-batch size limit.")
@click.option("--max-delay-ms", type=float, default=5.0, show_default=True, help="Micro-batch wait limit.")
@click.option("--max-queue", type=int, default=256, show_default=True, help="Waiting requests before 503.")
@click.option("--deadline", "deadline_s", type=float, default=10.0, show_default=True,
              help="Seconds a request may wait before it is refused with 503.")
@click.option("--max-body-mb", type=float, default=12.0, show_default=True, help="Request body cap.")
@click.option("--max-text-chars", type=int, default=2000, show_default=True)
@click.option("--max-pixels", type=int, default=24_000_000, show_default=True)
@click.option("--max-audio-seconds", type=float, default=30.0, show_default=True)
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@click.option("--reload-interval", "reload_interval_s", type=float, default=2.0, show_default=True,
              help="Seconds between checks of the store for a newly installed bundle (also on SIGHUP).")
@click.option("--port-file", type=click.Path(path_type=Path), help="Write the bound port here.")
@click.option("--systemd-unit", is_flag=True, help="Print a systemd unit for this store and exit.")
@click.option("--memory-max", default="2G", show_default=True, help="MemoryMax for --systemd-unit.")
def serve(bundle: Path | None, store: Path | None, host: str, port: int, expose: bool,
          allow_hosts: tuple[str, ...], allow_origins: tuple[str, ...], device: str, device_policy: str,
          max_batch: int, max_delay_ms: float, max_queue: int, deadline_s: float, max_body_mb: float,
          max_text_chars: int, max_pixels: int, max_audio_seconds: float, threads: int | None,
          reload_interval_s: float, port_file: Path | None, systemd_unit: bool, memory_max: str) -> None:
    """Serve BUNDLE (or a device store's active bundle) as a local API and kiosk page.

    Binds to loopback; the API is POST /v1/predict, GET /v1/health/live, /v1/health/ready,
    /v1/model and /metrics; the kiosk page is at /.
    """
    from edgemm.serve.config import ServeConfig

    if systemd_unit:
        if store is None:
            raise UsageError("--systemd-unit needs --store.", hint="The unit serves a device store.")
        click.echo(render_systemd_unit(store, port, device_policy, memory_max), nl=False)
        return
    config = ServeConfig(
        bundle=bundle, store=store, host=host, port=port, expose=expose, allowed_hosts=allow_hosts,
        allowed_origins=allow_origins, device=device, device_policy=device_policy,
        max_body_bytes=int(max_body_mb * 2**20), max_text_chars=max_text_chars, max_pixels=max_pixels,
        max_audio_seconds=max_audio_seconds, max_batch=max_batch, max_delay_ms=max_delay_ms,
        max_queue=max_queue, deadline_s=deadline_s, threads=threads, reload_interval_s=reload_interval_s)
    from edgemm.serve.server import serve as run_server

    run_server(config, port_file=port_file)

