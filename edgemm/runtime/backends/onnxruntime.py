"""ONNX Runtime backend for the CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import DeviceFallbackError, RuntimeFailure, UsageError
from edgemm.runtime.backends.base import Backend
from edgemm.runtime.sessions import (
    OPTIMIZATION_LEVELS,
    PROVIDERS,
    create_session,
    default_threads,
    engine_errors,
)

log = logging.getLogger("edgemm.runtime")


def tensorrt_ep_options(inputs: list[TensorSpec], cache_dir: str | os.PathLike[str], *, fp16: bool = False,
                        int8: bool = False, workspace_mb: int | None = None, device_id: int = 0,
                        profiles: list[dict[str, list[int]]] | None = None, ep_context: str | None = None,
                        cuda_graph: bool = False) -> dict[str, str]:
    """Provider options for ONNX Runtime's TensorRT execution provider.

    Engines and the timing cache go under ``cache_dir`` (outside the bundle, which stays
    read-only and fully hashed), profiles are explicit (from the manifest's min / opt / max, so
    the EP never rebuilds when a new shape arrives), and LayerNorm falls back to FP32.

    Args:
        inputs: The manifest's inputs (their ``profile`` gives min / opt / max per dynamic axis).
        cache_dir: This bundle's cache directory on this machine.
        fp16 / int8: ``trt_fp16_enable`` / ``trt_int8_enable`` (int8 for Q/DQ graphs: the scales
            are in the graph, no calibration table).
        workspace_mb: ``trt_max_workspace_size``.
        profiles: Several profiles as ``{axis: [min, opt, max]}`` tables (default: the manifest's).
        ep_context: Where to dump an EPContext model (``trt_dump_ep_context_model``) so later
            sessions load the engine without building.
        cuda_graph: ``trt_cuda_graph_enable`` (only for static-shape graphs).

    Returns:
        String-valued options for ``InferenceSession(providers=[("TensorrtExecutionProvider", opts), ...])``.
    """
    tables = profiles or [{}]
    shapes: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for table in tables:
        for spec in inputs:
            for k, which in enumerate(("min", "opt", "max")):
                dims = tuple(d if isinstance(d, int) else int(table.get(d, spec.profile[d])[k]) for d in spec.shape)
                shapes[which].append(f"{spec.name}:{'x'.join(str(d) for d in dims)}")
    cache = Path(cache_dir)
    options = {
        "device_id": str(device_id),
        "trt_fp16_enable": str(bool(fp16)),
        "trt_int8_enable": str(bool(int8)),
        "trt_layer_norm_fp32_fallback": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache / "ort-trt-engines"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache / "ort-trt-timing"),
        "trt_profile_min_shapes": ",".join(shapes["min"]),
        "trt_profile_opt_shapes": ",".join(shapes["opt"]),
        "trt_profile_max_shapes": ",".join(shapes["max"]),
        "trt_cuda_graph_enable": str(bool(cuda_graph)),
    }
    if workspace_mb is not None:
        options["trt_max_workspace_size"] = str(int(workspace_mb) * 2**20)
    if ep_context is not None:
        options["trt_dump_ep_context_model"] = "True"
        options["trt_ep_context_file_path"] = str(ep_context)
    return options


class OrtBackend(Backend):
    """An ``onnxruntime.InferenceSession`` on the CPU or a CUDA device.

    Args:
        model_path: The ``.onnx`` file (loaded from its path so ORT's external-data checks apply).
        input_specs / output_specs: The manifest's graph interface.
        device: ``"cpu"`` or ``"cuda"``.
        device_id: CUDA device ordinal.
        threads: Intra-op threads (default :func:`default_threads`).
        optimization: ``"disable" | "basic" | "extended" | "all"``.
        allow_cpu_fallback: If the CUDA provider could not be used, run on the CPU and report it
            in :attr:`degraded` instead of raising :class:`DeviceFallbackError`.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        input_specs: list[TensorSpec],
        output_specs: list[TensorSpec],
        *,
        device: str = "cpu",
        device_id: int = 0,
        threads: int | None = None,
        optimization: str = "all",
        allow_cpu_fallback: bool = False,
        provider_options: dict[str, str] | None = None,
    ):
        super().__init__(input_specs, output_specs)
        if device not in PROVIDERS:
            raise UsageError(f"Unknown device {device!r}.", hint=f"Choose one of: {', '.join(PROVIDERS)}.")
        if optimization not in OPTIMIZATION_LEVELS:
            raise UsageError(
                f"Unknown graph optimization level {optimization!r}.",
                hint=f"Choose one of: {', '.join(OPTIMIZATION_LEVELS)}.",
            )
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be at least 1, got {threads}.")
        self.model_path = Path(model_path)
        self.requested_device = device
        self.device_id = device_id
        self.threads = threads or default_threads()
        self.optimization = optimization
        self.allow_cpu_fallback = allow_cpu_fallback
        self.provider_options = dict(provider_options or {})
        self.degraded: str | None = None
        self._session: Any = None
        self._output_names = [spec.name for spec in output_specs]

    def _activate_impl(self) -> None:
        wanted = PROVIDERS[self.requested_device]
        try:
            self._session = create_session(self.model_path, device=self.requested_device, device_id=self.device_id,
                                           threads=self.threads, optimization=self.optimization,
                                           provider_options=self.provider_options)
        except engine_errors() as exc:
            raise RuntimeFailure(
                f"ONNX Runtime could not load {self.model_path.name}: {exc}",
                hint="Run `edgemm verify` on the bundle; re-export it if verification fails.",
            ) from exc
        used = self._session.get_providers()
        if used[0] != wanted:
            # ORT falls back to the CPU silently when CUDA libraries are missing: never hide it.
            reason = f"{wanted} was requested but ONNX Runtime is using {used[0]}"
            if not self.allow_cpu_fallback:
                self._session = None
                raise DeviceFallbackError(
                    reason + ".",
                    hint="Check the CUDA/cuDNN libraries onnxruntime-gpu needs, or allow the CPU fallback.",
                )
            log.warning("degraded: %s", reason)
            self.degraded = reason

    def _engine_errors(self) -> tuple[type[BaseException], ...]:
        return engine_errors()

    def _deactivate_impl(self) -> None:
        self._session = None

    def _device_impl(self) -> str:
        if self._session is None:
            return self.requested_device
        first = self._session.get_providers()[0]
        return {PROVIDERS["cuda"]: "cuda", PROVIDERS["tensorrt"]: "tensorrt"}.get(first, "cpu")

    def _run_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, results))

    @property
    def providers(self) -> list[str]:
        """Execution providers of the live session (empty before :meth:`activate`)."""
        return [] if self._session is None else list(self._session.get_providers())
