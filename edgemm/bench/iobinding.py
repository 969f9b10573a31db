"""The GPU path: fixed-shape ONNX Runtime sessions with IO binding, and CUDA graphs on the CUDA EP.

CUDA-graph capture needs every node on the CUDA provider; the shape subgraphs of a dynamic-axes
export land on the CPU (FIELD_NOTES). Each benchmarked shape therefore gets its own session with
ONNX Runtime's *free-dimension overrides*: the dynamic axes become constants, the shape logic
folds away, and the whole graph can run on the GPU — one fixed-shape profile per session. Inputs
and outputs are bound once as device tensors (IO binding) and refreshed in place, so model-only
timing is the graph replay alone. Where ONNX Runtime refuses to capture a graph, the contender
falls back to IO binding without graphs and says so in its name and ``info``.

The same mechanics run on the CPU provider (without graphs), which is how they are tested on
machines without a GPU. Torch-free.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bench.contenders import Contender
from edgemm.bundle.manifest import Manifest
from edgemm.errors import BackendUnavailableError, EdgemmError, UsageError
from edgemm.runtime.sessions import PROVIDERS, create_session

log = logging.getLogger("edgemm.bench")

DEVICES = ("cpu", "cuda")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


@dataclass
class BoundShape:
    """One fixed-shape session with its binding and the device tensors bound to it."""

    session: Any
    binding: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any]


class IOBindingContender(Contender):
    """An artifact in fixed-shape sessions with IO binding (and CUDA graphs on ``cuda``).

    ``native(feed)`` copies the feed into the device tensors of the session for its shape
    (creating and capturing that session on first use), ``model(bound)`` replays it with nothing
    crossing the host–device boundary, ``logits(bound)`` reads the output back.
    """

    kind = "edgemm"

    def __init__(self, bundle: Path, manifest: Manifest, artifact: str, *, device: str = "cuda",
                 cuda_graphs: bool = True, device_id: int = 0, threads: int | None = None):
        import onnxruntime as ort

        from edgemm.runtime.golden import load_golden
        from edgemm.runtime.predictor import Predictor

        if device not in DEVICES:
            raise UsageError(f"IO binding runs on cpu or cuda, not {device!r}.")
        if PROVIDERS[device] not in ort.get_available_providers():
            raise BackendUnavailableError("The CUDA benchmark path needs onnxruntime-gpu.",
                                          hint="pip uninstall onnxruntime && pip install 'edgemm[gpu]'")
        self._ort = ort
        art = manifest.artifact(artifact)
        self.path = bundle / art.path
        self.manifest = manifest
        self.device = device
        self.device_id = device_id
        self.threads = threads
        self.cuda_graphs = cuda_graphs and device == "cuda"
        self.precision = art.precision
        self.output = manifest.primary_output
        self._shapes: dict[tuple[tuple[str, int], ...], BoundShape] = {}
        self.info: dict[str, Any] = {"artifact": art.name, "runtime": f"onnxruntime {PROVIDERS[device]}",
                                     "io_binding": True, "cuda_graphs": self.cuda_graphs, "fixed_shape_sessions": 0}
        # End to end (preprocessing included) goes through the ordinary Predictor on the device.
        self.predictor = Predictor.load(bundle, device=device, artifact=artifact, threads=threads)
        # Probe with the golden feed so a refused graph capture shows in the name before timing.
        try:
            self.native(load_golden(bundle, manifest).feed)
        except EdgemmError:
            raise
        except Exception as exc:
            self.predictor.close()
            raise BackendUnavailableError(
                f"Artifact {art.name!r} does not run with IO binding on {device}: {_first_line(exc)}",
                hint="Benchmark it without the IO-binding path (--device cpu), or export for this device.") from exc
        self.name = f"edgemm:{art.name}+iobinding" + ("+cudagraph" if self.cuda_graphs else "")

    # -- sessions ---------------------------------------------------------------------------

    def _axes(self, feed: dict[str, np.ndarray]) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for spec in self.manifest.inputs:
            for dim, size in zip(spec.shape, feed[spec.name].shape):
                if isinstance(dim, str):
                    sizes[dim] = int(size)
        return sizes

    def _bind(self, sizes: dict[str, int], feed: dict[str, np.ndarray], graphs: bool) -> BoundShape:
        ort = self._ort
        session = create_session(self.path, device=self.device, device_id=self.device_id, threads=self.threads,
                                 free_dims=sizes, cuda_graph=graphs)
        if session.get_providers()[0] != PROVIDERS[self.device]:
            raise BackendUnavailableError("ONNX Runtime placed the CUDA benchmark session on the CPU.",
                                          hint="Check the CUDA / cuDNN libraries onnxruntime-gpu needs.")
        binding = session.io_binding()
        inputs = {spec.name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feed[spec.name]), self.device,
                                                             self.device_id)
                  for spec in self.manifest.inputs if spec.name in feed}
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        outputs: dict[str, Any] = {}
        for spec in self.manifest.outputs:
            shape = [d if isinstance(d, int) else sizes[d] for d in spec.shape]
            outputs[spec.name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.dtype(spec.dtype), self.device,
                                                                           self.device_id)
            binding.bind_ortvalue_output(spec.name, outputs[spec.name])
        session.run_with_iobinding(binding)  # with CUDA graphs enabled, this run captures the graph
        return BoundShape(session, binding, inputs, outputs)

    def _shape(self, feed: dict[str, np.ndarray]) -> BoundShape:
        sizes = self._axes(feed)
        key = tuple(sorted(sizes.items()))
        bound = self._shapes.get(key)
        if bound is None:
            try:
                bound = self._bind(sizes, feed, self.cuda_graphs)
            except BackendUnavailableError:
                raise
            except Exception as exc:
                if not self.cuda_graphs:
                    raise
                # Typically a node ONNX Runtime keeps on the CPU: no capture possible for this graph.
                reason = _first_line(exc)
                log.warning("CUDA graph capture refused (%s); timing with IO binding only", reason)
                self.cuda_graphs = False
                self.info.update(cuda_graphs=False, cuda_graph_refused=reason)
                self._shapes.clear()
                bound = self._bind(sizes, feed, False)
            self._shapes[key] = bound
            self.info["fixed_shape_sessions"] = len(self._shapes)
        return bound

    # -- the contender interface -------------------------------------------------------------

    def e2e(self, raw: dict[str, list[Any]]) -> Any:
        return self.predictor.predict(**raw)

    def native(self, feed: dict[str, np.ndarray]) -> BoundShape:
        bound = self._shape(feed)
        for name, value in bound.inputs.items():
            value.update_inplace(np.ascontiguousarray(feed[name]))
        return bound

    def model(self, bound: BoundShape) -> None:
        bound.session.run_with_iobinding(bound.binding)  # inputs and outputs stay on the device
        bound.binding.synchronize_outputs()

    def logits(self, bound: BoundShape) -> np.ndarray:
        self.model(bound)
        return np.asarray(bound.outputs[self.output].numpy(), dtype=np.float64)

    def close(self) -> None:
        self._shapes.clear()
        self.predictor.close()
