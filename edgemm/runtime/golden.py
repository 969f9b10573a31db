"""Re-run a bundle's golden set on this machine: preprocessing, each artifact's outputs, labels.

The label check: the golden set records, per row, the label the postprocessing gave the PyTorch
reference at export, and the label list it used (:func:`record_labels`). Re-postprocessing the
stored reference outputs with the manifest's *current* postprocessing and labels must give the
same strings, and the label list must be the recorded one: a label list swapped or edited after
export fails the golden check (``edgemm verify``, the serve and install canaries). The reference
outputs are used, not the artifact's, so that the check is exact: an artifact's accepted drift is
judged by the output comparison. Golden sets without recorded labels skip the check and say so.
"""

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
from edgemm.runtime.postprocess import postprocess
from edgemm.runtime.preprocess.pipeline import Preprocessor
from edgemm.runtime.semantics import check_semantics

# Re-tokenizing must give identical ids; pixels/features may differ by float rounding only.
_FEED_ATOL = 1e-5


def load_golden(bundle: Path, manifest: Manifest) -> GoldenSet:
    """Hash-check, then load, the golden set of a bundle."""
    if manifest.golden is None:
        raise BundleError("The bundle has no golden set.", hint="Export it again with this edgemm.")
    verify_hashes(bundle, manifest, [manifest.golden])
    return GoldenSet.load(bundle / manifest.golden)


def expected_labels(manifest: Manifest, outputs: dict[str, np.ndarray]) -> list[str]:
    """The label string the manifest's postprocessing gives each row of ``outputs``.

    Args:
        manifest: The bundle's manifest, or the build side's ``ExportSpec`` (same ``task``,
            ``outputs``, ``postprocessing`` and ``labels``).
        outputs: Output name → array with the batch on axis 0 (e.g. ``golden.expected``).

    Returns:
        One string per row: the primary label, ``""`` for rows of tasks without labels (identity
        values, image–text similarity, whose candidates come with each request).
    """
    rows = int(np.asarray(outputs[manifest.primary_output]).shape[0])
    if manifest.task == "image_text_similarity" or manifest.postprocessing.get("type", "identity") == "identity":
        return [""] * rows
    return [p.label or "" for p in postprocess(outputs, manifest)]  # type: ignore[arg-type]


def record_labels(golden: GoldenSet, manifest: Manifest) -> None:
    """Record in ``golden`` the expected label per row of its reference outputs and the label list.

    Call at export, before ``golden.save``; ``manifest`` may be the ``ExportSpec``.
    """
    golden.labels = expected_labels(manifest, golden.expected)
    golden.label_names = list(manifest.labels)


def label_report(manifest: Manifest, golden: GoldenSet) -> dict[str, Any]:
    """Compare the labels the manifest gives the golden reference with those recorded at export.

    Returns:
        ``{"checked", "passed", "rows", "mismatched": [{"row", "expected", "actual"}],
        "names_changed", "reason"}``; ``checked`` is False (and ``passed`` True) for golden sets
        written before labels were recorded.
    """
    if golden.labels is None:
        return {"checked": False, "passed": True, "rows": golden.size, "mismatched": [], "names_changed": False,
                "reason": "the golden set records no expected labels (exported before edgemm recorded them); "
                          "export again to check labels"}
    actual = expected_labels(manifest, golden.expected)
    mismatched = [{"row": i, "expected": want, "actual": got}
                  for i, (want, got) in enumerate(zip(golden.labels, actual)) if want != got]
    names_changed = golden.label_names is not None and golden.label_names != list(manifest.labels)
    return {"checked": True, "passed": not mismatched and not names_changed, "rows": len(actual),
            "mismatched": mismatched, "names_changed": names_changed,
            "reason": _label_reason(mismatched, names_changed, golden.label_names, manifest.labels)}


def _label_reason(mismatched: list[dict[str, Any]], names_changed: bool, recorded: list[str] | None,
                  current: list[str]) -> str:
    parts = [f"row {m['row']} was {m['expected']!r} at export, the manifest now gives {m['actual']!r}"
             for m in mismatched[:3]]
    if len(mismatched) > 3:
        parts.append(f"{len(mismatched) - 3} more rows differ")
    if names_changed:
        parts.append(f"the labels were {recorded} at export, the manifest now lists {current}")
    return "; ".join(parts)


def golden_report(bundle: Path, manifest: Manifest, artifact: str, *, device: str = "cpu",
                  threads: int | None = None, backend: Backend | None = None) -> dict[str, Any]:
    """Compare this machine's preprocessing and an artifact's outputs with the golden set.

    Args:
        backend: An already active backend of ``artifact`` (a server's canary); default: a new
            ONNX Runtime session on ``device``, closed afterwards.

    Returns:
        ``{"artifact", "device", "passed", "preprocessing": {...}, "labels": {...} (see
        :func:`label_report`), "outputs": [...], "reference_drift": [...]}``.

    Raises:
        BundleError: The manifest is inconsistent (:func:`~edgemm.runtime.semantics.check_semantics`),
            or a file it reads (golden set, tokenizer) is not the hashed one.
    """
    from edgemm.bundle.manifest import ENGINE_KIND

    check_semantics(manifest)
    art = manifest.artifact(artifact)
    golden = load_golden(bundle, manifest)
    mismatched: list[str] = []
    if golden.raw:
        verify_hashes(bundle, manifest, manifest.asset_paths())
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
        actual = backend.run_reference(golden.feed)  # the recorded form, not an answer cache's
    else:
        if art.kind == ENGINE_KIND:
            # Hash and compatibility checks come before the engine is deserialized.
            from edgemm.runtime.backends.tensorrt import TensorRTBackend

            backend = TensorRTBackend.from_bundle(bundle, manifest, art)
        else:
            from edgemm.runtime.backends.kinds import make_backend

            backend = make_backend(bundle, art, manifest.inputs, manifest.outputs, device=device, threads=threads)
        with backend:
            actual = backend.run_reference(golden.feed)
    classify = manifest.classifying_outputs
    # Pass/fail: does the artifact still produce what it produced at export time? The drift
    # against the PyTorch reference is reported alongside (an accepted mismatch shows up there).
    results = compare_all("golden", recorded, actual, tolerance, classify_outputs=classify)
    drift = compare_all("reference", golden.expected, actual, tolerance, classify_outputs=classify)
    labels = label_report(manifest, golden)
    return {
        "artifact": artifact,
        "device": backend.device,
        "passed": not mismatched and labels["passed"] and all(r.passed for r in results),
        "preprocessing": {"checked": bool(golden.raw), "mismatched_inputs": mismatched},
        "labels": labels,
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
        labels = report["labels"]
        raise GoldenSetError(
            f"Artifact {artifact!r} does not reproduce the golden set on this machine"
            + (f"; preprocessing differs for {bad}" if bad else "")
            + (f"; labels differ: {labels['reason']}" if not labels["passed"] else "")
            + (f"; {'; '.join(failed)}" if failed else "") + ".",
            hint="The manifest's labels or postprocessing changed after export: export the bundle again."
            if not labels["passed"] else
            "Re-export the bundle, or compare library versions with the manifest's created_by.",
            details=report,
        )
    return report


def _feed_matches(actual: np.ndarray, stored: np.ndarray) -> bool:
    if actual.shape != stored.shape:
        return False
    if np.issubdtype(stored.dtype, np.integer):
        return bool(np.array_equal(actual, stored))
    return bool(np.allclose(actual, stored, atol=_FEED_ATOL, rtol=0))
