"""Resolve what ``edgemm export`` was given: a checkpoint directory or ``--spec module:factory``."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from edgemm._deps import require
from edgemm.errors import CheckpointError, InputPathError, UnsafeCheckpointError, UsageError
from edgemm.models.spec import ExportSpec, LoadedModel, load_factory
from edgemm.models.specs import family_for

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
TRAINING_FILE = "training.json"


# -- loading ----------------------------------------------------------------------------------


def load_source(source: Path | None, spec_ref: str | None, options: Any) -> LoadedModel:
    """Resolve the export input: a checkpoint directory, or ``--spec module:factory`` (+ weights)."""
    if spec_ref:
        return _load_from_factory(spec_ref, source, options)
    if source is None:
        raise UsageError("Nothing to export.", hint="Give a checkpoint directory or --spec package.module:factory.")
    if not source.exists():
        raise InputPathError(f"{source} does not exist.", hint="Check the checkpoint path.")
    if source.is_file():
        if source.suffix in PICKLE_SUFFIXES:
            raise UnsafeCheckpointError(
                f"{source.name} is a bare pickle checkpoint; edgemm needs its model definition.",
                hint="Save a FusionModel directory, or use --spec package.module:factory with this file.",
            )
        raise InputPathError(f"{source} is a file; edgemm exports checkpoint directories.",
                             hint="Point at the directory holding config and weights.")
    family = family_for(source)
    loaded = family.load(source, allow_pickle=options.allow_pickle,
                         labels=list(options.labels) if options.labels else None, prompt=options.prompt)
    training = source / TRAINING_FILE
    if training.is_file():
        # Written by `edgemm train`: which data the checkpoint was trained on (for the gate).
        try:
            record = json.loads(training.read_text(encoding="utf-8"))
            loaded.source["training"] = {"data": record["data"]["spec"], "fingerprint": record["data"]["fingerprint"],
                                         "test": record.get("test", {})}
        except (ValueError, KeyError, TypeError):
            pass
    return loaded


def _load_from_factory(spec_ref: str, source: Path | None, options: Any) -> LoadedModel:
    factory = load_factory(spec_ref)
    params = inspect.signature(factory).parameters
    result = factory(source) if params and source is not None and source.is_dir() else factory()
    if isinstance(result, LoadedModel):
        loaded = result
    elif isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], ExportSpec):
        loaded = LoadedModel(result[0], result[1], {"kind": "custom", "factory": spec_ref})
    else:
        raise UsageError(f"{spec_ref} returned {type(result).__name__}; expected (nn.Module, ExportSpec).",
                         hint="Return the module and its edgemm.models.spec.ExportSpec.")
    loaded.source.setdefault("kind", "custom")
    loaded.source["factory"] = spec_ref
    if source is not None and source.is_file():
        _load_weights_file(loaded.module, source, options.allow_pickle)
        from edgemm.models.specs.common import file_sha256

        loaded.source.update({"weights": source.name, "sha256": file_sha256(source)})
    if hasattr(loaded.module, "eval"):
        loaded.module.eval()
    return loaded


def _load_weights_file(module: Any, path: Path, allow_pickle: bool) -> None:
    torch = require("torch")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path.name} is not a readable safetensors file: {exc}",
                                  hint="The file is corrupt or truncated.") from exc
    elif path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{path.name} is a pickle checkpoint; loading pickle can run arbitrary code.",
                hint="Convert it to safetensors, or pass --allow-pickle if you trust its origin.",
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"Cannot load {path.name}: {exc}") from exc
    else:
        raise InputPathError(f"Unknown weights file type {path.suffix!r}.", hint="Use .safetensors.")
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path.name} does not fit the model: {str(exc).splitlines()[0]}") from exc
