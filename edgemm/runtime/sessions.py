"""The one place ONNX Runtime sessions are made: providers, options, threads and error types.

The runtime's backend, the accuracy gate, bench's IO-binding contender and the Optimum peer all
create their sessions here, so a kiosk setting (threads, spin policy, graph optimization, log
level) means the same thing everywhere and an engine error is recognised as one.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from edgemm._deps import require
from edgemm.errors import BackendUnavailableError, UsageError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def onnxruntime() -> ModuleType:
    """ONNX Runtime, imported on first use (``edgemm --help`` must not pay for it)."""
    return require("onnxruntime", extra="runtime", purpose="running ONNX models")


@functools.lru_cache(maxsize=1)
def engine_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's own exception types (``Fail``, ``InvalidArgument``, ``RuntimeException`` …).

    Only these become :class:`~edgemm.errors.RuntimeFailure` at the backend boundary; any other
    exception is a bug in edgemm and keeps its traceback.
    """
    state = require("onnxruntime.capi.onnxruntime_pybind11_state", extra="runtime")
    return tuple(value for value in vars(state).values()
                 if isinstance(value, type) and issubclass(value, Exception))


def available_devices() -> list[str]:
    """Devices ONNX Runtime can use here, best first (e.g. ``["cuda", "cpu"]``)."""
    providers = set(onnxruntime().get_available_providers())
    return [d for d in ("cuda", "cpu") if PROVIDERS[d] in providers]


def default_threads() -> int:
    """Intra-op threads for a kiosk CPU: the cores this process may use, at most 4.

    More threads than cores thrash; beyond 4 a small fusion model gains little while the
    kiosk UI and the HTTP server starve.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def session_options(*, threads: int | None = None, optimization: str = "all",
                    free_dims: dict[str, int] | None = None) -> Any:
    """``SessionOptions`` with edgemm's conventions.

    Args:
        threads: Intra-op threads (None: ONNX Runtime's own default, all cores).
        optimization: ``disable`` keeps every tensor as written (activation matching);
            ``basic`` / ``extended`` / ``all`` are ONNX Runtime's levels.
        free_dims: Fix dynamic axes by name (fixed-shape sessions fold shape subgraphs away).

    Raises:
        UsageError: An unknown optimization level or a thread count below 1.
    """
    ort = onnxruntime()
    if optimization not in OPTIMIZATION_LEVELS:
        raise UsageError(f"Unknown graph optimization level {optimization!r}.",
                         hint=f"Choose one of: {', '.join(OPTIMIZATION_LEVELS)}.")
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}.")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    for axis, size in (free_dims or {}).items():
        options.add_free_dimension_override_by_name(axis, int(size))
    return options


def providers_for(device: str, *, device_id: int = 0, provider_options: dict[str, str] | None = None,
                  cuda_graph: bool = False) -> list[Any]:
    """The provider list for ``device``, with the CPU last so unsupported nodes still run.

    Raises:
        UsageError: An unknown device.
        BackendUnavailableError: This ONNX Runtime lacks the device's provider (exit 3).
    """
    if device not in PROVIDERS:
        raise UsageError(f"Unknown device {device!r}.", hint=f"Choose one of: {', '.join(PROVIDERS)}.")
    wanted = PROVIDERS[device]
    available = onnxruntime().get_available_providers()
    if wanted not in available:
        hint = ("Install onnxruntime-gpu instead of onnxruntime (pip uninstall onnxruntime; "
                "pip install 'edgemm[gpu]'), or use --device cpu." if device in ("cuda", "tensorrt")
                else "Reinstall onnxruntime.")
        raise BackendUnavailableError(f"ONNX Runtime here has no {wanted} (available: {', '.join(available)}).",
                                      hint=hint)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": str(device_id), **({"enable_cuda_graph": "1"} if cuda_graph else {})})
    if device == "cuda":
        return [cuda, "CPUExecutionProvider"]
    # TensorRT EP: subgraphs TensorRT cannot take run on CUDA, then the CPU (ORT partitions the graph).
    return [(wanted, {"device_id": str(device_id), **(provider_options or {})}), cuda, "CPUExecutionProvider"]


def create_session(model: str | os.PathLike[str] | bytes, *, device: str = "cpu", device_id: int = 0,
                   threads: int | None = None, optimization: str = "all", free_dims: dict[str, int] | None = None,
                   provider_options: dict[str, str] | None = None, cuda_graph: bool = False) -> Any:
    """An ``InferenceSession`` for ``model`` (a path, so ORT's external-data checks apply, or bytes).

    Args:
        model: The ``.onnx`` file, or a serialized model.
        device: ``cpu``, ``cuda`` or ``tensorrt`` (ORT's TensorRT EP).
        device_id: CUDA device ordinal.
        threads / optimization / free_dims: See :func:`session_options`.
        provider_options: TensorRT EP options (see :func:`edgemm.runtime.backends.onnxruntime.tensorrt_ep_options`).
        cuda_graph: Capture CUDA graphs on the CUDA provider (fixed shapes only).

    Returns:
        The session. Which provider it really uses is the caller's to check (``get_providers()``).

    Raises:
        BackendUnavailableError: The device's provider is missing.
        One of :func:`engine_errors`: ONNX Runtime refused the model.
    """
    source = model if isinstance(model, bytes) else str(Path(model))
    return onnxruntime().InferenceSession(
        source, sess_options=session_options(threads=threads, optimization=optimization, free_dims=free_dims),
        providers=providers_for(device, device_id=device_id, provider_options=provider_options, cuda_graph=cuda_graph))
