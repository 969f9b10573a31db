"""What the transformers classification-head families share: the model class the directory
names, its labels, and the record of where it came from.

Used by :mod:`~edgemm.models.specs.hf_vision` and :mod:`~edgemm.models.specs.hf_audio`; build
side (torch and transformers allowed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgemm.errors import CheckpointError, UsageError
from edgemm.models.encoders import check_weights_format
from edgemm.models.spec import Tolerance
from edgemm.models.specs.common import tree_sha256
from edgemm.models.specs.hf import architecture, require_fast_tokenizer

# Parity of a classification head against PyTorch: the pipeline comparison asks for 1e-4 in the
# scores, so the logits may not drift more than that either.
HEAD_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999)


def load_head_model(path: Path, *, allow_pickle: bool) -> Any:
    """The model class ``config.json`` names (``architectures[0]``), loaded offline in eval mode.

    Raises:
        UnsafeCheckpointError: Only pickle weights and ``allow_pickle`` is off.
        CheckpointError: transformers cannot load the directory (the message says why).
    """
    import transformers

    name = architecture(path) or ""
    model_cls = getattr(transformers, name, None)
    if model_cls is None:
        raise CheckpointError(f"{path} names {name!r}, which this transformers "
                              f"({transformers.__version__}) does not have.",
                              hint="Install the transformers version the checkpoint was saved with.")
    check_weights_format(path, allow_pickle=allow_pickle)
    try:
        model = model_cls.from_pretrained(path, local_files_only=True,
                                          use_safetensors=None if allow_pickle else True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"transformers could not load {path} as {name}: {str(exc).strip()[:300]}",
                              hint="Check that the directory was written by save_pretrained() and is complete.") from exc
    return model.eval()


def head_labels(config: Any, override: list[str] | None, path: Path) -> list[str]:
    """The class names in output order: ``config.id2label``, or ``override`` (``--labels``).

    Raises:
        UsageError: ``override`` has another length than the head has outputs.
    """
    count = int(config.num_labels)
    if override:
        if len(override) != count:
            raise UsageError(f"--labels gives {len(override)} labels but the head of {path} has {count} outputs.",
                             hint="Leave --labels out to use the checkpoint's id2label, or give one label per output.")
        return list(override)
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    labels = [id2label.get(i) or f"LABEL_{i}" for i in range(count)]
    if len(set(labels)) != len(labels):
        raise UsageError(f"{path}'s config.json has repeated labels in id2label: {labels}.",
                         hint="Give every class its own name in id2label (or pass --labels).")
    return labels


def source_record(path: Path, model_type: str) -> dict[str, Any]:
    """The manifest's ``source``: model type, absolute path and digest of the directory."""
    return {"kind": model_type, "architecture": architecture(path), "path": str(path.resolve()),
            "sha256": tree_sha256(path)}


def load_processor(kind: str, path: Path) -> Any:
    """``AutoImageProcessor`` / ``AutoFeatureExtractor`` of the directory, offline, slow image
    processors (the ones the runtime reproduces and the pipeline uses without torchvision).

    Raises:
        UsageError: The directory has no ``preprocessor_config.json`` (or it cannot be read).
    """
    import transformers as tf

    try:
        if kind == "image":
            return tf.AutoImageProcessor.from_pretrained(path, local_files_only=True, use_fast=False)
        return tf.AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        what = "image processor" if kind == "image" else "feature extractor"
        raise UsageError(f"{path} has no usable {what} (preprocessor_config.json): {str(exc).strip()[:200]}",
                         hint=f"Save it next to the model: {what.replace(' ', '_')}.save_pretrained(DIR) "
                              "(the one you trained with), then export again.") from exc


def load_text_image_processors(path: Path, what: str, hint: str) -> tuple[Any, Any]:
    """The fast tokenizer and the slow image processor of a text + image directory, offline.

    Raises:
        UsageError: Either cannot be read (the message names ``what``, e.g. ``"ViLT"``, and
            carries ``hint``), or the tokenizer is not a fast one.
    """
    import transformers as tf

    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
        image_processor = tf.AutoImageProcessor.from_pretrained(path, local_files_only=True, use_fast=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} has no readable {what} processor: {str(exc).splitlines()[0][:300]}",
                         hint=hint) from exc
    require_fast_tokenizer(tokenizer, path)
    return tokenizer, image_processor
