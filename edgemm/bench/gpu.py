"""The GPU path: ONNX Runtime's CUDA provider with IO binding and CUDA graphs, and NVML telemetry.

CUDA-graph capture needs every node on the CUDA provider; the shape subgraphs of a dynamic-axes
export land on the CPU (FIELD_NOTES). Each benchmarked shape therefore gets its own session with
ONNX Runtime's *free-dimension overrides*: the dynamic axes become constants, the shape logic
folds away, and the whole graph runs on the GPU — one fixed-shape profile per session. Inputs
and outputs are bound once as device tensors (IO binding), so model-only timing is the graph
replay alone. Torch-free.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.manifest import Manifest
from edgemm.errors import BackendUnavailableError


class CudaGraphContender:
    """An artifact on ``CUDAExecutionProvider`` with IO binding (and CUDA graphs when possible)."""

    kind = "edgemm"

    def __init__(self, bundle: Path, manifest: Manifest, artifact: str, *, cuda_graphs: bool = True,
                 device_id: int = 0):
        import onnxruntime as ort

        from edgemm.runtime.predictor import Predictor

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError("The CUDA benchmark path needs onnxruntime-gpu.",
                                          hint="pip uninstall onnxruntime && pip install 'edgemm[gpu]'")
        self._ort = ort
        art = manifest.artifact(artifact)
        self.path = bundle / art.path
        self.manifest = manifest
        self.cuda_graphs = cuda_graphs
        self.device_id = device_id
        self.name = f"edgemm:{art.name}+iobinding" + ("+cudagraph" if cuda_graphs else "")
        self.precision = art.precision
        self.device = "cuda"
        self.output = manifest.postprocessing.get("output", manifest.outputs[0].name)
        # End to end (preprocessing included) goes through the ordinary Predictor on CUDA.
        self.predictor = Predictor.load(bundle, device="cuda", artifact=artifact)
        self._sessions: dict[tuple, tuple[Any, Any, dict[str, Any], dict[str, Any]]] = {}
        self.info = {"artifact": art.name, "runtime": "onnxruntime CUDA EP", "io_binding": True,
                     "cuda_graphs": cuda_graphs, "fixed_shape_sessions": 0}

    def _axes(self, feed: dict[str, np.ndarray]) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for spec in self.manifest.inputs:
            for dim, size in zip(spec.shape, feed[spec.name].shape):
                if isinstance(dim, str):
                    sizes[dim] = int(size)
        return sizes

    def _session(self, feed: dict[str, np.ndarray]) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
        ort = self._ort
        sizes = self._axes(feed)
        key = tuple(sorted(sizes.items()))
        if key in self._sessions:
            return self._sessions[key]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        for axis, size in sizes.items():
            options.add_free_dimension_override_by_name(axis, size)
        provider = {"device_id": str(self.device_id)}
        if self.cuda_graphs:
            provider["enable_cuda_graph"] = "1"
        session = ort.InferenceSession(str(self.path), options,
                                       providers=[("CUDAExecutionProvider", provider), "CPUExecutionProvider"])
        if session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailableError("ONNX Runtime placed the CUDA benchmark session on the CPU.",
                                          hint="Check the CUDA / cuDNN libraries onnxruntime-gpu needs.")
        binding = session.io_binding()
        inputs = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", self.device_id)
                  for name, value in feed.items()}
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        outputs: dict[str, Any] = {}
        for spec in self.manifest.outputs:
            shape = [d if isinstance(d, int) else sizes[d] for d in spec.shape]
            outputs[spec.name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", self.device_id)
            binding.bind_ortvalue_output(spec.name, outputs[spec.name])
        session.run_with_iobinding(binding)  # with CUDA graphs enabled, the first run captures
        self._sessions[key] = (session, binding, inputs, outputs)
        self.info["fixed_shape_sessions"] = len(self._sessions)
        return self._sessions[key]

    def e2e(self, raw: dict[str, list[Any]]) -> Any:
        return self.predictor.predict(**raw)

    def native(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._session(feed)
        return feed

    def model(self, native: dict[str, np.ndarray]) -> None:
        session, binding, _, _ = self._session(native)
        session.run_with_iobinding(binding)  # inputs and outputs stay on the device
        binding.synchronize_outputs()

    def logits(self, native: dict[str, np.ndarray]) -> np.ndarray:
        session, binding, inputs, outputs = self._session(native)
        for name, value in native.items():
            inputs[name].update_inplace(np.ascontiguousarray(value))
        session.run_with_iobinding(binding)
        return np.asarray(outputs[self.output].numpy(), dtype=np.float64)

    def close(self) -> None:
        self._sessions.clear()
        self.predictor.close()


class NvmlSampler:
    """Samples GPU power and memory with NVML in a background thread (``with`` block).

    ``energy_j`` integrates power over the block; ``peak_memory_mb`` is the device's peak used
    memory seen. Raises BackendUnavailableError when NVML (nvidia-ml-py) is missing.
    """

    def __init__(self, device_index: int = 0, interval_s: float = 0.01):
        try:
            import pynvml
        except ImportError as exc:
            raise BackendUnavailableError("GPU power and memory need nvidia-ml-py.",
                                          hint="pip install 'edgemm[gpu]'") from exc
        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        nvml, handle = self._nvml, self._handle
        while not self._stop.is_set():
            power_w = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            used_mb = nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
            self.samples.append((time.perf_counter(), power_w, used_mb))
            time.sleep(self.interval_s)

    def __enter__(self) -> NvmlSampler:
        self._stop.clear()
        self.samples = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self, items: int) -> dict[str, float]:
        """Average power, energy per item and peak memory over the sampled block."""
        if len(self.samples) < 2:
            return {}
        times = np.array([s[0] for s in self.samples])
        power = np.array([s[1] for s in self.samples])
        energy = float(np.trapezoid(power, times)) if hasattr(np, "trapezoid") else float(np.trapz(power, times))
        return {"avg_power_w": float(power.mean()), "energy_j": energy,
                "energy_per_item_mj": 1000.0 * energy / max(items, 1),
                "peak_memory_mb": float(max(s[2] for s in self.samples))}


def tegrastats_available() -> bool:
    """True on a Jetson with ``tegrastats`` on PATH (power is then read from it)."""
    import shutil

    return shutil.which("tegrastats") is not None


_TEGRA_POWER = __import__("re").compile(r"\b(?:VDD_IN|POM_5V_IN)\s+(\d+)(?:mW)?/")
_TEGRA_RAM = __import__("re").compile(r"\bRAM\s+(\d+)/(\d+)MB")


def parse_tegrastats(line: str) -> tuple[float | None, float | None]:
    """Board input power (W) and used RAM (MB) from one ``tegrastats`` line (None if absent)."""
    power = _TEGRA_POWER.search(line)
    ram = _TEGRA_RAM.search(line)
    return (int(power.group(1)) / 1000.0 if power else None, float(ram.group(1)) if ram else None)


class TegrastatsSampler(NvmlSampler):
    """Jetson power and (shared) memory from ``tegrastats`` — NVML is not available on Tegra."""

    def __init__(self, interval_ms: int = 20):
        import shutil

        if shutil.which("tegrastats") is None:
            raise BackendUnavailableError("tegrastats is not on PATH.", hint="Run on a Jetson with JetPack.")
        self.interval_s = interval_ms / 1000.0
        self._interval_ms = interval_ms
        self.samples = []
        self._stop = threading.Event()
        self._thread = None
        self._proc: Any = None

    def _loop(self) -> None:
        import subprocess

        self._proc = subprocess.Popen(["tegrastats", "--interval", str(self._interval_ms)],
                                      stdout=subprocess.PIPE, text=True)
        for line in self._proc.stdout:
            power, ram = parse_tegrastats(line)
            if power is not None:
                self.samples.append((time.perf_counter(), power, ram or 0.0))
            if self._stop.is_set():
                break
        self._proc.terminate()
