"""torch → ONNX with dynamic axes, the ONNX checker, and external data for large models."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemm._deps import require
from edgemm.errors import ExportError, UsageError
from edgemm.models.spec import ExportSpec

log = logging.getLogger("edgemm.export")

EXPORTERS = ("dynamo", "legacy")
# ONNX protobufs cannot exceed 2 GiB: above this, weights go to an external data file.
EXTERNAL_DATA_THRESHOLD = 2 * 2**30


@dataclass(frozen=True)
class OnnxExport:
    """The written model: main file, companion files, whether weights are external."""

    path: Path
    files: list[Path]
    external_data: bool
    exporter: str


class OrderedIO:
    """Wraps a module so the traced graph has positional inputs and outputs in spec order."""

    def __new__(cls, module: Any, input_names: list[str], output_names: list[str]) -> Any:
        torch = require("torch")

        class _Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = module

            def forward(self, *tensors: Any) -> tuple[Any, ...]:
                out = self.inner(**dict(zip(input_names, tensors)))
                if isinstance(out, dict):
                    return tuple(out[name] for name in output_names)
                if isinstance(out, (tuple, list)):
                    return tuple(out)
                return (out,)

        return _Wrapper()


def to_torch(feed: dict[str, np.ndarray], names: list[str]) -> tuple[Any, ...]:
    """The feed's arrays as torch tensors, in ``names`` order (the graph's positional inputs)."""
    torch = require("torch")
    return tuple(torch.from_numpy(np.ascontiguousarray(feed[name])) for name in names)


def onnx_from_torch(
    module: Any,
    spec: ExportSpec,
    feed: dict[str, np.ndarray],
    path: Path,
    *,
    exporter: str = "dynamo",
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> OnnxExport:
    """Export ``module`` to ``path`` with the spec's names, dynamic axes and opset, then check it.

    Args:
        module: The torch module (eval mode).
        spec: Its ExportSpec.
        feed: Example inputs at the export shape.
        path: Target ``.onnx`` file.
        exporter: ``"dynamo"`` (torch.export based, default) or ``"legacy"`` (TorchScript).
        external_data_threshold: Parameter bytes above which weights are saved externally.

    Raises:
        ExportError: Tracing, conversion or ``onnx.checker`` failed.
    """
    if exporter not in EXPORTERS:
        raise UsageError(f"Unknown exporter {exporter!r}.", hint=f"Choose one of: {', '.join(EXPORTERS)}.")
    torch = require("torch", purpose="exporting to ONNX")
    onnx = require("onnx", purpose="exporting to ONNX")
    input_names = [t.name for t in spec.inputs]
    output_names = [t.name for t in spec.outputs]
    wrapper = OrderedIO(module, input_names, output_names).eval()
    args = to_torch(feed, input_names)
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    param_bytes += sum(b.numel() * b.element_size() for b in module.buffers())
    external = param_bytes > external_data_threshold
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet(), torch.no_grad():
            if exporter == "dynamo":
                _export_dynamo(torch, wrapper, args, spec, path, input_names, output_names, external)
            else:
                _export_legacy(torch, wrapper, args, spec, path, input_names, output_names, external)
    except (ExportError, UsageError):
        raise
    except Exception as exc:
        raise ExportError(
            f"torch → ONNX conversion failed ({exporter} exporter): {_first_line(exc)}",
            hint="Try --exporter legacy, or simplify data-dependent control flow in forward().",
            details={"exception": type(exc).__name__},
        ) from exc

    _strip_debug_metadata(onnx, path)
    files = [path]
    data_file = path.with_name(path.name + ".data")
    if external:
        if not data_file.is_file():
            raise ExportError("The exporter did not write the external data file.")
        files.append(data_file)
    elif data_file.exists():
        data_file.unlink()
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the exported graph: {_first_line(exc)}",
                          hint="Report this with the model; try --exporter legacy meanwhile.") from exc
    _check_interface(onnx, path, input_names, output_names)
    return OnnxExport(path=path, files=files, external_data=external, exporter=exporter)


def _export_dynamo(torch: Any, wrapper: Any, args: tuple, spec: ExportSpec, path: Path,
                   input_names: list[str], output_names: list[str], external: bool) -> None:
    dims = {axis: torch.export.Dim(axis, min=low, max=high) for axis, (low, high) in spec.axis_ranges.items() if high > low}
    dynamic_shapes = tuple(
        {i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str) and d in dims} or None
        for t in spec.inputs
    )
    program = torch.onnx.export(
        wrapper, args, dynamo=True, dynamic_shapes=(dynamic_shapes,),  # one entry: the *tensors varargs
        opset_version=spec.opset, input_names=input_names, output_names=output_names,
        external_data=external, optimize=True, verbose=False,
    )
    if program is None:
        raise ExportError("The dynamo exporter returned no program.")
    program.save(str(path), external_data=external)


def _export_legacy(torch: Any, wrapper: Any, args: tuple, spec: ExportSpec, path: Path,
                   input_names: list[str], output_names: list[str], external: bool) -> None:
    dynamic_axes = {
        t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
        for t in [*spec.inputs, *spec.outputs]
    }
    torch.onnx.export(
        wrapper, args, str(path), dynamo=False, opset_version=spec.opset, input_names=input_names,
        output_names=output_names, dynamic_axes={k: v for k, v in dynamic_axes.items() if v},
        do_constant_folding=True,
    )
    if external:
        onnx = require("onnx")
        model = onnx.load(str(path))
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)


# Dynamo records each node's Python stack trace and FX node: local source paths and noise that
# a shipped bundle should not carry. Module scopes stay (per-encoder optimization needs them).
_DEBUG_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


def _strip_debug_metadata(onnx: Any, path: Path) -> None:
    model = onnx.load(str(path), load_external_data=False)
    changed = False
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key not in _DEBUG_METADATA]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
            changed = True
    if changed:
        onnx.save(model, str(path))


def _check_interface(onnx: Any, path: Path, input_names: list[str], output_names: list[str]) -> None:
    model = onnx.load(str(path), load_external_data=False)
    graph_inputs = [i.name for i in model.graph.input]
    graph_outputs = [o.name for o in model.graph.output]
    if graph_inputs != input_names or graph_outputs != output_names:
        raise ExportError(
            f"The exported graph has inputs {graph_inputs} and outputs {graph_outputs}; "
            f"the spec declares {input_names} and {output_names}.",
            hint="An input the model ignores is dropped by the exporter: remove it from the spec.",
        )


def _first_line(exc: BaseException) -> str:
    """The informative line of an exporter error (torch wraps the cause in a long preamble)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1:]
        if after:
            return after[0][:500]
    return lines[0][:500]


@contextlib.contextmanager
def _quiet():
    """Keep the exporters' progress prints and warnings off the user's terminal (debug log only)."""
    sink = io.StringIO()
    level = logging.getLogger("torch").level
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch").setLevel(level)
            if sink.getvalue():
                log.debug("exporter output:\n%s", sink.getvalue())
