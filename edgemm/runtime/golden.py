"""Re-run a bundle's golden set on this machine: preprocessing and each artifact's outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.compare import compare_all
from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import Manifest
from edgemm.bundle.verify import verify_hashes
from edgemm.errors import BundleError, GoldenSetError
from edgemm.runtime.backends.base import Backend
from edgemm.runtime.preprocess.pipeline import Preprocessor

# Re-tokenizing must give identical ids; pixels/features may differ by float rounding only.
_FEED_ATOL = 1e-5


def load_golden(bundle: Path, manifest: Manifest) -> GoldenSet:
    """Hash-check, then load, the golden set of a bundle."""
    if manifest.golden is None:
        raise BundleError("The bundle has no golden set.", hint="Export it again with this edgemm.")
    verify_hashes(bundle, manifest, [manifest.golden])
    return GoldenSet.load(bundle / manifest.golden)


def golden_report(bundle: Path, manifest: Manifest, artifact: str, *, device: str = "cpu",
                  threads: int | None = None, backend: Backend | None = None) -> dict[str, Any]:
    """Compare this machine's preprocessing and an artifact's outputs with the golden set.

    Args:
        backend: An already active backend of ``artifact`` (a server's canary); default: a new
            ONNX Runtime session on ``device``, closed afterwards.

    Returns:
        ``{"artifact", "device", "passed", "preprocessing": {...}, "outputs": [...]}``.
    """
    from edgemm.bundle.manifest import ENGINE_KIND
    from edgemm.runtime.backends.onnxruntime import OrtBackend

    art = manifest.artifact(artifact)
    golden = load_golden(bundle, manifest)
    mismatched: list[str] = []
    if golden.raw:
        requests = golden.raw_requests()
        feed = Preprocessor(bundle, manifest.preprocessing, manifest.modalities)(requests)
        mismatched = sorted(name for name, stored in golden.feed.items()
                            if name not in feed or not _feed_matches(feed[name], stored))
    recorded = golden.artifacts.get(artifact)
    if recorded is None:
        raise BundleError(f"The golden set has no outputs recorded for artifact {artifact!r}.",
                          hint="Export the bundle again with this edgemm.")
    tolerance = manifest.tolerance(art)
    if backend is not None:
        actual = backend.run(golden.feed)
    else:
        if art.kind == ENGINE_KIND:
            # Hash and compatibility checks come before the engine is deserialized.
            from edgemm.runtime.backends.tensorrt import TensorRTBackend

            backend = TensorRTBackend.from_bundle(bundle, manifest, art)
        else:
            backend = OrtBackend(bundle / art.path, manifest.inputs, manifest.outputs, device=device, threads=threads)
        with backend:
            actual = backend.run(golden.feed)
    classify = manifest.classifying_outputs
    # Pass/fail: does the artifact still produce what it produced at export time? The drift
    # against the PyTorch reference is reported alongside (an accepted mismatch shows up there).
    results = compare_all("golden", recorded, actual, tolerance, classify_outputs=classify)
    drift = compare_all("reference", golden.expected, actual, tolerance, classify_outputs=classify)
    return {
        "artifact": artifact,
        "device": backend.device,
        "passed": not mismatched and all(r.passed for r in results),
        "preprocessing": {"checked": bool(golden.raw), "mismatched_inputs": mismatched},
        "outputs": [r.to_dict() for r in results],
        "reference_drift": [r.to_dict() for r in drift],
    }


def check_golden(bundle: Path, manifest: Manifest, artifact: str, *, device: str = "cpu",
                 backend: Backend | None = None) -> dict[str, Any]:
    """Like :func:`golden_report`, raising :class:`GoldenSetError` when anything differs."""
    report = golden_report(bundle, manifest, artifact, device=device, backend=backend)
    if not report["passed"]:
        bad = report["preprocessing"]["mismatched_inputs"]
        failed = [f"{o['output']}: {'; '.join(o['reasons'])}" for o in report["outputs"] if not o["passed"]]
        raise GoldenSetError(
            f"Artifact {artifact!r} does not reproduce the golden set on this machine"
            + (f"; preprocessing differs for {bad}" if bad else "")
            + (f"; {'; '.join(failed)}" if failed else "") + ".",
            hint="Re-export the bundle, or compare library versions with the manifest's created_by.",
            details=report,
        )
    return report


def _feed_matches(actual: np.ndarray, stored: np.ndarray) -> bool:
    if actual.shape != stored.shape:
        return False
    if np.issubdtype(stored.dtype, np.integer):
        return bool(np.array_equal(actual, stored))
    return bool(np.allclose(actual, stored, atol=_FEED_ATOL, rtol=0))
