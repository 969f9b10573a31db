"""Resolve what ``edgemm export`` was given: a checkpoint directory or ``--spec module:factory``."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

from edgemm._deps import require
from edgemm.errors import (
    CheckpointError,
    EdgemmError,
    InputPathError,
    UnsafeCheckpointError,
    UsageError,
)
from edgemm.export.tracing import UserCode
from edgemm.models.spec import ExportSpec, LoadedModel, load_factory
from edgemm.models.specs import family_for

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
TRAINING_FILE = "training.json"

log = logging.getLogger("edgemm.export")


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
    _read_training_record(source, loaded)
    return loaded


def _read_training_record(folder: Path, loaded: LoadedModel) -> None:
    """Which data the checkpoint was trained on (written by ``edgemm train``): the accuracy gate's
    and the parity's held-out data when no ``--eval-data`` is given."""
    training = folder / TRAINING_FILE
    if not training.is_file():
        return
    try:
        record = json.loads(training.read_text(encoding="utf-8"))
        loaded.source["training"] = {"data": record["data"]["spec"], "fingerprint": record["data"]["fingerprint"],
                                     "test": record.get("test", {})}
    except (ValueError, KeyError, TypeError):
        log.warning("%s is not a readable training record; ignored", training)


def _load_from_factory(spec_ref: str, source: Path | None, options: Any) -> LoadedModel:
    factory = load_factory(spec_ref)
    params = inspect.signature(factory).parameters
    try:
        result = factory(source) if params and source is not None and source.is_dir() else factory()
    except EdgemmError:
        raise
    except Exception as exc:
        where = UserCode(factory).locate_error(exc)
        at = f" at {where.short} (`{where.code}`)" if where else ""
        log.debug("the factory's traceback", exc_info=exc)
        raise UsageError(f"{spec_ref} raised {type(exc).__name__}{at}: {str(exc).strip()[:500]}",
                         hint="Fix the factory (or the ExportSpec it builds); the traceback is in the debug log (-vv).",
                         details={"exception": type(exc).__name__}) from exc
    if isinstance(result, LoadedModel):
        loaded = result
    elif isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], ExportSpec):
        loaded = LoadedModel(result[0], result[1], {"kind": "custom", "factory": spec_ref})
    else:
        got = type(result).__name__ if not isinstance(result, tuple) else f"a tuple of {len(result)} ({', '.join(type(x).__name__ for x in result)})"
        raise UsageError(f"{spec_ref} returned {got}; expected (nn.Module, ExportSpec).",
                         hint="Return the module and its edgemm.models.spec.ExportSpec.")
    torch = require("torch")
    if not isinstance(loaded.module, torch.nn.Module):
        raise UsageError(f"{spec_ref} returned a {type(loaded.module).__name__} where the torch.nn.Module belongs; "
                         "expected (nn.Module, ExportSpec).",
                         hint="Return the model itself first, its ExportSpec second.")
    loaded.source.setdefault("kind", "custom")
    loaded.source["factory"] = spec_ref
    if source is not None and source.is_file():
        _load_weights_file(loaded.module, source, options.allow_pickle)
        from edgemm.models.specs.common import file_sha256

        loaded.source.update({"weights": source.name, "sha256": file_sha256(source)})
    elif source is not None and source.is_dir():
        _read_training_record(source, loaded)
    elif source is not None:
        raise InputPathError(f"{source} does not exist.", hint="Give the weights file or checkpoint directory.")
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
