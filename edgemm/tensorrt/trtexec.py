"""``--emit-trtexec``: the ``trtexec`` command equivalent to a build plan, for users who build by hand.

Works without TensorRT. Flags follow trtexec 10.x; under TensorRT 11 ``--fp16`` / ``--int8`` /
``--precisionConstraints`` no longer exist, and plans for TensorRT 11 never use them (they are
strongly typed: ``--stronglyTyped``).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from edgemm.tensorrt.plan import BuildPlan

_HW_LEVEL = {"ampere_plus": "ampere+", "same_compute_capability": "sameComputeCapability"}


def _shapes(profile_shapes: dict[str, tuple[tuple[int, ...], ...]], k: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[k])}" for name, shapes in profile_shapes.items())


def trtexec_command(plan: BuildPlan, onnx: str | Path, engine: str | Path, *, timing_cache: str | Path | None = None,
                    layernorm_layers: list[str] | None = None) -> str:
    """The shell command that builds the same engine with ``trtexec``.

    Args:
        plan: The build plan.
        onnx: Path of the ONNX file (the bundle's artifact).
        engine: Where trtexec should write the engine.
        timing_cache: Timing cache file (reused across builds on the same device).
        layernorm_layers: Layer names to pin to FP32 (implicit regime); when unknown a comment
            line tells the user to add them.

    Returns:
        One shell command (lines joined with ``\\``), plus comment lines where something needs
        the user's attention.
    """
    args = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    for profile in plan.profiles:
        # One --minShapes/--optShapes/--maxShapes group per optimization profile, in order.
        for flag, k in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            args.append(f"{flag}={_shapes(profile.shapes, k)}")
    if "STRONGLY_TYPED" in plan.network_flags:
        args.append("--stronglyTyped")
    if "FP16" in plan.builder_flags:
        args.append("--fp16")
    if "INT8" in plan.builder_flags:
        args.append("--int8")
    comments: list[str] = []
    if "OBEY_PRECISION_CONSTRAINTS" in plan.builder_flags:
        args.append("--precisionConstraints=obey")
        if layernorm_layers:
            spec = ",".join(f"{name}:fp32" for name in layernorm_layers)
            args += [f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}"]
        else:
            comments.append("# add --layerPrecisions=<LayerNorm layer>:fp32,... to keep LayerNorm in FP32")
    if plan.workspace_mb is not None:
        args.append(f"--memPoolSize=workspace:{plan.workspace_mb}M")
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    if plan.dla_core is not None:
        args.append(f"--useDLACore={plan.dla_core}")
        if "GPU_FALLBACK" in plan.builder_flags:
            args.append("--allowGPUFallback")
    if plan.hardware_compatibility in _HW_LEVEL:
        args.append(f"--hardwareCompatibilityLevel={_HW_LEVEL[plan.hardware_compatibility]}")
    if plan.version_compatible:
        args.append("--versionCompatible")
        if plan.exclude_lean_runtime:
            args.append("--excludeLeanRuntime")
    if plan.builder_optimization_level is not None:
        args.append(f"--builderOptimizationLevel={plan.builder_optimization_level}")
    args.append("--skipInference")
    command = " \\\n    ".join(shlex.quote(a) for a in args)
    header = [f"# TensorRT {plan.tensorrt} ({plan.regime}), {plan.precision} from artifact {plan.source_artifact!r}"]
    return "\n".join([*header, *comments, command])
