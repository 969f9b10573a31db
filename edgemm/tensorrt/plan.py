"""Build plans: how one ONNX artifact becomes a TensorRT engine, decided without TensorRT.

Two precision regimes:

``implicit`` (TensorRT 10, "weak typing")
    The builder picks kernel precisions; ``BuilderFlag.FP16`` / ``INT8`` allow reduced precision.
    FP16 comes from the fp32 graph plus the FP16 flag; INT8 from the bundle's Q/DQ graph plus the
    INT8 flag (no calibrator: the scales are in the graph). LayerNorm is pinned to FP32 with layer
    precision constraints (``OBEY_PRECISION_CONSTRAINTS``) because FP16 LayerNorm after attention
    overflows.
``strongly_typed`` (TensorRT 11, and TensorRT 10 for graphs that already carry their types)
    ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: tensor types are exactly the ONNX types.
    TensorRT 11 removed the FP16/INT8 flags and calibrators, so FP16 must be in the ONNX (the
    bundle's fp16 artifact, LayerNorm already kept FP32 there) and INT8 must be Q/DQ.

A plan is a frozen, JSON-able value: it goes into the manifest (``built_with``), into the cache
key, and into the equivalent ``trtexec`` command.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from edgemm.bundle.manifest import Artifact
from edgemm.errors import UsageError
from edgemm.runtime.trt_compat import HARDWARE_COMPAT_LEVELS
from edgemm.tensorrt.profiles import ShapeProfile

REGIMES = ("implicit", "strongly_typed")
PRECISIONS = ("fp32", "fp16", "int8")
# Jetson's GPU shares the board's RAM with the CPU: an unbounded builder workspace can push the
# kiosk into the OOM killer, so Jetson builds get a bounded pool unless the recipe says otherwise.
JETSON_DEFAULT_WORKSPACE_MB = 1024
# Layers kept in FP32 under the implicit regime: TensorRT's own normalization layer (opset 17+
# LayerNormalization) and the decomposed pattern that older exports produce (ReduceMean / Pow /
# Sqrt under a ".../LayerNorm/..." name).
LAYERNORM_NAME = re.compile(r"layer_?norm|layernorm|\bln_\d|/ln\b", re.IGNORECASE)


@dataclass(frozen=True)
class BuildOptions:
    """What the user or recipe asks for (CLI flags and ``[tensorrt]`` keys end up here)."""

    precision: str | None = None
    workspace_mb: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    layernorm_fp32: bool = True
    strongly_typed: bool | None = None
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    builder_optimization_level: int | None = None
    waive_fp16_overflow: bool = False


@dataclass(frozen=True)
class BuildPlan:
    """Everything the builder will be told; see the module docstring for the regimes."""

    source_artifact: str
    source_precision: str
    precision: str
    regime: str
    tensorrt: str
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    layernorm_fp32: str  # "constraints" (implicit), "in-graph" (strongly typed), or "off"
    workspace_mb: int | None
    dla_core: int | None
    hardware_compatibility: str
    version_compatible: bool
    exclude_lean_runtime: bool
    builder_optimization_level: int | None
    profiles: tuple[ShapeProfile, ...]
    waive_fp16_overflow: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def workspace_bytes(self) -> int | None:
        """The builder's workspace pool limit in bytes (None: TensorRT's default)."""
        return None if self.workspace_mb is None else self.workspace_mb * 2**20

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (profiles as dicts); what the manifest records as ``built_with``."""
        data = asdict(self)
        data["profiles"] = [p.to_dict() for p in self.profiles]
        data["network_flags"], data["builder_flags"] = list(self.network_flags), list(self.builder_flags)
        data["notes"] = list(self.notes)
        return data

    def cache_key(self, onnx_sha256: str, compute_capability: str) -> str:
        """sha256 over the ONNX bytes' hash, the plan, the TensorRT version and the GPU.

        Two builds with the same key produce interchangeable engines; anything that changes the
        engine (a flag, a profile, the TensorRT version, the compute capability) changes the key.
        """
        payload = {"onnx": onnx_sha256, "plan": {k: v for k, v in self.to_dict().items() if k != "notes"},
                   "tensorrt": self.tensorrt, "compute_capability": compute_capability}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _major(version: str) -> int:
    digits = re.match(r"\d+", version or "")
    if not digits:
        raise UsageError(f"Cannot read the TensorRT version {version!r}.")
    return int(digits.group())


def source_precision(artifact: Artifact) -> str:
    """What precision the artifact's ONNX graph itself carries (fp32 / fp16 / int8-qdq).

    Raises:
        UsageError: The artifact cannot be parsed by TensorRT (ORT-fused contrib ops, dynamic
            INT8, mixed per-branch INT8, or not an ONNX file).
    """
    if artifact.kind != "onnx":
        raise UsageError(f"Artifact {artifact.name!r} is a {artifact.kind}, not an ONNX graph.",
                         hint="Build engines from the bundle's ONNX artifacts (fp32, fp16, int8-qdq).")
    if artifact.graph_optimized:
        raise UsageError(
            f"Artifact {artifact.name!r} is an ONNX Runtime–optimized graph; its fused contrib operators "
            "(Attention, SkipLayerNormalization …) do not parse in TensorRT.",
            hint="Build from a plain-graph artifact (the jetson-* recipes export them), e.g. --artifact fp32.",
        )
    method = (artifact.quantization or {}).get("method", "")
    if artifact.precision == "fp32":
        return "fp32"
    if artifact.precision == "fp16":
        return "fp16"
    if artifact.precision == "int8" and method == "int8-static-qdq":
        return "int8-qdq"
    raise UsageError(
        f"Artifact {artifact.name!r} ({artifact.precision}{', ' + method if method else ''}) is not a graph TensorRT "
        "builds from: dynamic and per-branch INT8 use ONNX Runtime's integer operators.",
        hint="Use the fp32, fp16 or static Q/DQ INT8 artifact (recipes jetson-orin-nano / jetson-orin-agx).",
    )


def make_plan(artifact: Artifact, tensorrt_version: str, profiles: list[ShapeProfile],
              options: BuildOptions | None = None, *, jetson: bool = False) -> BuildPlan:
    """Decide the regime, flags and limits for building ``artifact`` with ``tensorrt_version``.

    Args:
        artifact: The ONNX artifact the engine is built from.
        tensorrt_version: e.g. ``"10.3.0"`` (JetPack 6.1) or ``"11.0.0"``.
        profiles: The optimization profiles (:func:`edgemm.tensorrt.profiles.build_profiles`).
        options: Requested precision, workspace, DLA, compatibility …
        jetson: The build runs on a Jetson (bounded workspace by default; DLA allowed).

    Returns:
        The frozen :class:`BuildPlan`.

    Raises:
        UsageError: A combination TensorRT cannot build (FP16 flag on TensorRT 11, DLA in FP32,
            hardware compatibility on Jetson …); the message says what to use instead.
    """
    options = options or BuildOptions()
    if not profiles:
        raise UsageError("A TensorRT build needs at least one optimization profile.")
    src = source_precision(artifact)
    major = _major(tensorrt_version)
    if major < 10:
        raise UsageError(f"TensorRT {tensorrt_version} is too old: edgemm builds with TensorRT 10 or 11.",
                         hint="JetPack 6.1+ ships TensorRT 10.3; on a desktop: pip install 'edgemm[trt]'.")
    precision = options.precision or {"fp32": "fp32", "fp16": "fp16", "int8-qdq": "int8"}[src]
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown engine precision {precision!r}.", hint=f"Choose one of: {', '.join(PRECISIONS)}.")
    if options.hardware_compatibility not in HARDWARE_COMPAT_LEVELS:
        raise UsageError(f"Unknown hardware compatibility level {options.hardware_compatibility!r}.",
                         hint=f"Choose one of: {', '.join(HARDWARE_COMPAT_LEVELS)}.")
    notes: list[str] = []

    # -- regime and precision ----------------------------------------------------------------
    if major >= 11 or src == "fp16" or options.strongly_typed:
        regime = "strongly_typed"
    else:
        regime = "implicit"
    if options.strongly_typed is False and major >= 11:
        raise UsageError("TensorRT 11 builds only strongly typed networks.",
                         hint="Drop --no-strongly-typed, or build with TensorRT 10 (JetPack 6).")
    builder_flags: list[str] = []
    network_flags: list[str] = []
    if regime == "strongly_typed":
        network_flags.append("STRONGLY_TYPED")
        wanted = {"fp32": "fp32", "fp16": "fp16", "int8-qdq": "int8"}[src]
        if precision != wanted:
            raise UsageError(
                f"A strongly typed build runs the graph's own types: artifact {artifact.name!r} is {wanted}, "
                f"{precision} was asked for.",
                hint=(f"Build from the bundle's {precision} artifact (" + ("fp16" if precision == "fp16" else "int8-qdq")
                      + ") — TensorRT 11 has no FP16/INT8 builder flags; precision must be in the ONNX."),
            )
        layernorm = "in-graph" if precision != "fp32" else "off"
        if precision == "int8":
            notes.append("INT8 comes from the graph's Q/DQ nodes (explicit quantization); no calibrator.")
        if precision == "fp16":
            notes.append("FP16 casts are in the ONNX; LayerNorm/Softmax were kept FP32 by the fp16 export.")
    else:
        if src == "int8-qdq" and precision != "int8":
            raise UsageError(f"Artifact {artifact.name!r} is Q/DQ INT8; build it as int8 or choose the fp32 artifact.")
        if src == "fp32" and precision == "int8":
            raise UsageError("INT8 engines are built from the bundle's Q/DQ artifact (explicit quantization), "
                             "never by calibrating inside TensorRT.", hint="Use --artifact int8-qdq.")
        if precision == "fp16":
            builder_flags.append("FP16")
        elif precision == "int8":
            # FP16 too: layers left unquantized by Q/DQ may then run in FP16 instead of FP32.
            builder_flags += ["INT8", "FP16"]
            notes.append("INT8 scales come from the graph's Q/DQ nodes; the INT8 flag enables them, no calibrator.")
        layernorm = "constraints" if precision != "fp32" and options.layernorm_fp32 else "off"
        if layernorm == "constraints":
            builder_flags.append("OBEY_PRECISION_CONSTRAINTS")
        elif precision != "fp32":
            notes.append("LayerNorm may run in FP16: only the build-log gate guards against overflow.")

    # -- memory, DLA, compatibility -------------------------------------------------------------
    workspace = options.workspace_mb
    if workspace is None and jetson:
        workspace = JETSON_DEFAULT_WORKSPACE_MB
        notes.append(f"Jetson: builder workspace bounded to {workspace} MiB of the shared memory.")
    if workspace is not None and workspace < 16:
        raise UsageError(f"A {workspace} MiB workspace is too small to build anything.", hint="Use at least 256.")
    if options.dla_core is not None:
        if not jetson:
            raise UsageError("DLA cores exist only on Jetson AGX / NX modules.", hint="Drop --dla-core.")
        if major >= 11:
            raise UsageError("DLA engines need TensorRT 10 (JetPack 6); TensorRT 11 does not support DLA on Jetson.")
        if regime != "implicit" or precision == "fp32":
            raise UsageError("DLA runs FP16 or INT8 only, and edgemm builds DLA engines with TensorRT 10's FP16/INT8 "
                             "flags from the fp32 or Q/DQ artifact.", hint="Use --artifact fp32 --fp16, or --artifact int8-qdq.")
        if options.dla_core < 0:
            raise UsageError(f"--dla-core must be 0 or more, got {options.dla_core}.")
        if options.gpu_fallback:
            builder_flags.append("GPU_FALLBACK")
            notes.append("Layers DLA cannot run fall back to the GPU (GPU_FALLBACK).")
    if options.hardware_compatibility != "none":
        if jetson or options.dla_core is not None:
            raise UsageError("Hardware-compatible engines are not supported on Jetson or DLA.",
                             hint="Use --hardware-compatibility none.")
        notes.append("Hardware-compatible engine: runs on other GPUs of the level, usually somewhat slower.")
    if options.exclude_lean_runtime and not options.version_compatible:
        raise UsageError("--exclude-lean-runtime only applies to version-compatible engines.")
    if options.version_compatible:
        builder_flags.append("VERSION_COMPATIBLE")
        if options.exclude_lean_runtime:
            builder_flags.append("EXCLUDE_LEAN_RUNTIME")
        notes.append("Version-compatible engine: the runtime refuses it unless explicitly allowed.")
    level = options.builder_optimization_level
    if level is not None and not 0 <= level <= 5:
        raise UsageError(f"Builder optimization level must be 0..5, got {level}.")

    return BuildPlan(
        source_artifact=artifact.name, source_precision=src, precision=precision, regime=regime,
        tensorrt=tensorrt_version, network_flags=tuple(network_flags), builder_flags=tuple(builder_flags),
        layernorm_fp32=layernorm, workspace_mb=workspace, dla_core=options.dla_core,
        hardware_compatibility=options.hardware_compatibility, version_compatible=options.version_compatible,
        exclude_lean_runtime=options.exclude_lean_runtime, builder_optimization_level=level,
        profiles=tuple(profiles), waive_fp16_overflow=options.waive_fp16_overflow, notes=tuple(notes),
    )


def is_layernorm_layer(layer_type: str, layer_name: str) -> bool:
    """True for the layers the implicit regime pins to FP32.

    ``layer_type`` is the TensorRT ``LayerType`` name (``"NORMALIZATION"``, ``"REDUCE"`` …).
    Only arithmetic layers qualify: pinning a shape or constant layer would fail the build.
    """
    if layer_type == "NORMALIZATION":
        return True
    return layer_type in ("REDUCE", "ELEMENTWISE", "UNARY") and bool(LAYERNORM_NAME.search(layer_name))
