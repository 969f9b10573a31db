"""Model warm-up from the bundle's golden set: ``model_warmup`` entries and the files they read.

Each warmed model gets one request (``golden-0``, batch 1) built from the first golden example:
the preprocessed feed for the models that run the graph, the raw bytes a client would send for
the preprocess model, the expected outputs for the postprocess model. Triton runs it at load, so
the first real request does not pay for lazy initialisation.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.triton.fields import TRITON_TYPE
from edgemm.triton.plan import Plan
from edgemm.triton.python_models import RAW_INPUTS

__all__ = ["encode_raw", "raw_warmup", "tensor_warmup", "write_warmup"]

# One warm-up input: (dtype, sample); BYTES inputs have dtype "bytes" and a list of byte strings.
Sample = tuple[str, np.ndarray | list[bytes]]


def write_warmup(model_dir: Path, samples: dict[str, Sample]) -> list[dict[str, Any]]:
    """Write one warm-up file per input under ``model_dir/warmup`` and return ``model_warmup``.

    Args:
        model_dir: The model's directory.
        samples: Input name → (dtype, one sample): an array (its own shape, no batch axis) or,
            for BYTES inputs (dtype ``bytes``), a list of byte strings.

    Returns:
        The ``model_warmup`` value (empty, and nothing written, without samples).
    """
    if not samples:
        return []
    warm = model_dir / "warmup"
    warm.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for index, (name, (dtype, sample)) in enumerate(samples.items()):
        filename = f"input{index}"
        if isinstance(sample, list):  # BYTES: 4-byte little-endian length, then the bytes
            data = b"".join(len(b).to_bytes(4, "little") + b for b in sample)
            dims = [len(sample)]
        else:
            array = np.ascontiguousarray(sample)
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            dims = list(array.shape) or [1]
        (warm / filename).write_bytes(data)
        inputs[name] = {"data_type": TRITON_TYPE[dtype], "dims": dims, "input_data_file": filename}
    return [{"name": "golden-0", "batch_size": 1, "inputs": inputs}]


def tensor_warmup(plan: Plan, model_dir: Path, *, outputs: bool = False) -> list[dict[str, Any]]:
    """Warm-up of a model that takes graph tensors: the first golden example's feed, or (for the
    postprocess model) its expected outputs.

    Args:
        plan: The repository plan.
        model_dir: The model's directory.
        outputs: Take the graph's outputs instead of its inputs.

    Returns:
        The ``model_warmup`` value (empty without a golden set, or when it lacks one of the tensors).
    """
    if plan.golden is None:
        return []
    specs = plan.manifest.outputs if outputs else plan.manifest.inputs
    arrays = plan.golden.expected if outputs else plan.golden.feed
    if any(t.name not in arrays for t in specs):
        return []
    return write_warmup(model_dir, {t.name: (t.dtype, arrays[t.name][0].astype(t.dtype)) for t in specs})


def raw_warmup(plan: Plan, model_dir: Path) -> list[dict[str, Any]]:
    """Warm-up of the preprocess model: the first golden example as the bytes a client sends.

    Args:
        plan: The repository plan.
        model_dir: The model's directory.

    Returns:
        The ``model_warmup`` value (empty without a golden set, or when the golden set lacks a
        required modality's raw example).
    """
    if plan.golden is None:
        return []
    raw = plan.golden.raw_requests()
    samples: dict[str, Sample] = {}
    for modality, spec in plan.manifest.modality_specs().items():
        items = raw.get(modality)
        if not items or items[0] is None:
            if spec.required:
                return []
            continue
        samples[RAW_INPUTS[modality]] = ("bytes", [encode_raw(modality, items[0])])
    return write_warmup(model_dir, samples)


def encode_raw(modality: str, item: Any) -> bytes:
    """A golden raw item as the bytes a client would send.

    Args:
        modality: ``text``, ``image`` or ``audio``.
        item: The text; the image as an HxWxC uint8 array; the audio as ``(samples, rate)``.

    Returns:
        UTF-8 text, PNG bytes or WAV bytes.
    """
    if modality == "text":
        return str(item).encode("utf-8")
    if modality == "image":
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.asarray(item, dtype=np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()
    from edgemm.runtime.preprocess.audio import encode_wav

    samples, rate = item
    return encode_wav(np.asarray(samples, dtype=np.float32), int(rate))
