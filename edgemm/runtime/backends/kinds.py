"""Which backend runs an artifact, by its kind: the one dispatch of the runtime. Torch-free.

``onnx`` → ONNX Runtime; ``openvino`` and ``split`` → their optional backend modules, imported only
when a bundle has such an artifact (OpenVINO is an extra). The predictor, the golden-set check and
the ranking all open backends here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from edgemm.bundle.manifest import Artifact, TensorSpec
from edgemm.errors import BackendUnavailableError, MissingDependencyError
from edgemm.runtime.backends.base import Backend
from edgemm.runtime.backends.onnxruntime import OrtBackend
from edgemm.runtime.trt_compat import ENGINE_KIND

_PROVIDER = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider", "tensorrt-ep": "TensorrtExecutionProvider"}


def _ep_can_run(art: Artifact, device: str) -> bool:
    if device != "tensorrt-ep":
        return _PROVIDER[device] in art.providers
    # The plain fp32 graph parses in TensorRT too; ORT-fused graphs carry contrib ops it cannot take.
    return _PROVIDER[device] in art.providers or (art.precision == "fp32" and not art.graph_optimized)


# Artifact kinds with an optional backend module, imported only when a bundle has such an artifact.
_OPTIONAL_BACKENDS = {"openvino": ("edgemm.runtime.backends.openvino", "OpenVinoBackend"),
                      "split": ("edgemm.runtime.backends.split", "SplitBackend")}
RUNNABLE_KINDS = ("onnx", *_OPTIONAL_BACKENDS)


def _backend_module(kind: str) -> ModuleType:
    """The backend module of an optional artifact kind.

    Raises:
        BackendUnavailableError: This edgemm has no such module.
        MissingDependencyError: The module needs an extra that is not installed.
    """
    name = _OPTIONAL_BACKENDS[kind][0]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise BackendUnavailableError(f"this edgemm has no {kind} backend ({name})",
                                      hint="Upgrade edgemm, or choose another --artifact.") from exc


def unavailable_reason(art: Artifact, device: str) -> str | None:
    """Why ``art`` cannot run on ``device`` on this machine (None: it can).

    Decided without loading anything heavy: ONNX artifacts by their providers, OpenVINO and split
    artifacts by their backend module's own ``unavailable_reason`` (OpenVINO installed, the
    CPU's bf16 support …). Engines are for the TensorRT step, never for these devices.
    """
    if art.kind == ENGINE_KIND:
        return f"TensorRT engine, not an ONNX graph for {device}"
    if art.kind == "onnx":
        return None if _ep_can_run(art, device) else f"not built for {device}"
    if art.kind not in _OPTIONAL_BACKENDS:
        return f"kind {art.kind} has no backend in this runtime"
    if device != "cpu":
        return f"not built for {device} ({art.kind} artifacts run on the CPU)"
    try:
        reason = _backend_module(art.kind).unavailable_reason(art)
    except (BackendUnavailableError, MissingDependencyError) as exc:
        return f"{exc.message}" + (f" — {exc.hint}" if exc.hint else "")
    return None if reason is None else str(reason)


def make_backend(root: Path, art: Artifact, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                 device: str = "cpu", threads: int | None = None, optimization: str = "all",
                 allow_cpu_fallback: bool = False, provider_options: dict[str, str] | None = None,
                 compile_cache: bool = True) -> Backend:
    """The (inactive) backend for ``art``: ONNX Runtime, OpenVINO or split, by its kind.

    Args:
        root: The bundle directory (or the staging directory of one being written).
        art: The artifact.
        inputs / outputs: The graph interface (a manifest's ``inputs`` / ``outputs``).
        device / threads / optimization / allow_cpu_fallback / provider_options: For ONNX Runtime
            (see :class:`~edgemm.runtime.backends.onnxruntime.OrtBackend`); threads for every kind.
        compile_cache: OpenVINO's machine-local compiled-model cache, for OpenVINO artifacts and split
            artifacts' OpenVINO parts (off while a bundle is written).

    Raises:
        BackendUnavailableError / MissingDependencyError: The kind's backend cannot be used here.
    """
    if art.kind == "onnx":
        return OrtBackend(root / art.path, inputs, outputs, device=device, threads=threads,
                          optimization=optimization, allow_cpu_fallback=allow_cpu_fallback,
                          provider_options=provider_options)
    if art.kind == "openvino":
        module = _backend_module(art.kind)
        return module.OpenVinoBackend.from_artifact(root, art, inputs, outputs, threads=threads,
                                                    compile_cache=compile_cache)
    if art.kind in _OPTIONAL_BACKENDS:
        cls = getattr(_backend_module(art.kind), _OPTIONAL_BACKENDS[art.kind][1])
        return cls.from_artifact(root, art, inputs, outputs, threads=threads, compile_cache=compile_cache)
    raise BackendUnavailableError(f"Artifact {art.name!r} is a {art.kind}, which this runtime cannot run.")
