"""``edgemm triton``: a Triton Inference Server model repository from a bundle."""

from __future__ import annotations

from pathlib import Path

import click

from edgemm.cli import emit_json, json_option
from edgemm.errors import UsageError
from edgemm.fsio import check_output_dir


def _sizes(value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--preferred-batch-sizes {value!r} is not a comma-separated list of integers.",
                         hint="Example: --preferred-batch-sizes 4,8,16") from None


@click.command("triton")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--name", help="Base model name (default: the bundle's name).")
@click.option("--artifact", "artifacts", multiple=True,
              help="Artifact to include (repeat; default all). The first one is what the ensembles run.")
@click.option("--version", "model_version", type=click.IntRange(1), default=1, show_default=True,
              help="Model version directory to write.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Instance kind of the ONNX models (auto: GPU where Triton has one).")
@click.option("--instances", type=click.IntRange(1, 64), default=1, show_default=True, help="Instances per model.")
@click.option("--max-batch-size", type=click.IntRange(1), help="Triton max_batch_size (default: the bundle's batch profile max).")
@click.option("--preferred-batch-sizes", metavar="A,B,…", help="Dynamic batcher preferred sizes (default 4,8,16).")
@click.option("--queue-delay-us", type=click.IntRange(0), default=2000, show_default=True,
              help="Dynamic batcher max queue delay in microseconds.")
@click.option("--ort-ep", type=click.Choice(["default", "tensorrt"]), default="default", show_default=True,
              help="tensorrt: ONNX Runtime's TensorRT EP on GPU instances (profiles from the manifest).")
@click.option("--threads", type=click.IntRange(0, 256), default=0, show_default=True,
              help="ONNX Runtime intra-op threads per instance (0: its default).")
@click.option("--text-padding", type=click.Choice(["fixed", "longest"]), default="fixed", show_default=True,
              help="fixed: pad text to the bundle's max length so requests batch.")
@click.option("--no-warmup", is_flag=True, help="Do not add model warm-up from the golden set.")
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
@json_option
def triton(bundle: Path, out: Path, name: str | None, artifacts: tuple[str, ...], model_version: int, device: str,
           instances: int, max_batch_size: int | None, preferred_batch_sizes: str | None, queue_delay_us: int,
           ort_ep: str, threads: int, text_padding: str, no_warmup: bool, force: bool, as_json: bool) -> None:
    """Write a Triton Inference Server model repository for BUNDLE at OUT.

    The bundle is verified first; every config.pbtxt is validated with Triton's ModelConfig
    protobuf; nothing is written at OUT unless all of it succeeded. The Python-backend models
    need edgemm installed in the Triton server's Python (see README).
    """
    from edgemm.triton import RepositoryOptions, write_repository

    check_output_dir(out, "Model repository")
    options = RepositoryOptions(
        name=name, artifacts=artifacts, version=model_version, device=device, instances=instances,
        max_batch_size=max_batch_size, preferred_batch_sizes=_sizes(preferred_batch_sizes),
        queue_delay_us=queue_delay_us, ort_ep=ort_ep, threads=threads, text_padding=text_padding,
        warmup=not no_warmup,
    )
    report = write_repository(bundle, out, options, force=force)
    if as_json:
        emit_json({"ok": True, **report.to_dict()})
        return
    click.echo(f"repository {report.repository}")
    for model, info in report.models.items():
        click.echo(f"model      {model:<40} {info['role']}")
    click.echo(f"ensemble   {report.ensemble}" + (f"  (python variant: {report.python_ensemble})"
                                                  if report.python_ensemble else ""))
    click.echo("serve      tritonserver --model-repository " + str(report.repository)
               + "   (Python models need: pip install edgemm in the server's Python)")
