"""Native TensorRT backend: a verified engine artifact, run through ctypes CUDA. Torch-free.

* Engines are deserialized only through :meth:`TensorRTBackend.from_bundle`, which hash-checks the
  engine file against the verified manifest and checks its compatibility record first
  (:mod:`edgemm.runtime.trt_compat`); the constructor alone is for tests and tools that did both.
* One execution context (and one CUDA stream, and device buffers) per thread and per
  optimization profile: TensorRT execution contexts are not thread-safe.
* CUDA graphs: after the first plain run at a given input shape, the ``execute_async_v3`` call is
  captured once and replayed for later runs at that shape (TensorRT asks for one plain enqueue
  before capture to flush deferred shape updates). Only the enqueue is captured; the host copies
  stay outside, so pageable numpy memory is fine. A capture failure disables graphs for the
  backend and is logged, never raised.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemm._deps import require
from edgemm.bundle.manifest import Artifact, Manifest, TensorSpec
from edgemm.bundle.verify import verify_hashes
from edgemm.errors import BackendUnavailableError, RuntimeFailure
from edgemm.runtime import cuda
from edgemm.runtime.backends.base import Backend, numpy_dtype
from edgemm.runtime.trt_compat import CompatPolicy, HostInfo, check_engine, probe_host, rebuild_hint

log = logging.getLogger("edgemm.runtime")
MAX_GRAPHS_PER_THREAD = 8  # one per distinct input shape; dynamic-shape traffic must not grow this unbounded


@dataclass
class _ThreadState:
    stream: int
    contexts: dict[int, Any] = field(default_factory=dict)
    buffers: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (device ptr, bytes)
    graphs: dict[tuple, int] = field(default_factory=dict)
    plain_runs: set[tuple] = field(default_factory=set)


class TensorRTBackend(Backend):
    """A deserialized TensorRT engine on one CUDA device.

    Args:
        engine_path: The engine file (already hash-verified: use :meth:`from_bundle`).
        input_specs / output_specs: The manifest's graph interface.
        device_id: CUDA device ordinal.
        cuda_graphs: Capture and replay CUDA graphs per input shape.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, input_specs: list[TensorSpec], output_specs: list[TensorSpec], *,
                 device_id: int = 0, cuda_graphs: bool = True):
        super().__init__(input_specs, output_specs)
        self.engine_path = Path(engine_path)
        self.device_id = device_id
        self.cuda_graphs = cuda_graphs
        self.degraded: str | None = None
        self._trt: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._io: dict[str, tuple[bool, np.dtype]] = {}
        self._profiles: list[dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]] = []
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, root: Path, manifest: Manifest, artifact: Artifact, *, host: HostInfo | None = None,
                    policy: CompatPolicy | None = None, **kwargs: Any) -> TensorRTBackend:
        """The backend for an engine artifact of a verified bundle, after its hash and compatibility checks.

        Raises:
            BackendUnavailableError: The engine's record does not match this machine (exit 3); the
                message says why and how to rebuild.
            BundleError: The engine file is not the one the manifest lists.
        """
        decision = check_engine(artifact.requirements, host or probe_host(), policy)
        if not decision.ok:
            hint = rebuild_hint(root, artifact.source_artifact) \
                if decision.rebuildable else "Use --device cuda or cpu (the bundle's ONNX artifacts run everywhere)."
            raise BackendUnavailableError(f"TensorRT engine {artifact.name!r} is {decision.summary()}.", hint=hint,
                                          details={"compat": decision.to_dict()})
        for warning in decision.warnings:
            log.warning("engine %s: %s", artifact.name, warning)
        verify_hashes(root, manifest, list(artifact.files))
        return cls(root / artifact.path, manifest.inputs, manifest.outputs, **kwargs)

    # -- lifecycle ------------------------------------------------------------------------

    def _activate_impl(self) -> None:
        trt = require("tensorrt", extra="trt", purpose="running TensorRT engines")
        cuda.set_device(self.device_id)
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise RuntimeFailure(f"TensorRT could not deserialize {self.engine_path.name}.",
                                 hint="The engine does not match this TensorRT/GPU; rebuild it with `edgemm build-engine --rebuild`.")
        self._engine = engine
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            self._io[name] = (is_input, np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
        expected = {s.name for s in self.input_specs} | {s.name for s in self.output_specs}
        if set(self._io) != expected:
            raise RuntimeFailure(f"Engine tensors {sorted(self._io)} do not match the manifest's {sorted(expected)}.",
                                 hint="Rebuild the engine from this bundle with `edgemm build-engine --rebuild`.")
        inputs = [n for n, (is_in, _) in self._io.items() if is_in]
        self._profiles = [
            {n: tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(n, p)) for n in inputs}  # type: ignore[misc]
            for p in range(engine.num_optimization_profiles)
        ]

    def _deactivate_impl(self) -> None:
        with self._lock:
            for state in self._states:
                for graph in state.graphs.values():
                    cuda.graph_destroy(graph)
                state.contexts.clear()  # contexts go before the engine
                for ptr, _ in state.buffers.values():
                    cuda.free(ptr)
                cuda.stream_destroy(state.stream)
            self._states.clear()
        self._local = threading.local()
        self._engine = None
        self._runtime = None

    def _device_impl(self) -> str:
        return "cuda"

    # -- inference ------------------------------------------------------------------------

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            cuda.set_device(self.device_id)
            state = _ThreadState(stream=cuda.stream_create())
            self._local.state = state
            with self._lock:
                self._states.append(state)
        return state

    def _profile_for(self, shapes: dict[str, tuple[int, ...]]) -> int:
        best: tuple[int, int] | None = None
        for index, profile in enumerate(self._profiles):
            if all(len(shapes[n]) == len(lo) and all(a <= s <= b for s, a, b in zip(shapes[n], lo, hi))
                   for n, (lo, _, hi) in profile.items()):
                volume = sum(int(np.prod(hi)) for _, _, hi in profile.values())
                if best is None or volume < best[0]:
                    best = (volume, index)
        if best is None:
            raise RuntimeFailure(f"No optimization profile of this engine covers input shapes {shapes}.",
                                 hint="Rebuild the engine with a profile for these shapes (edgemm build-engine --profile).")
        return best[1]

    def _buffer(self, state: _ThreadState, name: str, nbytes: int) -> int:
        ptr, size = state.buffers.get(name, (0, 0))
        if size < nbytes:
            cuda.free(ptr)
            ptr = cuda.malloc(nbytes)
            state.buffers[name] = (ptr, nbytes)
            # Captured graphs hold the old addresses.
            for graph in state.graphs.values():
                cuda.graph_destroy(graph)
            state.graphs.clear()
            state.plain_runs.clear()
        return ptr

    def _run_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = self._state()
        shapes = {name: tuple(feed[name].shape) for name, (is_in, _) in self._io.items() if is_in}
        index = self._profile_for(shapes)
        context = state.contexts.get(index)
        if context is None:
            context = self._engine.create_execution_context()
            context.set_optimization_profile_async(index, state.stream)
            state.contexts[index] = context
        keep_alive = []
        for name, shape in shapes.items():
            array = np.ascontiguousarray(feed[name], dtype=self._io[name][1])
            keep_alive.append(array)
            context.set_input_shape(name, shape)
            ptr = self._buffer(state, f"{index}:{name}", array.nbytes)
            cuda.memcpy_htod_async(ptr, array.ctypes.data, array.nbytes, state.stream)
            context.set_tensor_address(name, ptr)
        outputs: dict[str, np.ndarray] = {}
        for name, (is_in, dtype) in self._io.items():
            if is_in:
                continue
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=dtype)
            context.set_tensor_address(name, self._buffer(state, f"{index}:{name}", outputs[name].nbytes))
        key = (index, tuple(sorted(shapes.items())))
        graph = state.graphs.get(key)
        if graph:
            cuda.graph_launch(graph, state.stream)
        else:
            if not context.execute_async_v3(state.stream):
                raise RuntimeFailure("TensorRT execute_async_v3 failed.", hint="Run with -vv for TensorRT's log.")
            if self.cuda_graphs and key in state.plain_runs and len(state.graphs) < MAX_GRAPHS_PER_THREAD:
                self._capture(state, context, key)
            state.plain_runs.add(key)
        for name, array in outputs.items():
            ptr = state.buffers[f"{index}:{name}"][0]
            cuda.memcpy_dtoh_async(array.ctypes.data, ptr, array.nbytes, state.stream)
        cuda.stream_synchronize(state.stream)
        del keep_alive
        wanted = {s.name: numpy_dtype(s.dtype) for s in self.output_specs}
        return {name: array.astype(wanted[name], copy=False) for name, array in outputs.items()}

    def _capture(self, state: _ThreadState, context: Any, key: tuple) -> None:
        try:
            cuda.stream_synchronize(state.stream)
            cuda.begin_capture(state.stream)
            try:
                context.execute_async_v3(state.stream)
            finally:
                graph = cuda.end_capture(state.stream)
            state.graphs[key] = graph
        except Exception as exc:  # some engines are not capturable; plain enqueue still works
            self.cuda_graphs = False
            self.degraded = f"CUDA graphs disabled: {exc}"
            log.warning("CUDA graph capture failed, running without graphs: %s", exc)
