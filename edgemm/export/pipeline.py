"""``edgemm export``: checkpoint → ONNX → parity → golden set → verified bundle, atomically.

The bundle is assembled in a hidden staging directory next to the output and renamed into place
only after it verified; any failure removes the staging directory, so a failed export never
leaves a partial bundle behind.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import logging
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import edgemm
from edgemm._deps import require
from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import Artifact, Manifest
from edgemm.bundle.verify import verify_bundle
from edgemm.bundle.writer import write_manifest
from edgemm.errors import (
    BundleExistsError,
    CheckpointError,
    InputPathError,
    ParityError,
    UnsafeCheckpointError,
    UsageError,
)
from edgemm.export.onnx_export import EXTERNAL_DATA_THRESHOLD, OrderedIO, onnx_from_torch, to_torch
from edgemm.export.samples import case_feed, raw_batch
from edgemm.models.spec import ExportSpec, LoadedModel, ShapeCase, family_for, load_factory
from edgemm.runtime.backends.onnxruntime import OrtBackend
from edgemm.runtime.compare import OutputComparison, Tolerance, compare_all, summarize
from edgemm.runtime.golden import check_golden
from edgemm.runtime.preprocess.pipeline import Preprocessor

log = logging.getLogger("edgemm.export")

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
GOLDEN_FILE = "golden.npz"
FP32_PATH = "model/fp32.onnx"


@dataclass(frozen=True)
class ExportOptions:
    """Options of one export (CLI flags and recipe values end up here)."""

    exporter: str = "dynamo"
    opset: int | None = None
    allow_mismatch: bool = False
    allow_pickle: bool = False
    labels: tuple[str, ...] | None = None
    prompt: str | None = None
    force: bool = False
    tolerance: Tolerance | None = None
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD
    golden_size: int = 4
    recipe: str | None = None


@dataclass
class ExportReport:
    """What an export did: where the bundle is, what was measured, how long it took."""

    bundle: Path
    manifest: Manifest
    parity: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "name": self.manifest.name,
            "task": self.manifest.task,
            "artifacts": [{"name": a.name, "path": a.path, "precision": a.precision} for a in self.manifest.artifacts],
            "parity": {k: v for k, v in self.parity.items() if k != "comparisons"},
            "parity_comparisons": self.parity.get("comparisons", []),
            "timings_s": self.timings,
        }


# -- loading ----------------------------------------------------------------------------------


def load_source(source: Path | None, spec_ref: str | None, options: ExportOptions) -> LoadedModel:
    """Resolve the export input: a checkpoint directory, or ``--spec module:factory`` (+ weights)."""
    if spec_ref:
        return _load_from_factory(spec_ref, source, options)
    if source is None:
        raise UsageError("Nothing to export.", hint="Give a checkpoint directory or --spec package.module:factory.")
    if not source.exists():
        raise InputPathError(f"{source} does not exist.", hint="Check the checkpoint path.")
    if source.is_file():
        if source.suffix in PICKLE_SUFFIXES:
            raise UnsafeCheckpointError(
                f"{source.name} is a bare pickle checkpoint; edgemm needs its model definition.",
                hint="Save a FusionModel directory, or use --spec package.module:factory with this file.",
            )
        raise InputPathError(f"{source} is a file; edgemm exports checkpoint directories.",
                             hint="Point at the directory holding config and weights.")
    family = family_for(source)
    return family.load(source, allow_pickle=options.allow_pickle,
                       labels=list(options.labels) if options.labels else None, prompt=options.prompt)


def _load_from_factory(spec_ref: str, source: Path | None, options: ExportOptions) -> LoadedModel:
    factory = load_factory(spec_ref)
    params = inspect.signature(factory).parameters
    result = factory(source) if params and source is not None and source.is_dir() else factory()
    if isinstance(result, LoadedModel):
        loaded = result
    elif isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], ExportSpec):
        loaded = LoadedModel(result[0], result[1], {"kind": "custom", "factory": spec_ref})
    else:
        raise UsageError(f"{spec_ref} returned {type(result).__name__}; expected (nn.Module, ExportSpec).",
                         hint="Return the module and its edgemm.models.spec.ExportSpec.")
    loaded.source.setdefault("kind", "custom")
    loaded.source["factory"] = spec_ref
    if source is not None and source.is_file():
        _load_weights_file(loaded.module, source, options.allow_pickle)
        from edgemm.models.specs.common import file_sha256

        loaded.source.update({"weights": source.name, "sha256": file_sha256(source)})
    if hasattr(loaded.module, "eval"):
        loaded.module.eval()
    return loaded


def _load_weights_file(module: Any, path: Path, allow_pickle: bool) -> None:
    torch = require("torch")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path.name} is not a readable safetensors file: {exc}",
                                  hint="The file is corrupt or truncated.") from exc
    elif path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{path.name} is a pickle checkpoint; loading pickle can run arbitrary code.",
                hint="Convert it to safetensors, or pass --allow-pickle if you trust its origin.",
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"Cannot load {path.name}: {exc}") from exc
    else:
        raise InputPathError(f"Unknown weights file type {path.suffix!r}.", hint="Use .safetensors.")
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path.name} does not fit the model: {str(exc).splitlines()[0]}") from exc


# -- reference runs ---------------------------------------------------------------------------


def run_torch(module: Any, spec: ExportSpec, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the PyTorch reference on a feed; outputs by spec name as float32 numpy."""
    torch = require("torch")
    names = [t.name for t in spec.inputs]
    wrapper = OrderedIO(module, names, [t.name for t in spec.outputs]).eval()
    with torch.no_grad():
        outputs = wrapper(*to_torch(feed, names))
    return {t.name: out.detach().cpu().numpy() for t, out in zip(spec.outputs, outputs)}


def _classify_outputs(spec: ExportSpec) -> set[str]:
    out = spec.postprocessing.get("output")
    return {out} if out and spec.task in ("classification", "zero_shot_classification", "image_text_similarity") else set()


# -- the pipeline -----------------------------------------------------------------------------


def export_bundle(
    source: Path | None,
    output: Path,
    *,
    spec_ref: str | None = None,
    options: ExportOptions | None = None,
) -> ExportReport:
    """Export a checkpoint to a verified bundle directory at ``output``.

    Args:
        source: Checkpoint directory (FusionModel, CLIP, SigLIP), or the weights / directory
            handed to a ``spec_ref`` factory.
        output: Bundle directory to create.
        spec_ref: ``package.module:factory`` for a user's own module.
        options: Export options.

    Returns:
        The :class:`ExportReport`.

    Raises:
        ParityError: ONNX and PyTorch disagree beyond tolerance (exit 4), unless
            ``options.allow_mismatch``.
        EdgemmError: Any other user-facing failure; nothing is left at ``output``.
    """
    options = options or ExportOptions()
    for module in ("torch", "transformers", "onnx", "onnxscript"):
        require(module, purpose="exporting a model")
    output = Path(output)
    if output.exists() and not options.force:
        raise BundleExistsError(f"{output} already exists.", hint="Choose another --output or pass --force to replace it.")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    loaded = load_source(source, spec_ref, options)
    spec = loaded.spec
    if options.opset is not None:
        spec = replace(spec, opset=options.opset)
    if options.tolerance is not None:
        spec = replace(spec, tolerance=options.tolerance)
    timings["load"] = time.perf_counter() - start

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        manifest, parity = _build(loaded.module, spec, loaded.source, staging, options, timings)
        _publish(staging, output, force=options.force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    timings["total"] = time.perf_counter() - start
    return ExportReport(bundle=output, manifest=manifest, parity=parity, timings={k: round(v, 3) for k, v in timings.items()})


def _build(module: Any, spec: ExportSpec, source: dict[str, Any], staging: Path, options: ExportOptions,
           timings: dict[str, float]) -> tuple[Manifest, dict[str, Any]]:
    for rel, data in spec.assets.items():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    t = time.perf_counter()
    feeds = {case.name: case_feed(spec, case, staging) for case in _unique_cases(spec)}
    exported = onnx_from_torch(module, spec, feeds[spec.export_case.name], staging / FP32_PATH,
                               exporter=options.exporter, external_data_threshold=options.external_data_threshold)
    timings["export"] = time.perf_counter() - t

    t = time.perf_counter()
    inputs, outputs = spec.with_profiles()
    backend = OrtBackend(exported.path, inputs, outputs, device="cpu", optimization="disable").activate()
    results: list[OutputComparison] = []
    classify = _classify_outputs(spec)
    for case in spec.parity_cases:
        reference = run_torch(module, spec, feeds[case.name])
        actual = backend.run(feeds[case.name])
        results.extend(compare_all(case.name, reference, actual, spec.tolerance, classify_outputs=classify))
    parity = summarize(results)
    timings["parity"] = time.perf_counter() - t
    failures = [r for r in results if not r.passed]
    if failures and not options.allow_mismatch:
        lines = [f"{r.case}/{r.output}: " + "; ".join(r.reasons) for r in failures]
        raise ParityError(
            f"ONNX output differs from PyTorch in {len(failures)} of {len(results)} comparisons:\n  " + "\n  ".join(lines),
            hint="Inspect the model for shape-dependent code (e.g. a traced Reshape); --allow-mismatch records and accepts it.",
            details={"failures": [r.to_dict() for r in failures]},
        )

    golden = _golden_set(module, spec, staging, options.golden_size)
    golden.artifacts["fp32"] = backend.run(golden.feed)
    golden.save(staging / GOLDEN_FILE)
    backend.deactivate()

    artifact = Artifact(
        name="fp32",
        path=FP32_PATH,
        kind="onnx",
        precision="fp32",
        files=[p.relative_to(staging).as_posix() for p in exported.files],
        providers=["CPUExecutionProvider", "CUDAExecutionProvider"],
        validation={"parity": {k: v for k, v in parity.items() if k != "comparisons"},
                    "tolerance": spec.tolerance.to_dict()},
    )
    manifest = Manifest(
        name=spec.name,
        task=spec.task,
        modalities=spec.modalities,
        inputs=inputs,
        outputs=outputs,
        preprocessing=spec.preprocessing,
        postprocessing=spec.postprocessing,
        artifacts=[artifact],
        labels=list(spec.labels),
        created_by=_created_by(spec, exported.exporter),
        source={**source, "family": spec.family, **({"zero_shot": spec.zero_shot} if spec.zero_shot else {})},
        validation={
            "reference": "pytorch",
            "tolerance": spec.tolerance.to_dict(),
            "parity": parity,
            "mismatch_accepted": bool(failures),
        },
        golden=GOLDEN_FILE,
    )
    write_manifest(staging, manifest)

    # Self-check: the bundle verifies and reproduces its golden set through the runtime path.
    t = time.perf_counter()
    verified = verify_bundle(staging)
    check_golden(staging, verified, artifact.name)
    timings["verify"] = time.perf_counter() - t
    return verified, parity


def _unique_cases(spec: ExportSpec) -> list[ShapeCase]:
    seen: dict[str, ShapeCase] = {}
    for case in [spec.export_case, *spec.parity_cases]:
        seen.setdefault(case.name, case)
    return list(seen.values())


def _golden_set(module: Any, spec: ExportSpec, staging: Path, size: int) -> GoldenSet:
    """Raw inputs at natural sizes, their runtime feed, and PyTorch's outputs for them."""
    sizes = {axis: size for axis in ("batch", "text_batch") if axis in spec.axis_ranges}
    case = ShapeCase("golden", sizes, absent={m: (size - 1,) for m, info in spec.modalities.items() if not info["required"]})
    if spec.make_feed is not None:
        feed = case_feed(spec, case, staging, seed=7)
        return GoldenSet(raw={}, feed=feed, expected=run_torch(module, spec, feed))
    raw = raw_batch(spec, case, seed=7)
    # Golden images share one size so they stack into one array.
    if "image" in raw:
        from edgemm.runtime.preprocess.image import synthesize_image

        raw["image"] = [None if x is None else synthesize_image(48, 64, seed=70 + i) for i, x in enumerate(raw["image"])]
    feed = Preprocessor(staging, spec.preprocessing, spec.modalities)(raw)
    golden = GoldenSet(feed=feed, expected=run_torch(module, spec, feed))
    for modality, items in raw.items():
        present = np.array([x is not None for x in items])
        golden.raw[f"raw.present.{modality}"] = present
        if modality == "text":
            golden.raw["raw.text"] = np.array(["" if x is None else x for x in items], dtype=str)
        elif modality == "image":
            blank = np.zeros((48, 64, 3), dtype=np.uint8)
            golden.raw["raw.image"] = np.stack([blank if x is None else x for x in items])
        else:
            waves = [np.zeros(1, np.float32) if x is None else x[0] for x in items]
            longest = max(len(w) for w in waves)
            golden.raw["raw.audio"] = np.stack([np.pad(w, (0, longest - len(w))) for w in waves]).astype(np.float32)
            golden.raw["raw.audio_length"] = np.array([len(w) for w in waves], dtype=np.int64)
            golden.raw["raw.audio_rate"] = np.array(next(x[1] for x in items if x is not None), dtype=np.int64)
    return golden


def _created_by(spec: ExportSpec, exporter: str) -> dict[str, Any]:
    versions = {"edgemm": edgemm.__version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            continue
    return {**versions, "opset": spec.opset, "exporter": exporter,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _publish(staging: Path, output: Path, *, force: bool) -> None:
    """Move the verified staging directory to ``output`` (replacing it only with ``force``)."""
    if output.exists():
        if not force:
            raise BundleExistsError(f"{output} already exists.", hint="Pass --force to replace it.")
        retired = output.with_name(f".{output.name}.old-{int(time.time() * 1000)}")
        output.rename(retired)
        staging.rename(output)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(output)
