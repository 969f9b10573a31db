"""Pieces shared by the built-in export specs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from edgemm.bundle.manifest import TensorSpec
from edgemm.data.synthetic import synthesize_image
from edgemm.runtime.preprocess.image import preprocess_images

BATCH_RANGE = (1, 64)
POSTPROCESSING = {
    "classification": {"type": "softmax", "output": "logits", "top_k": 5},
    "multilabel": {"type": "sigmoid", "output": "logits", "threshold": 0.5},
    "matching": {"type": "matching", "output": "logits", "threshold": 0.5},
    "regression": {"type": "identity", "output": "values"},
}


def image_input(section: dict[str, Any], name: str = "pixel_values", batch: str = "batch") -> TensorSpec:
    """The pixel tensor spec, with C/H/W measured by running the runtime preprocessing once."""
    probe = preprocess_images([synthesize_image(61, 47, seed=0)], section)
    _, channels, height, width = probe.shape
    return TensorSpec(name, "float32", [batch, int(channels), int(height), int(width)])


def encoder_info(architecture: str, config: dict[str, Any]) -> dict[str, Any]:
    """Architecture, attention heads and hidden size of a transformers encoder config."""
    heads = config.get("num_attention_heads", config.get("n_heads", config.get("encoder_attention_heads")))
    hidden = config.get("hidden_size", config.get("dim", config.get("d_model")))
    return {"architecture": architecture, "num_heads": heads, "hidden_size": hidden}


def file_sha256(path: Path) -> str:
    """sha256 of a checkpoint file, following symlinks.

    Unlike the bundle's own hashing (:func:`edgemm.bundle.hashing.sha256_file`, which refuses links),
    this follows them: checkpoints in the Hugging Face cache are symlinks into its blob store.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(folder: Path) -> str:
    """One digest over every file (path + content) of a checkpoint directory."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()
