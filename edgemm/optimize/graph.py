"""ONNX Runtime transformer fusions, one pass per encoder with that encoder's model type.

One ``model_type`` per ``optimize_model`` call fuses only the branch whose attention pattern it
knows (FIELD_NOTES: ``bert`` fused the text branch of a MiniLM + ViT graph, not the ViT). So
each transformer encoder gets its own pass with its own head count and hidden size, and the
fused-operator counts are recorded per pass.
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


def _counts(model: Any) -> Counter:
    return Counter(n.op_type for n in model.graph.node if n.op_type in FUSED_OPS)


def optimize_graph(src: Path, dst: Path, encoders: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Apply the per-encoder fusion passes to ``src`` and write ``dst``.

    Returns:
        ``{"passes": [{"branch", "model_type", "fused": {op: n}}], "fused": {op: n},
        "contrib_ops": bool}`` for the manifest.
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load(str(src))
    del model.graph.value_info[:]  # stale shapes from the exporter confuse later shape inference
    baseline = _counts(model)
    nodes_before = len(model.graph.node)
    report: dict[str, Any] = {"passes": []}
    current = model
    for spec in encoder_passes(encoders):
        before = _counts(current)
        with contextlib.redirect_stdout(io.StringIO()):
            optimized = optimize_model(current, model_type=spec["model_type"], num_heads=spec["num_heads"],
                                       hidden_size=spec["hidden_size"], opt_level=0, use_gpu=False,
                                       optimization_options=FusionOptions(spec["model_type"]))
        current = optimized.model
        after = _counts(current)
        fused = {op: after[op] - before.get(op, 0) for op in after if after[op] - before.get(op, 0) > 0}
        log.info("graph optimization, %s encoder (%s): %s", spec["branch"], spec["model_type"], fused or "nothing fused")
        report["passes"].append({**spec, "fused": fused})
    final = _counts(current)
    report["fused"] = {op: final[op] - baseline.get(op, 0) for op in final if final[op] > baseline.get(op, 0)}
    report["contrib_ops"] = any(n.domain == CONTRIB_DOMAIN for n in current.graph.node)
    if report["contrib_ops"] and not any(o.domain == CONTRIB_DOMAIN for o in current.opset_import):
        current.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    report["nodes"] = {"before": nodes_before, "after": len(current.graph.node)}
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(current, str(dst))
    return report
