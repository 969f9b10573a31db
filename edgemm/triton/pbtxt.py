"""Triton ``config.pbtxt``: built as Triton's own ``ModelConfig`` protobuf, rendered by protobuf.

The planner writes each config as a plain dict in protobuf's JSON mapping of ``ModelConfig``
(field names as in ``model_config.proto``, enum values as their names, maps as dicts). Here it is
parsed strictly into ``model_config_pb2.ModelConfig`` as shipped by ``tritonclient`` — an unknown
field, a wrong type or a misspelt enum fails exactly as it would fail in ``tritonserver``, without
a server — checked for the load-time rules the schema cannot express, and rendered with
``google.protobuf.text_format``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from edgemm.errors import MissingDependencyError
from edgemm.triton.errors import ModelConfigError

__all__ = ["build_config", "model_config_pb2", "render", "validate_config"]

_INSTALL_HINT = "pip install 'edgemm[triton]'  (tritonclient provides model_config_pb2 and protobuf)"
_BUG_HINT = "This is a bug in edgemm; please report it with the bundle's manifest."


def model_config_pb2() -> ModuleType:
    """Triton's ``model_config_pb2`` module from ``tritonclient``.

    ``tritonclient.grpc``'s package ``__init__`` imports grpcio; only protobuf is needed to build
    configs, so when grpcio is missing the generated module is loaded from its file directly.

    Returns:
        The generated module (``ModelConfig``, ``DataType`` … as attributes).

    Raises:
        MissingDependencyError: tritonclient or protobuf is not installed (exit 3).
    """
    try:
        return importlib.import_module("tritonclient.grpc.model_config_pb2")
    except ImportError as first:
        spec = importlib.util.find_spec("tritonclient")
        locations = list(spec.submodule_search_locations or []) if spec else []
        for base in locations:
            path = f"{base}/grpc/model_config_pb2.py"
            file_spec = importlib.util.spec_from_file_location("edgemm_triton_model_config_pb2", path)
            if file_spec is None or file_spec.loader is None:
                continue
            try:
                module = importlib.util.module_from_spec(file_spec)
                file_spec.loader.exec_module(module)
                return module
            except (ImportError, FileNotFoundError):
                continue
        raise MissingDependencyError(
            f"Building Triton configs needs tritonclient's model_config_pb2 and protobuf ({first}).",
            hint=_INSTALL_HINT,
        ) from first


def build_config(config: Mapping[str, Any], *, name: str | None = None) -> Any:
    """Triton's ``ModelConfig`` message from its JSON-mapping dict, checked as Triton checks it at load.

    Args:
        config: The config: keys are ``ModelConfig`` field names, enum values their names
            (``"TYPE_FP32"``), map fields dicts (``{"key": {"string_value": "v"}}``).
        name: The model directory name; the config's ``name`` must equal it.

    Returns:
        The ``ModelConfig`` message.

    Raises:
        ModelConfigError: The dict is not a valid ``ModelConfig``, or fails a load-time check.
        MissingDependencyError: tritonclient / protobuf are not installed.
    """
    from google.protobuf import json_format

    return _parsed(lambda message: json_format.ParseDict(config, message), json_format.ParseError, name)


def render(message: Any, *, header: str | None = None) -> str:
    """``config.pbtxt`` text of a ``ModelConfig`` message (protobuf text format).

    Args:
        message: The ``ModelConfig`` (from :func:`build_config`).
        header: Optional comment lines written at the top (``# ...``).

    Returns:
        The text, ending with a newline.
    """
    from google.protobuf import text_format

    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    body = text_format.MessageToString(message, use_short_repeated_primitives=True)
    return "\n".join([*lines, body.rstrip("\n")]) + "\n"


def validate_config(text: str, *, name: str | None = None) -> Any:
    """Parse ``text`` strictly as Triton's ``ModelConfig`` and check what Triton checks at load.

    Args:
        text: The ``config.pbtxt`` content.
        name: The model directory name; the config's ``name`` must equal it.

    Returns:
        The parsed ``ModelConfig`` message.

    Raises:
        ModelConfigError: The text does not parse, or fails a load-time check.
        MissingDependencyError: tritonclient / protobuf are not installed.
    """
    from google.protobuf import text_format

    return _parsed(lambda message: text_format.Parse(text, message), text_format.ParseError, name)


def _parsed(parse: Callable[[Any], object], error: type[Exception], name: str | None) -> Any:
    """A new ``ModelConfig`` filled by ``parse``; its ``error`` and any load-time problem raise ModelConfigError."""
    pb2 = model_config_pb2()
    message = pb2.ModelConfig()
    where = f"config of model {name!r}" if name else "Triton config"
    try:
        parse(message)
    except error as exc:
        raise ModelConfigError(f"The {where} is not a valid ModelConfig: {exc}", hint=_BUG_HINT) from exc
    problems = _structural_problems(message, pb2, name)
    if problems:
        raise ModelConfigError(f"The {where} is invalid: " + "; ".join(problems), hint=_BUG_HINT)
    return message


def _structural_problems(config: Any, pb2: ModuleType, name: str | None) -> list[str]:
    """Load-time rules of Triton's model_config_utils that the protobuf schema cannot express."""
    problems: list[str] = []
    if name is not None and config.name != name:
        problems.append(f"name {config.name!r} differs from its directory {name!r}")
    if not (config.backend or config.platform):
        problems.append("neither backend nor platform is set")
    if config.max_batch_size < 0:
        problems.append("max_batch_size is negative")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            problems.append("dynamic_batching needs max_batch_size > 0")
        for size in config.dynamic_batching.preferred_batch_size:
            if size <= 0 or size > config.max_batch_size:
                problems.append(f"preferred_batch_size {size} outside 1..{config.max_batch_size}")
    ensemble = config.platform == "ensemble"
    if not ensemble and not config.input:
        problems.append("no inputs")
    if not config.output:
        problems.append("no outputs")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for tensor in tensors:
            if tensor.name in seen:
                problems.append(f"{kind} {tensor.name!r} appears twice")
            seen.add(tensor.name)
            if tensor.data_type == pb2.TYPE_INVALID:
                problems.append(f"{kind} {tensor.name!r} has no data_type")
            if not tensor.dims:
                problems.append(f"{kind} {tensor.name!r} has no dims")
            if any(d == 0 or d < -1 for d in tensor.dims):
                problems.append(f"{kind} {tensor.name!r} has invalid dims {list(tensor.dims)}")
    if ensemble and not config.ensemble_scheduling.step:
        problems.append("an ensemble without steps")
    for warmup in config.model_warmup:
        if warmup.batch_size < 1 or (config.max_batch_size and warmup.batch_size > config.max_batch_size):
            problems.append(f"warmup {warmup.name!r} has batch_size {warmup.batch_size}")
        inputs = {t.name for t in config.input}
        for key in warmup.inputs:
            if key not in inputs:
                problems.append(f"warmup {warmup.name!r} feeds unknown input {key!r}")
    return problems
