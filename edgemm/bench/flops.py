"""Floating-point work of a graph at a fixed shape (MatMul / Gemm / Conv), for % of GPU peak."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Dense FP16 tensor-core peaks in TFLOPS (research/perf_anchors.md, table G).
FP16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H200": 989.4, "A100": 312.0}


def fp16_peak_tflops(gpu_name: str) -> float | None:
    """The dense FP16 peak for a GPU name, when known."""
    for key, value in FP16_PEAK_TFLOPS.items():
        if all(part.lower() in gpu_name.lower() for part in key.split()):
            return value
    if "h100" in gpu_name.lower():
        return FP16_PEAK_TFLOPS["H100 SXM"]
    return None


def count_flops(model_path: Path, shapes: dict[str, tuple[int, ...]]) -> float:
    """FLOPs (2 × MACs) of MatMul, Gemm and Conv nodes for concrete input shapes."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    for graph_input in model.graph.input:
        if graph_input.name in shapes:
            dims = graph_input.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[graph_input.name]):
                dim.Clear()
                dim.dim_value = int(size)
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    known: dict[str, list[int]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            known[value.name] = [d.dim_value for d in dims]
    for init in inferred.graph.initializer:
        known[init.name] = list(init.dims)
    total = 0.0
    for node in inferred.graph.node:
        out = known.get(node.output[0]) if node.output else None
        if out is None:
            continue
        if node.op_type == "MatMul" and node.input[0] in known:
            total += 2.0 * float(np.prod(out)) * known[node.input[0]][-1]
        elif node.op_type == "Gemm" and node.input[0] in known:
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            a = known[node.input[0]]
            total += 2.0 * float(np.prod(out)) * (a[0] if trans_a else a[-1])
        elif node.op_type == "Conv" and node.input[1] in known:
            weight = known[node.input[1]]
            total += 2.0 * float(np.prod(out)) * float(np.prod(weight[1:]))
    return total


def achieved(flops_per_batch: float, p50_ms: float, peak_tflops: float | None) -> dict[str, Any]:
    """Achieved TFLOPS and fraction of peak for one measurement."""
    tflops = flops_per_batch / (p50_ms / 1000.0) / 1e12 if p50_ms > 0 else 0.0
    return {"tflops": tflops, "peak_tflops": peak_tflops,
            "fraction_of_peak": (tflops / peak_tflops) if peak_tflops else None}
