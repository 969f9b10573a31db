"""What every transformers checkpoint family shares: reading ``config.json``, naming the
architecture, loading processors offline, and refusing what no family supports.

A Hugging Face directory is recognised by its ``config.json``: ``architectures[0]`` (the class
``save_pretrained`` wrote, e.g. ``BertForSequenceClassification``) decides the family, so a
fine-tuned checkpoint needs no flags. Each family module registers the architectures it exports
with :func:`supports`; :func:`unsupported_architecture` turns a directory none of them takes into
an error that names its architecture and the closest supported route.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgemm.errors import UnsupportedModelError, UsageError

CONFIG_FILE = "config.json"
# The README section for models no family takes: a factory returning (nn.Module, ExportSpec).
SPEC_ROUTE = "README, 'Bring your own model': write a --spec package.module:factory"

# architecture class name → (family name, task) of every architecture a family exports.
_SUPPORTED: dict[str, tuple[str, str]] = {}


def read_config(path: Path) -> dict[str, Any] | None:
    """``path/config.json`` as a dict, or None when there is none or it is not a JSON object."""
    config = path / CONFIG_FILE
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return data if isinstance(data, dict) else None


def architecture(path: Path) -> str | None:
    """The model class ``save_pretrained`` recorded (``architectures[0]``), or None."""
    config = read_config(path)
    names = config.get("architectures") if config else None
    if isinstance(names, list) and names and isinstance(names[0], str):
        return names[0]
    return None


def model_type(path: Path) -> str | None:
    """``config.json``'s ``model_type`` (e.g. ``"bert"``), or None."""
    config = read_config(path)
    value = config.get("model_type") if config else None
    return value if isinstance(value, str) else None


def supports(family: str, task: str, *architectures: str) -> Any:
    """Record that ``family`` exports ``architectures`` for ``task``; returns a ``detect`` for
    :func:`edgemm.models.spec.register_family` that accepts exactly those directories."""
    for name in architectures:
        _SUPPORTED[name] = (family, task)
    accepted = frozenset(architectures)
    return lambda path: architecture(path) in accepted


def supported_architectures() -> dict[str, tuple[str, str]]:
    """Every architecture a registered family exports: name → (family, task)."""
    return dict(_SUPPORTED)


def unsupported_architecture(path: Path) -> UnsupportedModelError | None:
    """The error for a transformers directory whose architecture no family exports, naming the
    architecture, the supported ones of the same task head, and the ``--spec`` route; None when
    ``path`` holds no ``config.json`` with an architecture."""
    name = architecture(path)
    if name is None:
        return None
    suffix = next((s for s in ("ForSequenceClassification", "ForTokenClassification", "ForImageClassification",
                               "ForAudioClassification", "ForQuestionAnswering", "ForImageAndTextRetrieval",
                               "ForImageTextRetrieval", "Model") if name.endswith(s)), None)
    same_head = sorted(a for a in _SUPPORTED if suffix and a.endswith(suffix))
    closest = f" Supported with the same head: {', '.join(same_head)}." if same_head else ""
    return UnsupportedModelError(
        f"{path} holds a {name} (model_type {model_type(path)!r}); edgemm does not export this architecture "
        f"from a directory.{closest}",
        hint=f"Export it as your own module: {SPEC_ROUTE}. Supported directories: `edgemm export --help`.",
        details={"architecture": name},
    )


def require_fast_tokenizer(tokenizer: Any, path: Path) -> Any:
    """``tokenizer`` if it is a fast (``tokenizers``-backed) one: the edge runtime reads its
    ``tokenizer.json``; otherwise a :class:`UsageError` saying how to save one."""
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{path} has no fast tokenizer (tokenizer.json); the edge runtime needs one.",
                         hint="Save the tokenizer with tokenizer.save_pretrained() from a fast tokenizer "
                              "(AutoTokenizer.from_pretrained(..., use_fast=True)).")
    return tokenizer
