"""torch → ONNX with dynamic axes, the ONNX checker, and external data for large models."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemm._deps import require
from edgemm.errors import EdgemmError, ExportError, UsageError
from edgemm.export.contract import (
    ForwardPlan,
    check_graph,
    exporter_failure,
    plan_forward,
    to_torch,
)
from edgemm.export.tracing import TracerHazard, UserCode, capture_exporter_output, first_line
from edgemm.models.spec import ExportSpec

log = logging.getLogger("edgemm.export")

EXPORTERS = ("dynamo", "legacy")
# ONNX protobufs cannot exceed 2 GiB: above this, weights go to an external data file.
EXTERNAL_DATA_THRESHOLD = 2 * 2**30


@dataclass(frozen=True)
class OnnxExport:
    """The written model: main file, companion files, whether weights are external, and the
    tracer warnings raised from the user's code (the caller refuses or records them)."""

    path: Path
    files: list[Path]
    external_data: bool
    exporter: str
    tracer_hazards: list[TracerHazard] = field(default_factory=list)


class OrderedIO:
    """Wraps a module so the traced graph has positional inputs and outputs in spec order.

    The wrapper calls ``forward()`` the way its :class:`~edgemm.export.contract.ForwardPlan`
    says (keywords, one dict, dict-valued parameters, positional) and picks the declared
    outputs from a tensor, tuple, dict or dataclass: users' models need no wrapper of their own.
    """

    def __new__(cls, module: Any, plan: ForwardPlan) -> Any:
        torch = require("torch")

        class _Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = module

            def forward(self, *tensors: Any) -> tuple[Any, ...]:
                return plan.select(plan.call(self.inner, tensors))

        return _Wrapper()


def onnx_from_torch(
    module: Any,
    spec: ExportSpec,
    feed: dict[str, np.ndarray],
    path: Path,
    *,
    exporter: str = "dynamo",
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    plan: ForwardPlan | None = None,
) -> OnnxExport:
    """Export ``module`` to ``path`` with the spec's names, dynamic axes and opset, then check it.

    Args:
        module: The torch module (eval mode).
        spec: Its ExportSpec.
        feed: Example inputs at the export shape.
        path: Target ``.onnx`` file.
        exporter: ``"dynamo"`` (torch.export based, default) or ``"legacy"`` (TorchScript).
        external_data_threshold: Parameter bytes above which weights are saved externally.
        plan: How to call ``forward()`` (default: :func:`~edgemm.export.contract.plan_forward`).

    Returns:
        The written files; ``tracer_hazards`` lists the legacy exporter's tracer warnings from
        the user's code (empty for dynamo, which refuses data-dependent code outright).

    Raises:
        DataDependentError: (dynamo) ``forward()`` branches on a tensor's value; names the line.
        SpecContractError: The graph does not take, use or return what the spec declares.
        ExportError: Tracing, conversion or ``onnx.checker`` failed.
    """
    if exporter not in EXPORTERS:
        raise UsageError(f"Unknown exporter {exporter!r}.", hint=f"Choose one of: {', '.join(EXPORTERS)}.")
    torch = require("torch", purpose="exporting to ONNX")
    onnx = require("onnx", purpose="exporting to ONNX")
    input_names = [t.name for t in spec.inputs]
    output_names = [t.name for t in spec.outputs]
    plan = plan or plan_forward(module, spec)
    user = UserCode(module)
    wrapper = OrderedIO(module, plan).eval()
    args = to_torch(feed, input_names)
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    param_bytes += sum(b.numel() * b.element_size() for b in module.buffers())
    external = param_bytes > external_data_threshold
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with capture_exporter_output(user) as said, torch.no_grad():
            if exporter == "dynamo":
                _export_dynamo(torch, wrapper, args, spec, path, input_names, output_names, external)
            else:
                _export_legacy(torch, wrapper, args, spec, path, input_names, output_names, external)
    except EdgemmError:
        raise
    except Exception as exc:
        raise exporter_failure(exc, exporter, user) from exc

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
        raise ExportError(f"onnx.checker rejected the exported graph: {first_line(exc)}",
                          hint="Report this with the model and the exporter's log (-vv).") from exc
    check_graph(spec, path)
    return OnnxExport(path=path, files=files, external_data=external, exporter=exporter,
                      tracer_hazards=list(said.hazards))


def _export_dynamo(torch: Any, wrapper: Any, args: tuple, spec: ExportSpec, path: Path,
                   input_names: list[str], output_names: list[str], external: bool) -> None:
    dims = {axis: torch.export.Dim(axis, min=low, max=high) for axis, (low, high) in spec.axis_ranges.items() if high > low}
    dynamic_shapes = tuple(
        {i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str) and d in dims} or None
        for t in spec.inputs
    )
    # No input/output names here: dynamo names internal values after their operator ("embedding",
    # "mean", "linear"), and renaming the interface to such a name would duplicate it. The spec's
    # names are given afterwards, clashes moved aside (_name_interface).
    program = torch.onnx.export(
        wrapper, args, dynamo=True, dynamic_shapes=(dynamic_shapes,),  # one entry: the *tensors varargs
        opset_version=spec.opset, external_data=external, optimize=True, verbose=False,
    )
    if program is None:
        raise ExportError("The dynamo exporter returned no program.")
    program.save(str(path), external_data=external)
    _name_interface(require("onnx"), path, input_names, output_names)


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


def _name_interface(onnx: Any, path: Path, input_names: list[str], output_names: list[str]) -> None:
    """Rename the graph's inputs and outputs to the spec's names; internal values that already
    carry one of those names are renamed first, so every name stays unique (SSA)."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    current = [i.name for i in graph.input if i.name not in initializers] + [o.name for o in graph.output]
    wanted = [*input_names, *output_names]
    if current == wanted or len(current) != len(wanted):
        return  # a count mismatch is reported by check_graph with the spec's words
    rename = {old: new for old, new in zip(current, wanted) if old != new}
    existing = _value_names(graph)
    for name in set(wanted) & existing:
        if name not in rename and name not in current:
            fresh, i = f"{name}__internal", 1
            while fresh in existing or fresh in wanted:
                fresh, i = f"{name}__internal{i}", i + 1
            rename[name] = fresh
    _rename_values(graph, rename)
    onnx.save(model, str(path))


def _value_names(graph: Any) -> set[str]:
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= _value_names(sub)
    return names


def _rename_values(graph: Any, rename: dict[str, str]) -> None:
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = rename.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_values(sub, rename)
