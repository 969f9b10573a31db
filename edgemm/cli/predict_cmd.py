"""``edgemm predict``."""

from __future__ import annotations

from pathlib import Path

import click

from edgemm.cli import emit_json, json_option
from edgemm.errors import InputPathError, UsageError


def _read(paths: tuple[Path, ...], what: str) -> list[bytes]:
    items = []
    for path in paths:
        if not path.is_file():
            raise InputPathError(f"{what} file {path} does not exist.", hint="Check the path.")
        items.append(path.read_bytes())
    return items


@click.command("predict")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--text", "texts", multiple=True, help="Text input (repeat for a batch, or for candidate texts).")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path), help="Image file (repeat for a batch).")
@click.option("--audio", "audios", multiple=True, type=click.Path(path_type=Path), help="WAV file (repeat for a batch).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--artifact", help="Artifact name (default: the best for the device).")
@click.option("--threads", type=click.IntRange(1, 256), help="CPU threads (default: cores, at most 4).")
@json_option
def predict(bundle: Path, texts: tuple[str, ...], images: tuple[Path, ...], audios: tuple[Path, ...],
            device: str, artifact: str | None, threads: int | None, as_json: bool) -> None:
    """Predict with BUNDLE. Torch-free: runs on a kiosk with only the base install."""
    from edgemm.runtime.predictor import Predictor

    if not (texts or images or audios):
        raise UsageError("Nothing to predict.", hint="Give --text, --image and/or --audio.")
    predictor = Predictor.load(bundle, device=device, artifact=artifact, threads=threads)
    similarity = predictor.manifest.task == "image_text_similarity"
    inputs = {
        "text": (list(texts) if similarity or len(texts) > 1 else texts[0]) if texts else None,
        "image": (_read(images, "Image") if len(images) > 1 else _read(images, "Image")[0]) if images else None,
        "audio": (_read(audios, "Audio") if len(audios) > 1 else _read(audios, "Audio")[0]) if audios else None,
    }
    result = predictor.predict(**inputs)
    results = result if isinstance(result, list) else [result]
    if as_json:
        emit_json({
            "ok": True,
            "bundle": str(bundle),
            "artifact": predictor.artifact.name,
            "device": predictor.device,
            "degraded": predictor.degraded,
            "predictions": [r.to_dict() for r in results],
        })
        return
    for r in results:
        if r.label is not None:
            click.echo(f"{r.label}\t{r.score:.4f}\t" + "  ".join(f"{k}={v:.3f}" for k, v in r.scores.items()))
        if r.values:
            click.echo("  ".join(f"{k}={v:.4f}" for k, v in r.values.items()))
