"""OpenVINO IR variants of the FP32 graph: ``ov-fp32``, ``ov-bf16``, ``ov-int8`` and ``ov-int8-bf16`` (NNCF).

Built from the bundle's *plain* FP32 ONNX (OpenVINO cannot read ONNX Runtime's contrib operators
in the fused graph) and judged by the same accuracy gate as the ONNX Runtime variants, measured
through OpenVINO with the properties the runtime compiles with
(:func:`edgemm.runtime.backends.openvino.compile_model`), so gate and kiosk see the same numerics.

* ``ov-fp32``: the IR with ``INFERENCE_PRECISION_HINT=f32``.
* ``ov-bf16``: the same IR with ``bf16``; built only where the export CPU has ``avx512_bf16`` or
  ``amx_bf16`` (elsewhere OpenVINO would not run BF16 kernels, and the gate could not measure them).
* ``ov-int8``: NNCF post-training quantization on the calibration split (``model_type``
  TRANSFORMER when the graph has attention); over budget → NNCF's accuracy-control mode on the
  held-out split with the gate's metric and budget, then the gate again. Non-quantized layers
  run in f32.
* ``ov-int8-bf16``: the same INT8 IR with its non-quantized layers in ``bf16`` -- what OpenVINO
  does by default on a BF16 CPU, so what a user of OpenVINO + NNCF gets (2.5-4 % faster than
  ``ov-int8`` on BERT-base + ViT-B/16 sizes, 2-core EPYC); built, like ``ov-bf16``, only where the
  export CPU has BF16, gated on its own, and required of the kiosk's CPU. Where ``ov-int8``
  shipped it shares that artifact's files (one IR compiled two ways); otherwise it quantizes its own.

Without openvino / nncf the variant is recorded as not built and the export goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgemm._deps import require
from edgemm.bundle.compare import Tolerance
from edgemm.bundle.manifest import Artifact
from edgemm.errors import MissingDependencyError, RuntimeFailure
from edgemm.optimize.gate import GateResult, judge
from edgemm.recipes import VariantSpec
from edgemm.runtime.sessions import feed_rows

log = logging.getLogger("edgemm.optimize")

#: Recipe precision → (manifest precision, OpenVINO inference precision).
OV_PRECISIONS = {"ov-fp32": ("fp32", "f32"), "ov-bf16": ("bf16", "bf16"), "ov-int8": ("int8", "f32"),
                 "ov-int8-bf16": ("int8", "bf16")}
NOT_INSTALLED = "not built: openvino not installed (pip install 'edgemm[openvino]')"
def build_openvino_variant(ctx: Any, spec: VariantSpec, report: dict[str, Any]) -> Artifact | None:
    """Build, gate and record one OpenVINO variant.

    Args:
        ctx: The :class:`edgemm.optimize.variants.VariantContext` of the export.
        spec: The recipe's variant (precision ``ov-fp32``, ``ov-bf16``, ``ov-int8`` or ``ov-int8-bf16``).
        report: This variant's entry in ``ctx.reports``; ``attempts``, ``shipped`` and
            ``outcome`` are filled in.

    Returns:
        The artifact (kind ``"openvino"``, files ``model/<name>.xml`` and ``.bin``), or None when it
        did not ship (not installed, not applicable here, or over budget); ``report`` says which.
    """
    from edgemm.runtime.backends.openvino import has_bf16

    report["engine"] = "openvino"
    precision, inference = OV_PRECISIONS[spec.precision]
    try:
        ov = require("openvino", extra="openvino", purpose="building OpenVINO artifacts")
        if precision == "int8":
            require("nncf", extra="openvino", purpose="INT8 OpenVINO artifacts")
    except MissingDependencyError:
        return _skip(report, spec, NOT_INSTALLED)
    if inference == "bf16" and not has_bf16():
        return _skip(report, spec, "not applicable: CPU lacks BF16 (avx512_bf16 / amx_bf16)")

    target = ctx.staging / "model" / f"{spec.name}.xml"
    info: dict[str, Any] = {"engine": "openvino", "openvino": _version(ov)}
    try:
        result, info, target = _build(ctx, spec, ov, target, precision, inference, report, info)
    except Exception as exc:  # converters and NNCF raise many types: record it, the export goes on
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        log.debug("variant %s: build failed", spec.name, exc_info=True)
        report["attempts"].append({"precision": spec.precision, "step": "build",
                                   "error": f"{type(exc).__name__}: {text}"})
        _remove(target)
        return _skip(report, spec, f"not built: OpenVINO / NNCF could not build it ({type(exc).__name__}: {text})")
    if not result.passed:
        if target.stem == spec.name:  # its own IR, not a shipped twin's
            _remove(target)
        report["shipped"] = None
        report["outcome"] = "failed the gate; not shipped (the ONNX artifacts remain)"
        log.warning("variant %s: %s", spec.name, report["outcome"])
        return None
    report["shipped"] = spec.precision
    if precision == "int8":  # what an INT8 twin (the same IR compiled in BF16) records as its own
        report["quantization"] = {k: v for k, v in info.items() if k not in ("engine", "openvino", "ir_of")}
    method = info.get("method")
    report["outcome"] = "passed" + (f" ({method})" if method else "")
    log.info("variant %s: %s ships (%s %.4f vs FP32 %.4f, agreement %.4f)", spec.name, spec.precision,
             result.metric, result.value, result.fp32_value, result.top1_agreement)
    return _artifact(ctx, spec, target, precision, inference, result, info, report)


def _build(ctx: Any, spec: VariantSpec, ov: Any, target: Path, precision: str, inference: str,
           report: dict[str, Any], info: dict[str, Any]) -> tuple[GateResult, dict[str, Any], Path]:
    """Convert (and quantize) into ``target``, then gate it; INT8 retries with accuracy control.

    Returns:
        The gate's result, the build record, and the IR that was gated: ``target``, or the IR of
        an INT8 twin this export already shipped (``ov-int8`` for ``ov-int8-bf16``), which the
        artifact then shares rather than ship the same weights twice.
    """
    twin = _twin(ctx, report, precision)
    if twin is not None:
        path, quantization = twin
        if precision == "int8":
            info.update(quantization, ir_of=path.stem)
            return _attempt(ctx, spec, path, inference, precision, report, label="initial"), info, path
        # ov-fp32 and ov-bf16 are one IR compiled two ways: copy it rather than convert again.
        for suffix in (".xml", ".bin"):
            shutil.copyfile(path.with_suffix(suffix), target.with_suffix(suffix))
        result = _attempt(ctx, spec, target, inference, precision, report, label="initial")
    elif precision == "int8":
        model = ov.convert_model(str(ctx.bases["plain"]))
        quantized, qinfo = _quantize(ctx, model, accuracy_control=False)
        _save(ov, quantized, target)
        info.update(qinfo)
        result = _attempt(ctx, spec, target, inference, precision, report, label="nncf-ptq")
        if not result.passed and "error" not in report["attempts"][-1]:
            log.warning("variant %s: NNCF INT8 over budget (drop %.2f points); retrying with accuracy control",
                        spec.name, result.drop_points)
            quantized, qinfo = _quantize(ctx, ov.convert_model(str(ctx.bases["plain"])), accuracy_control=True)
            _save(ov, quantized, target)
            info = {"engine": "openvino", "openvino": _version(ov), **qinfo}
            result = _attempt(ctx, spec, target, inference, precision, report, label="nncf-accuracy-control")
    else:
        _save(ov, ov.convert_model(str(ctx.bases["plain"])), target)
        result = _attempt(ctx, spec, target, inference, precision, report, label="initial")
    return result, info, target


def _remove(target: Path) -> None:
    for path in (target, target.with_suffix(".bin")):
        path.unlink(missing_ok=True)


def _skip(report: dict[str, Any], spec: VariantSpec, outcome: str) -> None:
    report["shipped"] = None
    report["outcome"] = outcome
    log.warning("variant %s: %s", spec.name, outcome)
    return None


def _twin(ctx: Any, report: dict[str, Any], precision: str) -> tuple[Path, dict[str, Any]] | None:
    """The IR of an OpenVINO variant of the same weights (float, or INT8) already shipped by this
    export, with its quantization record, if any."""
    for other in ctx.reports:
        shipped = other.get("shipped")
        if other is report or shipped not in OV_PRECISIONS or (OV_PRECISIONS[shipped][0] == "int8") != (precision == "int8"):
            continue
        path = ctx.staging / "model" / f"{other['variant']}.xml"
        if path.exists():
            return path, dict(other.get("quantization") or {})
    return None


def _version(ov: Any) -> str:
    return str(ov.get_version()).split("-")[0] if hasattr(ov, "get_version") else str(ov.__version__)


def _save(ov: Any, model: Any, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # compress_to_fp16=False: the weights stay FP32 on disk (FP16 weights would change FP32 numerics).
    ov.save_model(model, str(target), compress_to_fp16=False)


def _is_transformer(ctx: Any) -> bool:
    """Whether the graph has a text / audio encoder or attention (NNCF's TRANSFORMER scheme fits it)."""
    if "text" in ctx.modalities or "audio" in ctx.modalities:
        return True
    import onnx

    graph = onnx.load(str(ctx.bases["plain"]), load_external_data=False).graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    return any(n.op_type == "Softmax" and "MatMul" in consumers.get(n.output[0], set()) for n in graph.node)


def _quantize(ctx: Any, model: Any, *, accuracy_control: bool) -> tuple[Any, dict[str, Any]]:
    """NNCF INT8 of ``model``: post-training quantization, or its accuracy-control mode."""
    import nncf

    feeds = ctx.calibration_feeds or ctx.evalset.feeds
    transformer = _is_transformer(ctx)
    common: dict[str, Any] = {"subset_size": len(feeds), "target_device": nncf.TargetDevice.CPU}
    if transformer:
        common["model_type"] = nncf.ModelType.TRANSFORMER
    calibration = nncf.Dataset(feeds)
    info: dict[str, Any] = {"calibration_batches": len(feeds), "model_type": "transformer" if transformer else "default",
                            "nncf": str(nncf.__version__)}
    if not accuracy_control:
        with _quiet_nncf():
            return nncf.quantize(model, calibration, **common), {"method": "nncf-ptq", **info}
    metric, budget = ctx.recipe.gate.metric, ctx.recipe.gate.budget
    offsets = np.cumsum([0] + [feed_rows(f) for f in ctx.evalset.feeds])
    labels = ctx.evalset.labels

    def validate(compiled: Any, items: Any) -> tuple[float, None]:
        from edgemm.data.metrics import classification_metrics

        output = compiled.outputs[0] if len(compiled.outputs) == 1 else compiled.output(ctx.output)
        got, rows = [], []
        for index, feed in items:
            got.append(np.asarray(compiled(feed)[output], dtype=np.float64))
            rows.append(np.arange(offsets[index], offsets[index + 1]))
        return classification_metrics(labels[np.concatenate(rows)], np.concatenate(got))[metric], None

    # Items carry their batch index (for the labels); NNCF feeds the model through the transform.
    validation = nncf.Dataset(list(enumerate(ctx.evalset.feeds)), lambda item: item[1])
    with _quiet_nncf():
        quantized = nncf.quantize_with_accuracy_control(
            model, calibration, validation, validate, max_drop=budget / 100.0, drop_type=nncf.DropType.ABSOLUTE,
            **common)
    return quantized, {"method": "nncf-accuracy-control", "max_drop_points": budget, "metric": metric, **info}


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """Keep NNCF off stdout (``--json`` prints exactly one document there).

    Its logger writes to stdout through its own handler: route it through logging instead (the
    CLI sends that to stderr). Its progress bars (rich, on ``sys.stdout``) go nowhere: on a
    terminal they would draw over edgemm's own progress line, which already shows the variant.
    """
    nncf_log = logging.getLogger("nncf")
    handlers, propagate = list(nncf_log.handlers), nncf_log.propagate
    nncf_log.handlers, nncf_log.propagate = [], True
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        try:
            yield
        finally:
            nncf_log.handlers, nncf_log.propagate = handlers, propagate


def _attempt(ctx: Any, spec: VariantSpec, target: Path, inference: str, precision: str, report: dict[str, Any],
             *, label: str) -> GateResult:
    """The gate on ``target`` through OpenVINO (the runtime's compile path), recorded in ``report``."""
    from edgemm.runtime.backends.openvino import OpenVinoError, compile_model, infer

    try:
        compiled = compile_model(target, inference_precision=inference)
        request = compiled.create_infer_request()
        outputs = np.concatenate([infer(request, feed, [ctx.output])[ctx.output] for feed in ctx.evalset.feeds])
        bad = {}
        for name, feed in ctx.edge_feeds.items():
            values = infer(request, feed, [o.get_any_name() for o in compiled.outputs])
            count = sum(int((~np.isfinite(v)).sum()) for v in values.values() if np.issubdtype(v.dtype, np.floating))
            if count:
                bad[name] = count
    except (OpenVinoError, RuntimeFailure) as exc:
        reason = f"OpenVINO could not run it: {str(exc).splitlines()[0][:200]}"
        log.warning("variant %s: %s", spec.name, reason)
        report["attempts"].append({"precision": spec.precision, "step": label, "error": reason})
        return GateResult(metric=ctx.recipe.gate.metric, value=float("nan"), fp32_value=float("nan"),
                          drop_points=float("inf"), budget_points=ctx.recipe.gate.budget, top1_agreement=0.0,
                          near_ties=0, max_abs_diff=float("inf"), nonfinite=0, samples=len(ctx.evalset), passed=False)
    edge = {"checked": sorted(ctx.edge_feeds), "nonfinite": sum(bad.values()), "failing": bad}
    result = judge(outputs.astype(np.float64), ctx.fp32_outputs, ctx.evalset.labels, metric=ctx.recipe.gate.metric,
                   budget_points=ctx.recipe.gate.budget, tolerance=Tolerance.for_precision(precision))
    if edge["nonfinite"]:
        result.passed = False
        result.nonfinite += edge["nonfinite"]
    report["attempts"].append({"precision": spec.precision, "step": label, "gate": result.to_dict(),
                               "edge_inputs": edge, "inference_precision": inference})
    return result


def _artifact(ctx: Any, spec: VariantSpec, target: Path, precision: str, inference: str, result: GateResult,
              info: dict[str, Any], report: dict[str, Any]) -> Artifact:
    from edgemm.runtime.backends.openvino import BF16_FLAGS, PROVIDER

    xml = target.relative_to(ctx.staging).as_posix()
    binary = target.with_suffix(".bin").relative_to(ctx.staging).as_posix()
    requirements = {"engine": "openvino", "openvino": info["openvino"], "inference_precision": inference,
                    "cpu_flags_any": list(BF16_FLAGS) if inference == "bf16" else [], "graph_optimized": False}
    validation = {"gate": {**result.to_dict(), "outcome": report["outcome"],
                           "evaluated_on": f"openvino {info['openvino']} CPU, INFERENCE_PRECISION_HINT={inference}"},
                  "tolerance": Tolerance.for_precision(precision).to_dict()}
    quantization = {k: v for k, v in info.items() if k != "openvino"} | {"openvino": info["openvino"]} \
        if precision == "int8" else None
    return Artifact(name=spec.name, path=xml, kind="openvino", precision=precision, files=[xml, binary],
                    providers=[PROVIDER], quantization=quantization, requirements=requirements, validation=validation)
