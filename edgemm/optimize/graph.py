"""ONNX Runtime transformer fusions, one pass per encoder with that encoder's model type.

One ``model_type`` per ``optimize_model`` call fuses only the branch whose attention pattern it
knows (FIELD_NOTES: ``bert`` fused the text branch of a MiniLM + ViT graph, not the ViT). So
each transformer encoder gets its own pass with its own head count and hidden size, and the
fused-operator counts are recorded per encoder. Vision transformers first get their attention
scaling rewritten into the form ONNX Runtime's fusion matches.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("edgemm.optimize")

# transformers architecture → ONNX Runtime optimizer model type.
ORT_MODEL_TYPES = {
    "bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert",
    "mpnet": "bert", "vit": "vit", "deit": "vit", "clip_vision_model": "vit", "siglip_vision_model": "vit",
}
FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "LayerNormalization", "BiasAdd", "BiasSplitGelu")
CONTRIB_DOMAIN = "com.microsoft"


def encoder_passes(encoders: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Optimizer passes for the transformer encoders of a model (conv encoders need none)."""
    passes = []
    for modality, info in encoders.items():
        ort_type = ORT_MODEL_TYPES.get(info.get("architecture", ""))
        if ort_type and info.get("num_heads") and info.get("hidden_size"):
            passes.append({"branch": modality, "model_type": ort_type,
                           "num_heads": int(info["num_heads"]), "hidden_size": int(info["hidden_size"])})
    return passes


def scaled_softmax_as_div(model: Any) -> int:
    """Put unmasked attention scaling into the form ONNX Runtime fuses, in place.

    ONNX Runtime's attention fusion knows an unmasked ``Softmax ← Div(c) ← MatMul(q, kᵀ)``.
    transformers' vision transformers instead give ``Softmax ← Mul(c) ← MatMul`` (eager) or, as
    exported through SDPA, ``Softmax ← MatMul(Mul(q, √c), Mul(kᵀ, √c))`` — so no ViT / DeiT /
    CLIP-vision attention fused (measured: 0 of 12 ViT-B/16 layers). Both are rewritten to
    ``Softmax ← Div(1/c) ← MatMul(q, kᵀ)``: the same computation up to float rounding, and parity
    is re-checked after optimization anyway. Masked attention (an ``Add`` before the softmax, as
    in BERT) is left alone. Returns how many attention blocks were rewritten.
    """
    import onnx
    from onnx import numpy_helper

    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {i.name: i for i in model.graph.initializer}

    def scalar(name: str) -> Any:
        if name in initializers:
            value = numpy_helper.to_array(initializers[name])
        elif name in producers and producers[name].op_type == "Constant" and producers[name].attribute:
            value = onnx.helper.get_attribute_value(producers[name].attribute[0])
            value = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else None
        else:
            return None
        return value if value is not None and value.size == 1 and value.dtype.kind == "f" and value != 0 else None

    def scaled(name: str) -> tuple[str, Any] | None:
        """(unscaled input, scale) when ``name`` comes from a Mul by a scalar constant."""
        mul = producers.get(name)
        if mul is None or mul.op_type != "Mul":
            return None
        for side in (0, 1):
            scale = scalar(mul.input[side])
            if scale is not None and scalar(mul.input[1 - side]) is None:
                return mul.input[1 - side], scale
        return None

    def constant(value: Any, name: str) -> str:
        model.graph.initializer.append(numpy_helper.from_array(value.reshape(()), name))
        return name

    rewritten = 0
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        node = producers.get(softmax.input[0])
        if node is None:
            continue
        if node.op_type == "Mul":  # eager: Softmax ← Mul(c) ← MatMul
            found = scaled(softmax.input[0])
            if found is None or getattr(producers.get(found[0]), "op_type", None) != "MatMul":
                continue
            scores, scale = found
            node.op_type = "Div"
            del node.input[:]
            node.input.extend([scores, constant((1.0 / scale).astype(scale.dtype), f"{node.output[0]}/reciprocal")])
            rewritten += 1
        elif node.op_type == "MatMul":  # SDPA: Softmax ← MatMul(Mul(q, a), Mul(kᵀ, b))
            q, k = scaled(node.input[0]), scaled(node.input[1])
            if q is None or k is None:
                continue
            scale = (q[1] * k[1]).astype(q[1].dtype)
            unscaled = f"{node.output[0]}/unscaled"
            div = onnx.helper.make_node("Div", [unscaled, constant((1.0 / scale).astype(scale.dtype), f"{unscaled}/reciprocal")],
                                        [node.output[0]], name=f"{node.name or node.output[0]}/scale")
            del node.input[:]
            node.input.extend([q[0], k[0]])
            node.output[0] = unscaled
            index = next(i for i, n in enumerate(model.graph.node) if unscaled in n.output)
            model.graph.node.insert(index + 1, div)
            rewritten += 1
    return rewritten


def optimize_graph(src: Path, dst: Path, encoders: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Apply the per-encoder fusion passes to ``src`` and write ``dst``.

    A pass fuses every block it recognises, whichever encoder it belongs to (ONNX Runtime reads
    each block's head count from its reshape), so what each encoder ended up with is counted per
    branch on the final graph rather than per pass.

    Returns:
        ``{"passes": [{"branch", "model_type", "fused": {op: n}}], "fused": {op: n},
        "contrib_ops": bool, ...}`` for the manifest; a pass's ``fused`` is its branch's.
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load(str(src))
    del model.graph.value_info[:]  # stale shapes from the exporter confuse later shape inference
    only = next(iter(encoders)) if len(encoders) == 1 else None  # one encoder: maybe not a FusionModel
    baseline = _counts_by_branch(model, only)
    nodes_before = len(model.graph.node)
    passes = encoder_passes(encoders)
    report: dict[str, Any] = {"passes": []}
    if any(spec["model_type"] == "vit" for spec in passes):
        report["rewritten_attention_scaling"] = scaled_softmax_as_div(model)
    current = model
    ort_log = logging.getLogger("onnxruntime.transformers.optimizer")
    level = ort_log.level
    try:
        for index, spec in enumerate(passes):
            if index:  # later passes see ORT's optimizer as the producer and would warn about it
                ort_log.setLevel(max(level, logging.ERROR))
            with contextlib.redirect_stdout(io.StringIO()):
                optimized = optimize_model(current, model_type=spec["model_type"], num_heads=spec["num_heads"],
                                           hidden_size=spec["hidden_size"], opt_level=0, use_gpu=False,
                                           optimization_options=FusionOptions(spec["model_type"]))
            current = optimized.model
    finally:
        ort_log.setLevel(level)
    final = _counts_by_branch(current, only)
    for spec in passes:
        fused = _gained(final.get(spec["branch"], Counter()), baseline.get(spec["branch"], Counter()))
        log.info("graph optimization, %s encoder (%s): %s", spec["branch"], spec["model_type"], fused or "nothing fused")
        report["passes"].append({**spec, "fused": fused})
    report["fused"] = _gained(sum(final.values(), Counter()), sum(baseline.values(), Counter()))
    report["contrib_ops"] = any(n.domain == CONTRIB_DOMAIN for n in current.graph.node)
    if report["contrib_ops"] and not any(o.domain == CONTRIB_DOMAIN for o in current.opset_import):
        current.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    report["nodes"] = {"before": nodes_before, "after": len(current.graph.node)}
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(current, str(dst))
    return report


def _counts_by_branch(model: Any, single_modality: str | None = None) -> dict[str, Counter]:
    from edgemm.optimize.branches import node_branches

    branches = node_branches(model, single_modality)
    counts: dict[str, Counter] = {}
    for node in model.graph.node:
        if node.op_type in FUSED_OPS:
            counts.setdefault(branches.get(node.name, "fusion"), Counter())[node.op_type] += 1
    return counts


def _gained(after: Counter, before: Counter) -> dict[str, int]:
    return {op: after[op] - before.get(op, 0) for op in after if after[op] > before.get(op, 0)}
