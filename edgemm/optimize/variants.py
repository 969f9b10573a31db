"""Build the precision variants a recipe asks for, each through the accuracy gate.

For every requested variant: build it, check its outputs are finite on edge inputs, measure it
on the held-out set against FP32. Over budget → repair (exclude the nodes whose quantization
hurts most, found by activation matching against the float graph) and retry; still over budget
→ the next safer precision. Every step is logged and recorded for the manifest.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemm import progress
from edgemm.bundle.compare import Tolerance
from edgemm.bundle.manifest import Artifact
from edgemm.data.evalset import EvalSet
from edgemm.optimize import precision as prec
from edgemm.optimize.branches import nodes_in
from edgemm.optimize.gate import (
    GateResult,
    harmful_nodes,
    judge,
    run_artifact,
)
from edgemm.recipes import Recipe, VariantSpec
from edgemm.runtime.sessions import create_session

log = logging.getLogger("edgemm.optimize")

# The next safer precision, per base graph (plain graphs feed TensorRT, which wants QDQ/FP16).
FALLBACK = {
    ("int8-static", "plain"): ("fp16", "fp32"),
    ("int8-static", "optimized"): ("int8-dynamic", "fp32"),
    ("int8-dynamic", "optimized"): ("fp32",),
    ("int8-dynamic", "plain"): ("fp32",),
    ("mixed", "optimized"): ("fp32",),
    ("mixed", "plain"): ("fp32",),
    ("fp16", "plain"): ("fp32",),
    ("fp16", "optimized"): ("fp32",),
    ("fp32-opt", "optimized"): ("fp32",),
    # OpenVINO variants retry inside their builder (NNCF accuracy control); the ONNX artifacts remain.
    ("ov-int8", "plain"): ("fp32",),
    ("ov-bf16", "plain"): ("fp32",),
    ("ov-int8-bf16", "plain"): ("fp32",),
    ("ov-fp32", "plain"): ("fp32",),
}
PROVIDERS = {
    ("fp32-opt", "optimized"): ["CPUExecutionProvider", "CUDAExecutionProvider"],
    ("fp16", "optimized"): ["CUDAExecutionProvider"],
    ("fp16", "plain"): ["CUDAExecutionProvider", "TensorrtExecutionProvider"],
    ("int8-dynamic", "optimized"): ["CPUExecutionProvider"],
    ("int8-dynamic", "plain"): ["CPUExecutionProvider"],
    ("int8-static", "plain"): ["CPUExecutionProvider", "TensorrtExecutionProvider"],
    ("int8-static", "optimized"): ["CPUExecutionProvider"],
    ("mixed", "optimized"): ["CPUExecutionProvider"],
    ("mixed", "plain"): ["CPUExecutionProvider"],
}
PRECISION_FIELD = {"fp32-opt": "fp32", "fp16": "fp16", "int8-dynamic": "int8", "int8-static": "int8", "mixed": "mixed"}
REPAIRABLE_OPS = {
    "int8-dynamic": {"MatMul", "Gemm", "Attention", "EmbedLayerNormalization", "Gather"},
    "int8-static": {"MatMul", "Gemm", "Conv"},
    "mixed": {"MatMul", "Gemm", "Attention", "EmbedLayerNormalization", "Gather"},
    "fp16": {"MatMul", "Gemm", "Add", "Mul", "Div", "Sub", "Conv", "Attention", "Gelu", "BiasGelu", "FastGelu",
             "Tanh", "Sigmoid", "Relu"},
}


@dataclass
class VariantContext:
    """What the variant builder needs from the export pipeline."""

    staging: Path
    bases: dict[str, Path]                      # "plain" / "optimized" → FP32 ONNX
    base_info: dict[str, dict[str, Any]]        # optimization report per base
    output: str                                 # the output the task metric reads
    evalset: EvalSet
    fp32_outputs: np.ndarray
    calibration_feeds: list[dict[str, np.ndarray]]
    edge_feeds: dict[str, dict[str, np.ndarray]]
    recipe: Recipe
    parity_check: Callable[[Path], dict[str, Any]]
    reports: list[dict[str, Any]] = field(default_factory=list)
    modalities: tuple[str, ...] = ()            # the model's modalities (one: not necessarily a FusionModel)

    @property
    def single_modality(self) -> str | None:
        """The model's only modality, or None (see :func:`edgemm.optimize.branches.node_branches`)."""
        return self.modalities[0] if len(self.modalities) == 1 else None


def build_variants(ctx: VariantContext) -> list[Artifact]:
    """Artifacts for every variant that shipped (in recipe order); ``ctx.reports`` says what happened."""
    artifacts = []
    for spec in ctx.recipe.variants:
        with progress.stage(f"Variant {spec.name}"):
            artifact = _build_one(ctx, spec)
        if artifact is not None:
            artifacts.append(artifact)
    return artifacts


def _build_one(ctx: VariantContext, spec: VariantSpec) -> Artifact | None:
    chain = [spec.precision, *(spec.fallback if spec.fallback is not None else FALLBACK[(spec.precision, spec.base)])]
    report: dict[str, Any] = {"variant": spec.name, "requested": spec.precision, "base": spec.base, "attempts": []}
    ctx.reports.append(report)
    if spec.precision.startswith("ov-"):
        from edgemm.optimize.openvino import build_openvino_variant

        return build_openvino_variant(ctx, spec, report)
    if spec.precision == "mixed" and not _mixed_nodes(ctx, spec, ctx.bases[spec.base]):
        # A recipe for many models meets one without the named branch (an image-only model,
        # or one transformer over text and image like ViLT): the variant does not apply to it.
        branches = sorted(b for b, p in spec.modalities.items() if p == "int8")
        report["shipped"] = None
        report["outcome"] = f"not applicable: the model has no separate {' / '.join(branches)} branch"
        log.warning("variant %s: %s", spec.name, report["outcome"])
        return None
    for step, precision in enumerate(chain):
        if precision == "fp32":
            report["shipped"] = None
            report["outcome"] = "fell back to fp32 (already in the bundle as artifact 'fp32')"
            log.warning("variant %s: every precision failed the gate; FP32 is what ships", spec.name)
            return None
        target = ctx.staging / "model" / f"{spec.name}.onnx"
        result, info = _attempt(ctx, spec, precision, target, exclude=[], report=report, label="initial")
        excluded: list[str] = []
        rounds = 0 if precision == "fp32-opt" else ctx.recipe.gate.repair_rounds
        for round_no in range(1, rounds + 1):
            if result.passed or "error" in report["attempts"][-1]:
                break
            ranked = _rank_harm(ctx, spec, precision, target, excluded)
            if not ranked:
                break
            excluded += [r["node"] for r in ranked]
            log.warning("variant %s: %s over budget (drop %.2f points); repair round %d excludes %d nodes",
                        spec.name, precision, result.drop_points, round_no, len(ranked))
            result, info = _attempt(ctx, spec, precision, target, exclude=excluded, report=report,
                                    label=f"repair {round_no}", harmful=ranked)
        if result.passed:
            report["shipped"] = precision
            report["outcome"] = ("passed" if not excluded else f"passed after excluding {len(excluded)} nodes") + (
                f" (fallback from {spec.precision})" if step else "")
            log.info("variant %s: %s ships (%s %.4f vs FP32 %.4f, agreement %.4f)", spec.name, precision,
                     result.metric, result.value, result.fp32_value, result.top1_agreement)
            return _artifact(ctx, spec, precision, target, result, info, report)
        log.warning("variant %s: %s failed the gate; trying the next safer precision", spec.name, precision)
        target.unlink(missing_ok=True)
    return None


def _attempt(ctx: VariantContext, spec: VariantSpec, precision: str, target: Path, *, exclude: list[str],
             report: dict[str, Any], label: str, harmful: list[dict[str, Any]] | None = None) -> tuple[GateResult, dict[str, Any]]:
    base_path = ctx.bases[spec.base]
    with progress.stage(f"building {precision} ({label})"):
        info = _make(ctx, spec, precision, base_path, target, exclude)
    try:
        edge = _edge_check(target, ctx.edge_feeds)
        outputs = run_artifact(target, ctx.evalset.feeds, ctx.output)
    except Exception as exc:  # ORT raises many types; an artifact that cannot be measured cannot ship
        reason = f"ONNX Runtime's CPU provider could not run it: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        log.warning("variant %s: %s", spec.name, reason)
        result = GateResult(metric=ctx.recipe.gate.metric, value=float("nan"), fp32_value=float("nan"),
                            drop_points=float("inf"), budget_points=ctx.recipe.gate.budget, top1_agreement=0.0, near_ties=0,
                            max_abs_diff=float("inf"), nonfinite=0, samples=len(ctx.evalset), passed=False)
        report["attempts"].append({"precision": precision, "step": label, "error": reason, "excluded_nodes": len(exclude)})
        return result, info
    result = judge(outputs, ctx.fp32_outputs, ctx.evalset.labels, metric=ctx.recipe.gate.metric,
                   budget_points=ctx.recipe.gate.budget,
                   tolerance=Tolerance.for_precision(PRECISION_FIELD[precision]))
    if edge["nonfinite"]:
        result.passed = False
        result.nonfinite += edge["nonfinite"]
    entry = {"precision": precision, "step": label, "gate": result.to_dict(), "edge_inputs": edge,
             "excluded_nodes": len(exclude)}
    if harmful:
        entry["harmful_nodes"] = harmful
    report["attempts"].append(entry)
    return result, info


def _make(ctx: VariantContext, spec: VariantSpec, precision: str, base: Path, target: Path,
          exclude: list[str]) -> dict[str, Any]:

    if precision == "fp32-opt":
        shutil.copyfile(base, target)
        return {"method": "graph-optimized"}
    if precision == "fp16":
        return prec.to_fp16(base, target, block_nodes=exclude)
    if precision == "int8-dynamic":
        return prec.quantize_int8_dynamic(base, target, per_channel=spec.per_channel, reduce_range=spec.reduce_range,
                                          exclude=exclude)
    if precision == "int8-static":
        method = spec.calibration or ctx.recipe.calibration.method
        return prec.quantize_int8_static(base, target, ctx.calibration_feeds, method=method,
                                         per_channel=spec.per_channel, exclude=exclude)
    # mixed: INT8 (dynamic) only in the branches the recipe names, FP32 elsewhere.
    include = [n for n in _mixed_nodes(ctx, spec, base) if n not in exclude]
    info = prec.quantize_int8_dynamic(base, target, per_channel=spec.per_channel, reduce_range=spec.reduce_range,
                                      exclude=exclude, include=include)
    return {**info, "method": "mixed", "branches": {b: spec.modalities.get(b, "fp32") for b in
                                                     ("text", "image", "audio", "fusion", "head")}}


def _mixed_nodes(ctx: VariantContext, spec: VariantSpec, base: Path) -> list[str]:
    """The nodes a mixed variant quantizes: those of the branches it names INT8."""
    import onnx

    branches = {b for b, p in spec.modalities.items() if p == "int8"}
    return nodes_in(onnx.load(str(base), load_external_data=False), branches, single_modality=ctx.single_modality)


def _rank_harm(ctx: VariantContext, spec: VariantSpec, precision: str, target: Path,
               excluded: list[str]) -> list[dict[str, Any]]:
    import onnx

    base = ctx.bases[spec.base]
    model = onnx.load(str(base), load_external_data=False)
    ops = REPAIRABLE_OPS.get(precision, set())
    candidates = [n.name for n in model.graph.node if n.op_type in ops and n.name and n.name not in excluded]
    if precision == "mixed":
        allowed = set(nodes_in(model, {b for b, p in spec.modalities.items() if p == "int8"},
                               single_modality=ctx.single_modality))
        candidates = [c for c in candidates if c in allowed]
    if not candidates:
        return []
    count = max(1, math.ceil(ctx.recipe.gate.repair_fraction * len(candidates)))
    sample = ctx.calibration_feeds[:2] or ctx.evalset.feeds[:2]
    return harmful_nodes(base, target, sample, candidates, count=count)


def edge_feeds(preprocessor: Any, modalities: dict[str, dict[str, Any]], *, rate: int | None) -> dict[str, dict[str, np.ndarray]]:
    """Feeds that stress FP16/INT8 numerics: empty and longest text, all-padding rows, blank
    images, silence — each with the other modalities normal."""
    from edgemm.data.synthetic import synthesize_image, synthesize_speechlike

    normal = {"text": "I think it is 7", "image": synthesize_image(48, 48, seed=1),
              "audio": (synthesize_speechlike(1.0, rate or 16000, seed=1), rate or 16000)}
    cases: dict[str, dict[str, Any]] = {}
    if "text" in modalities:
        cases["empty_text"] = {"text": ""}
        cases["longest_text"] = {"text": " ".join(["the answer is seven, I think, or maybe eight"] * 60)}
    if "image" in modalities:
        cases["blank_white_image"] = {"image": np.full((48, 48, 3), 255, np.uint8)}
        cases["blank_black_image"] = {"image": np.zeros((48, 48, 3), np.uint8)}
    if "audio" in modalities:
        cases["silence"] = {"audio": (np.zeros(rate or 16000, np.float32), rate or 16000)}
    feeds = {}
    for name, override in cases.items():
        raw = {m: [override.get(m, normal[m])] for m in modalities}
        feeds[name] = preprocessor(raw)
    if "text" in modalities:
        raw = {m: [normal[m], normal[m]] for m in modalities}
        raw["text"] = ["7", " ".join(["seven"] * 60)]
        padded = preprocessor(raw)
        feeds["padding_rows"] = padded
        masks = [k for k in padded if k.endswith("attention_mask") and not k.startswith("audio")]
        if masks:
            zeroed = {k: v.copy() for k, v in padded.items()}
            zeroed[masks[0]][0, :] = 0
            feeds["all_padding_row"] = zeroed
    return feeds


def _edge_check(path: Path, feeds: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Run the edge inputs (empty / longest text, all-padding rows, blank images, silence)."""
    session = create_session(path)
    bad = {}
    for name, feed in feeds.items():
        count = sum(int((~np.isfinite(out)).sum()) for out in session.run(None, feed) if np.issubdtype(out.dtype, np.floating))
        if count:
            bad[name] = count
    return {"checked": sorted(feeds), "nonfinite": sum(bad.values()), "failing": bad}


def _artifact(ctx: VariantContext, spec: VariantSpec, precision: str, target: Path, result: GateResult,
              info: dict[str, Any], report: dict[str, Any]) -> Artifact:
    parity = ctx.parity_check(target) if precision == "fp32-opt" else None
    providers = list(spec.providers) if spec.providers else PROVIDERS[(precision, spec.base)]
    optimized = spec.base == "optimized"
    if optimized and ctx.base_info.get("optimized", {}).get("contrib_ops"):
        providers = [p for p in providers if p != "TensorrtExecutionProvider"]
    # The gate runs on ONNX Runtime's CPU provider wherever the export runs; the target device's
    # own numerics are re-checked there by `edgemm verify --device cuda` against the golden set.
    validation: dict[str, Any] = {"gate": {**result.to_dict(), "outcome": report["outcome"],
                                           "evaluated_on": "onnxruntime CPUExecutionProvider"}}
    if parity is not None:
        validation["parity"] = {k: v for k, v in parity.items() if k != "comparisons"}
    requirements: dict[str, Any] = {"graph_optimized": optimized}
    if optimized:
        requirements["contrib_ops"] = bool(ctx.base_info.get("optimized", {}).get("contrib_ops"))
    rel = target.relative_to(ctx.staging).as_posix()
    return Artifact(name=spec.name, path=rel, kind="onnx", precision=PRECISION_FIELD[precision], files=[rel],
                    providers=providers, quantization=info, requirements=requirements, validation=validation)
