"""``engine_from_onnx``: the TensorRT builder, driven by a :class:`~edgemm.tensorrt.plan.BuildPlan`.

Written against the TensorRT 10 / 11 Python API (``tensorrt.Builder``, ``OnnxParser``,
``IBuilderConfig``, ``build_serialized_network``). It cannot run on machines without TensorRT;
the decisions it executes (flags, profiles, LayerNorm constraints, the log gate) are made and
tested in :mod:`~edgemm.tensorrt.plan`, :mod:`~edgemm.tensorrt.profiles` and
:mod:`~edgemm.tensorrt.buildlog`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edgemm import progress as terminal_progress
from edgemm._deps import require
from edgemm.errors import EdgemmError
from edgemm.tensorrt.buildlog import BuildLog, gate
from edgemm.tensorrt.plan import BuildPlan, is_layernorm_layer


class EngineBuildError(EdgemmError):
    """TensorRT could not parse the ONNX graph or build the engine; the log lines are attached."""

    code = "E_TRT_BUILD"


@dataclass
class EngineBuild:
    """What one build produced."""

    path: Path
    bytes: int
    seconds: float
    gate: dict[str, Any]
    layernorm_layers: list[str] = field(default_factory=list)
    timing_cache: str | None = None
    log_tail: list[str] = field(default_factory=list)


def import_tensorrt() -> Any:
    """``import tensorrt`` or :class:`~edgemm.errors.MissingDependencyError` (exit 3) with the fix."""
    return require("tensorrt", extra="trt", purpose="building TensorRT engines")


class _Progress:
    """Build progress on stderr: top-level phases always, step counts only on a terminal."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.lock = threading.Lock()
        self.started = time.perf_counter()
        self.steps: dict[str, int] = {}

    def write(self, text: str) -> None:
        with self.lock, terminal_progress.suspended():  # above the progress line, not through it
            self.stream.write(f"[tensorrt {time.perf_counter() - self.started:6.1f}s] {text}\n")
            self.stream.flush()

    def phase_start(self, name: str, parent: str | None, steps: int) -> None:
        self.steps[name] = steps
        if parent is None or self.tty:
            self.write(f"{'  ' if parent else ''}{name} ({steps} steps)")

    def step(self, name: str, step: int) -> bool:
        if self.tty and self.steps.get(name, 0) > 1:
            self.write(f"  {name}: {step + 1}/{self.steps[name]}")
        return True  # returning False would cancel the build

    def phase_finish(self, name: str) -> None:
        if self.tty:
            self.write(f"  {name} done")


def _make_logger(trt: Any, log: BuildLog, progress: _Progress) -> Any:
    names = {trt.ILogger.Severity.INTERNAL_ERROR: "INTERNAL_ERROR", trt.ILogger.Severity.ERROR: "ERROR",
             trt.ILogger.Severity.WARNING: "WARNING", trt.ILogger.Severity.INFO: "INFO",
             trt.ILogger.Severity.VERBOSE: "VERBOSE"}

    class CapturingLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        """Keeps every line for the gate; echoes warnings and errors to stderr."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            name = names.get(severity, "INFO")
            log.add(name, msg)
            if name in ("INTERNAL_ERROR", "ERROR", "WARNING"):
                progress.write(f"{name}: {msg}")

    return CapturingLogger()


def _make_monitor(trt: Any, progress: _Progress) -> Any | None:
    if not hasattr(trt, "IProgressMonitor"):  # added in TensorRT 10.0
        return None

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return progress.step(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            progress.phase_finish(phase_name)

    return Monitor()


def _write_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(memoryview(data))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def engine_from_onnx(onnx_path: Path, plan: BuildPlan, output: Path, *, timing_cache: Path | None = None,
                     progress_stream: IO[str] | None = None) -> EngineBuild:
    """Build a serialized TensorRT engine from ``onnx_path`` following ``plan``.

    Args:
        onnx_path: The ONNX file (its external data must sit next to it).
        plan: Regime, flags, profiles, limits (:func:`edgemm.tensorrt.plan.make_plan`).
        output: Where to write the engine (written only after the log gate passed).
        timing_cache: Timing cache file to load and update (device- and version-specific).
        progress_stream: Where progress goes (default stderr).

    Returns:
        The :class:`EngineBuild`.

    Raises:
        MissingDependencyError: TensorRT is not installed (exit 3).
        EngineBuildError: Parsing or building failed; the TensorRT errors are in the message.
        Fp16RangeError: The log reported FP16 overflow / subnormals and they were not waived.
    """
    trt = import_tensorrt()
    progress = _Progress(progress_stream)
    log = BuildLog()
    logger = _make_logger(trt, log, progress)
    started = time.perf_counter()
    progress.write(f"building {plan.precision} engine ({plan.regime}) from {onnx_path.name} with TensorRT {trt.__version__}")

    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        # EXPLICIT_BATCH is deprecated (and ignored) in TensorRT 10 and gone in 11: never set it.
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors[:5]),
                               hint="Check the opset and operators against TensorRT's ONNX support matrix.",
                               details={"errors": errors})

    config = builder.create_builder_config()
    if plan.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    if plan.hardware_compatibility == "ampere_plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif plan.hardware_compatibility == "same_compute_capability":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    if plan.builder_optimization_level is not None:
        config.builder_optimization_level = plan.builder_optimization_level

    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    for profile in plan.profiles:
        missing = inputs - profile.shapes.keys()
        if missing:
            raise EngineBuildError(f"Profile {profile.name!r} has no shapes for network inputs {sorted(missing)}.",
                                   hint="The manifest's inputs do not match the ONNX graph; re-export the bundle.")
        opt_profile = builder.create_optimization_profile()
        for name in sorted(inputs):
            low, opt, high = profile.shapes[name]
            opt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(opt_profile)

    pinned: list[str] = []
    if plan.layernorm_fp32 == "constraints":
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if is_layernorm_layer(layer.type.name, layer.name):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                pinned.append(layer.name)
        progress.write(f"LayerNorm kept in FP32: {len(pinned)} layer(s) constrained")

    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache from another device is not used

    monitor = _make_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = log.errors()
        raise EngineBuildError("TensorRT failed to build the engine: " + ("; ".join(errors[-5:]) or "no error logged"),
                               hint="Try a larger --workspace, fewer/smaller profiles, or build from the fp32 artifact.",
                               details={"errors": errors})
    gate_result = gate(log, waive=plan.waive_fp16_overflow)
    if cache is not None and timing_cache is not None:
        _write_atomic(timing_cache, config.get_timing_cache().serialize())
    _write_atomic(output, serialized)
    seconds = time.perf_counter() - started
    progress.write(f"engine written: {output.name}, {output.stat().st_size / 2**20:.1f} MiB in {seconds:.0f}s")
    return EngineBuild(path=output, bytes=output.stat().st_size, seconds=round(seconds, 2), gate=gate_result,
                       layernorm_layers=pinned, timing_cache=str(timing_cache) if timing_cache else None,
                       log_tail=[f"{s}: {m}" for s, m in log.lines if s in ("WARNING", "ERROR")][-20:])
