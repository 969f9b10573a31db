"""``edgemm predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgemm.cli import emit_json, json_option
from edgemm.errors import UsageError
from edgemm.fsio import stat_input

# Vectors longer than this are shown as their first and last values and their length.
_SHOWN_VALUES = 8


@click.command("predict")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--text", "texts", multiple=True, help="Text input (repeat for a batch, or for candidate texts).")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path), help="Image file (repeat for a batch).")
@click.option("--audio", "audios", multiple=True, type=click.Path(path_type=Path), help="WAV file (repeat for a batch).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--artifact", help="Artifact name (default: the best for the device; on the CPU the fastest "
                                 "measured on this machine, as serve and bench choose it).")
@click.option("--threads", type=click.IntRange(1, 256), help="CPU threads (default: cores, at most 4).")
@json_option
def predict(bundle: Path, texts: tuple[str, ...], images: tuple[Path, ...], audios: tuple[Path, ...],
            device: str, artifact: str | None, threads: int | None, as_json: bool) -> None:
    """Predict with BUNDLE. Torch-free: runs on a kiosk with only the base install.

    Prints the answer (label and scores, labels over the threshold, or values) and then every
    model output by name; --json prints them as one document.
    """
    from edgemm.runtime.postprocess import MULTILABEL_TYPES, TOKEN_TYPES
    from edgemm.runtime.predictor import Predictor

    if not (texts or images or audios):
        raise UsageError("Nothing to predict.", hint="Give --text, --image and/or --audio.")
    # A directory, FIFO or device is refused before the model loads (the predictor reads each
    # file with its byte cap; a FIFO is never opened, a sparse 2 GB file never read).
    for path in images:
        stat_input(path, "Image file")
    for path in audios:
        stat_input(path, "Audio file")
    predictor = Predictor.load(bundle, device=device, artifact=artifact, threads=threads)
    similarity = predictor.manifest.task == "image_text_similarity"
    # Files go to the predictor as paths: it reads them with its byte caps and typed errors.
    inputs = {
        "text": (list(texts) if similarity or len(texts) > 1 else texts[0]) if texts else None,
        "image": _one_or_many(images),
        "audio": _one_or_many(audios),
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
    multilabel = predictor.manifest.postprocessing.get("type") in MULTILABEL_TYPES
    tagging = predictor.manifest.postprocessing.get("type") in TOKEN_TYPES
    for index, r in enumerate(results):
        prefix, indent = (f"[{index + 1}] ", "    ") if len(results) > 1 else ("", "  ")
        click.echo(prefix + (_entities(r) if tagging else _answer(r, multilabel)))
        width = max((len(name) for name in r.outputs), default=0)
        for name, values in r.outputs.items():
            click.echo(f"{indent}{name:<{width}}  {compact(values)}")


def _one_or_many(paths: tuple[Path, ...]) -> Path | list[Path] | None:
    if not paths:
        return None
    return list(paths) if len(paths) > 1 else paths[0]


def _entities(r: Any) -> str:
    """The first line of a token-classification prediction: each entity with its span and score."""
    if not r.entities:
        return "(no entities)"
    return "  ".join(f"{e['entity_group']} {e['word']!r} [{e['start']}:{e['end']}] {e['score']:.3f}"
                     for e in r.entities)


def _answer(r: Any, multilabel: bool) -> str:
    """The first line of a prediction: label and scores, labels over the threshold, or values."""
    scores = "  ".join(f"{k}={v:.3f}" for k, v in r.scores.items())
    if multilabel:
        flagged = ", ".join(r.labels) if r.labels else "(no label over the threshold)"
        return f"{flagged}\t{scores}"
    if r.label is not None:
        line = f"{r.label}\t{r.score:.4f}\t{scores}"
        if r.values:  # image–text similarity: the raw score of every candidate text
            line += "\t" + "  ".join(f"{k}={v:.4f}" for k, v in r.values.items())
        return line
    return "  ".join(f"{k}={v:.4f}" for k, v in r.values.items())


def compact(values: Any) -> str:
    """A model output's values on one line: all of a short vector, the ends of a long one.

    Args:
        values: A number or (nested) list of numbers, as in ``Prediction.outputs``.

    Returns:
        E.g. ``[0.1234, -2.5]`` or ``[0.1, 0.2, 0.3, …, 0.9, 1] (384 values)``; nested lists get
        their shape, e.g. ``2×64 [0.1, …] (128 values)``.
    """
    import numpy as np

    array = np.asarray(values)
    if array.ndim == 0:
        return _number(array.item())
    flat = array.ravel().tolist()
    if len(flat) <= _SHOWN_VALUES:
        shown = ", ".join(_number(v) for v in flat)
    else:
        shown = ", ".join(_number(v) for v in flat[:3]) + ", …, " + ", ".join(_number(v) for v in flat[-2:])
    shape = "×".join(str(d) for d in array.shape) + " " if array.ndim > 1 else ""
    count = f" ({len(flat)} values)" if len(flat) > _SHOWN_VALUES else ""
    return f"{shape}[{shown}]{count}"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
