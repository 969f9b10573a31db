"""What gets benchmarked: edgemm artifacts (torch-free) behind one small interface.

A contender runs *end to end* (raw text / image bytes or paths / audio → predictions, including
preprocessing) and *model only* (an already preprocessed feed → raw outputs, in the
contender's own input format prepared outside the timed region).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Contender(Protocol):
    """The benchmark interface (edgemm artifacts and peers alike)."""

    name: str
    kind: str          # "edgemm" or "peer"
    precision: str
    device: str
    info: dict[str, Any]

    def e2e(self, raw: dict[str, list[Any]]) -> Any:
        """One end-to-end call: raw inputs (``modality → list of items``) → predictions, preprocessing included."""
        ...

    def native(self, feed: dict[str, np.ndarray]) -> Any:
        """Convert an edgemm feed into this contender's own input format (outside the timed region)."""
        ...

    def model(self, native: Any) -> Any:
        """One model-only call on an input from :meth:`native` (what is timed as "model only")."""
        ...

    def logits(self, native: Any) -> np.ndarray:
        """The classifying output for ``native`` as float64 numpy (for accuracy drift)."""
        ...

    def close(self) -> None:
        """Release the session / model and its memory."""
        ...


class EdgemmContender(Contender):
    """One artifact of a bundle through :class:`edgemm.runtime.Predictor` (ONNX Runtime, OpenVINO
    or the split backend, whichever the artifact's kind runs on) — the path ``predict`` and ``serve`` take."""

    kind = "edgemm"

    def __init__(self, bundle: Path, artifact: str, *, device: str = "cpu", threads: int | None = None):
        from edgemm.runtime.predictor import Predictor

        start = time.perf_counter()
        self.predictor = Predictor.load(bundle, device=device, artifact=artifact, threads=threads)
        art = self.predictor.artifact
        self.name = f"edgemm:{art.name}"
        self.precision = art.precision
        self.device = self.predictor.device
        self.output = self.predictor.manifest.primary_output
        backend = self.predictor.backend
        runtime = {"onnx": "onnxruntime", "openvino": "openvino", "split": "split"}.get(art.kind, art.kind)
        self.info = {"load_s": time.perf_counter() - start, "artifact": art.name, "artifact_kind": art.kind,
                     "runtime": runtime, "providers": getattr(backend, "providers", list(art.providers)),
                     "threads": getattr(backend, "threads", None), "graph_optimized": art.graph_optimized,
                     "degraded": self.predictor.degraded}

    def e2e(self, raw: dict[str, list[Any]]) -> Any:
        return self.predictor.predict(**raw)

    def native(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return feed

    def model(self, native: dict[str, np.ndarray]) -> Any:
        return self.predictor.run(native)

    def logits(self, native: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.predictor.run(native)[self.output], dtype=np.float64)

    def settle(self) -> bool:
        """Wait for the backend's background work started by the warm-up (OpenVINO static-shape
        compiles); True if there was some: the caller warms up again, so timing sees steady state."""
        wait = backend_hook(self, "wait_for_compiles")
        return bool(wait()) if wait is not None else False

    def close(self) -> None:
        self.predictor.close()



def backend_hook(contender: Any, name: str) -> Any:
    """The bound method ``name`` of an edgemm contender's backend (an answer cache's
    ``cache_stats`` / ``clear_cache`` / ``set_caching``, OpenVINO's ``shape_stats`` /
    ``wait_for_compiles``), or None where the contender or its backend has none (peers)."""
    method = getattr(getattr(getattr(contender, "predictor", None), "backend", None), name, None)
    return method if callable(method) else None


def shape_stats(contender: Any) -> dict[str, int] | None:
    """An edgemm contender's OpenVINO static-shape compile counters, or None where it has none."""
    stats = backend_hook(contender, "shape_stats")
    return stats() if stats is not None else None
