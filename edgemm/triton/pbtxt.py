"""Render Triton ``config.pbtxt`` text and validate it with Triton's own ``ModelConfig`` protobuf.

Configs are built as plain dicts (readable, diffable, testable) and rendered to protobuf text
format here. Every rendered config is then parsed by ``google.protobuf.text_format`` into
``model_config_pb2.ModelConfig`` as shipped by ``tritonclient``: an unknown field, a wrong type
or a misspelt enum fails exactly as it would fail in ``tritonserver``, without a server.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from edgemm.errors import MissingDependencyError
from edgemm.triton.errors import ModelConfigError

__all__ = ["Enum", "model_config_pb2", "render", "validate_config"]

_INSTALL_HINT = "pip install 'tritonclient[grpc]'  (provides model_config_pb2 and protobuf)"


class Enum(str):
    """A protobuf enum value (rendered without quotes), e.g. ``Enum("TYPE_FP32")``."""


def render(config: Mapping[str, Any], *, header: str | None = None) -> str:
    """Render a ModelConfig-shaped dict as protobuf text format.

    Dicts become messages, lists of dicts repeated messages (maps are lists of ``{key, value}``
    dicts), lists of scalars ``[a, b]``, :class:`Enum` bare identifiers, ``str`` quoted strings.

    Args:
        config: The config; keys are ModelConfig field names.
        header: Optional comment lines written at the top (``# ...``).

    Returns:
        The text, ending with a newline.
    """
    lines: list[str] = []
    if header:
        lines += [f"# {line}".rstrip() for line in header.splitlines()]
    _render_fields(config, lines, 0)
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelConfigError(f"Non-finite number {value!r} in a Triton config.", hint="This is a bug in edgemm.")
        return repr(value)
    if isinstance(value, str):
        # JSON string escaping is a subset of protobuf text-format escaping for our characters.
        return json.dumps(value, ensure_ascii=True)
    raise ModelConfigError(f"Cannot render {type(value).__name__} in a Triton config.", hint="This is a bug in edgemm.")


_LINE = 100


def _inline(message: Mapping[str, Any]) -> str | None:
    """``{ a: 1 b { c: "x" } }`` on one line for small messages of scalars, else None."""
    parts = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            inner = _inline(value)
            if inner is None:
                return None
            parts.append(f"{key} {inner}")
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if any(isinstance(v, Mapping) for v in value):
                return None
            if value:
                parts.append(f"{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            parts.append(f"{key}: {_scalar(value)}")
    text = "{ " + " ".join(parts) + " }" if parts else "{ }"
    return text if len(text) <= _LINE else None


def _render_fields(message: Mapping[str, Any], lines: list[str], depth: int) -> None:
    pad = "  " * depth
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            short = _inline(value)
            if short is not None and len(pad) + len(key) + len(short) < _LINE:
                lines.append(f"{pad}{key} {short}")
                continue
            lines.append(f"{pad}{key} {{")
            _render_fields(value, lines, depth + 1)
            lines.append(f"{pad}}}")
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if not value:
                continue
            if all(isinstance(v, Mapping) for v in value):
                lines.append(f"{pad}{key} [")
                for i, item in enumerate(value):
                    comma = "," if i < len(value) - 1 else ""
                    short = _inline(item)
                    if short is not None and len(pad) + len(short) <= _LINE:
                        lines.append(f"{pad}  {short}{comma}")
                        continue
                    lines.append(f"{pad}  {{")
                    _render_fields(item, lines, depth + 2)
                    lines.append(f"{pad}  }}{comma}")
                lines.append(f"{pad}]")
            else:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")


def model_config_pb2() -> ModuleType:
    """Triton's ``model_config_pb2`` module from ``tritonclient``.

    ``tritonclient.grpc``'s package ``__init__`` imports grpcio; only protobuf is needed to parse
    configs, so when grpcio is missing the generated module is loaded from its file directly.

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
            f"Validating Triton configs needs tritonclient's model_config_pb2 and protobuf ({first}).",
            hint=_INSTALL_HINT,
        ) from first


def validate_config(text: str, *, name: str | None = None) -> Any:
    """Parse ``text`` strictly as Triton's ``ModelConfig`` and check what Triton checks at load.

    Args:
        text: The ``config.pbtxt`` content.
        name: The model directory name; the config's ``name`` must equal it.

    Returns:
        The parsed ``ModelConfig`` message.

    Raises:
        ModelConfigError: The text does not parse, or fails a structural check.
        MissingDependencyError: tritonclient / protobuf are not installed.
    """
    pb2 = model_config_pb2()
    try:
        from google.protobuf import text_format
    except ImportError as exc:  # pragma: no cover - protobuf comes with the pb2 module
        raise MissingDependencyError("protobuf is required to validate Triton configs.", hint=_INSTALL_HINT) from exc
    config = pb2.ModelConfig()
    where = f"config of model {name!r}" if name else "Triton config"
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"The generated {where} is not a valid ModelConfig: {exc}",
                               hint="This is a bug in edgemm; please report it with the bundle's manifest.") from exc
    problems = _structural_problems(config, pb2, name)
    if problems:
        raise ModelConfigError(f"The generated {where} is invalid: " + "; ".join(problems),
                               hint="This is a bug in edgemm; please report it with the bundle's manifest.")
    return config


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
