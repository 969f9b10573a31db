"""``edgemm export``: checkpoint → ONNX → parity → optimized and precision variants through the
accuracy gate → golden set → verified bundle, atomically.

The bundle is assembled in a hidden staging directory next to the output and renamed into place
only after it verified; any failure removes the staging directory, so a failed export never
leaves a partial bundle behind.
"""

from __future__ import annotations

import datetime as _dt
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
from edgemm import progress
from edgemm._deps import require
from edgemm.bundle.compare import OutputComparison, Tolerance, compare_all, summarize
from edgemm.bundle.display import DISPLAY_FILE, Display, read_checkpoint_display
from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import Artifact, Manifest
from edgemm.bundle.verify import verify_bundle
from edgemm.bundle.writer import write_manifest
from edgemm.errors import BundleExistsError, EdgemmError, ParityError, UsageError
from edgemm.export.contract import (
    activation_warnings,
    check_outputs,
    check_postprocessing,
    plan_forward,
    refuse_tracer_hazards,
    run_forward,
)
from edgemm.export.onnx_export import EXTERNAL_DATA_THRESHOLD, onnx_from_torch
from edgemm.export.parity_inputs import ParityInputs, built_in_cases, parity_inputs
from edgemm.export.samples import case_feed, raw_batch
from edgemm.export.sources import load_source
from edgemm.export.tracing import UserCode
from edgemm.models.spec import ExportSpec, ShapeCase
from edgemm.recipes import Recipe, load_recipe
from edgemm.runtime.backends.kinds import make_backend
from edgemm.runtime.backends.onnxruntime import OrtBackend
from edgemm.runtime.golden import check_golden, record_labels
from edgemm.runtime.preprocess.pipeline import Preprocessor
from edgemm.staging import staged_directory

log = logging.getLogger("edgemm.export")

GOLDEN_FILE = "golden.npz"
FP32_PATH = "model/fp32.onnx"
MIN_EVAL_RECORDS = 50
MIN_CALIBRATION_RECORDS = 16


@dataclass(frozen=True)
class ExportOptions:
    """Options of one export.

    ``exporter``, ``opset``, ``tolerance``, ``budget_points`` and ``calibration_method`` override
    the recipe's values; :func:`export_bundle` applies them to the recipe once
    (:meth:`Recipe.override`), and everything downstream reads only the recipe.
    """

    recipe: Recipe | None = None
    exporter: str | None = None
    opset: int | None = None
    allow_mismatch: bool = False
    allow_pickle: bool = False
    labels: tuple[str, ...] | None = None
    prompt: str | None = None
    force: bool = False
    tolerance: Tolerance | None = None
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD
    golden_size: int = 4
    eval_data: str | None = None
    budget_points: float | None = None
    calibration_method: str | None = None
    allow_tracer_warnings: bool = False
    # The manifest's display texts (edgemm.bundle.display); None: the checkpoint's display.json, if any.
    display: dict[str, Any] | None = None


@dataclass
class ExportReport:
    """What an export did: where the bundle is, what was measured, how long it took, and the
    warnings it recorded (also in the manifest's ``validation.warnings``)."""

    bundle: Path
    manifest: Manifest
    parity: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as the JSON document ``edgemm export --json`` prints."""
        gate = self.manifest.validation.get("gate")
        return {
            "bundle": str(self.bundle),
            "name": self.manifest.name,
            "task": self.manifest.task,
            "recipe": self.manifest.created_by.get("recipe"),
            "artifacts": [{"name": a.name, "path": a.path, "precision": a.precision,
                           "gate": a.validation.get("gate")} for a in self.manifest.artifacts],
            "parity": {k: v for k, v in self.parity.items() if k != "comparisons"},
            "parity_comparisons": self.parity.get("comparisons", []),
            "optimization": self.manifest.validation.get("optimization"),
            "gate": gate,
            "warnings": self.warnings,
            "tracer_warnings": self.manifest.validation.get("tracer_warnings", []),
            "timings_s": self.timings,
        }


# -- reference runs ---------------------------------------------------------------------------


def run_torch(module: Any, spec: ExportSpec, feed: dict[str, np.ndarray], *, case: str = "reference") -> dict[str, np.ndarray]:
    """Run the PyTorch reference on a feed; outputs by spec name as numpy arrays.

    ``forward()`` is called as its signature takes the inputs (see
    :func:`~edgemm.export.contract.plan_forward`); a failure names the user's line.
    """
    return run_forward(module, plan_forward(module, spec), feed, case=case)


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
        options: Export options (the recipe decides variants, limits and the gate).

    Returns:
        The :class:`ExportReport`.

    Raises:
        ParityError: ONNX and PyTorch disagree beyond tolerance (exit 4), unless
            ``options.allow_mismatch``.
        EdgemmError: Any other user-facing failure; nothing is left at ``output``.
    """
    options = options or ExportOptions()
    recipe = (options.recipe or load_recipe("default")).override(
        exporter=options.exporter, opset=options.opset, tolerance=options.tolerance,
        budget=options.budget_points, calibration=options.calibration_method)
    for module in ("torch", "transformers", "onnx", "onnxscript"):
        require(module, purpose="exporting a model")
    output = Path(output)
    exists = BundleExistsError(f"{output} already exists.", hint="Choose another --output or pass --force to replace it.")
    if output.exists() and not options.force:
        raise exists
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with progress.stage("Loading the checkpoint"):
        loaded = load_source(source, spec_ref, options)
    spec = _apply_recipe(loaded.spec, recipe)
    options = replace(options, display=_display_texts(options, source, spec))  # checked before the build
    timings["load"] = time.perf_counter() - start

    with staged_directory(output, replace=options.force, exists_error=exists) as staging, \
            tempfile.TemporaryDirectory(prefix="edgemm-export-") as work, progress.steps():
        manifest, parity = _build(loaded.module, spec, loaded.source, staging, Path(work), recipe, options, timings)
    timings["total"] = time.perf_counter() - start
    return ExportReport(bundle=output, manifest=manifest, parity=parity, timings={k: round(v, 3) for k, v in timings.items()},
                        warnings=list(manifest.validation.get("warnings", [])))


def _display_texts(options: ExportOptions, source: Path | None, spec: ExportSpec) -> dict[str, Any] | None:
    """The display texts for the manifest (``--display``, else the checkpoint's display.json),
    checked against the model's labels; None when there are none.

    Raises:
        DisplayError: They leave out a label, name one the model lacks, or are not plain short text.
    """
    data = options.display if options.display is not None else read_checkpoint_display(source)
    if data is None:
        return None
    if options.display is None:
        log.info("display texts from %s", Path(source or ".") / DISPLAY_FILE)
    return Display.from_dict(data, list(spec.labels)).to_dict()


def _apply_recipe(spec: ExportSpec, recipe: Recipe) -> ExportSpec:
    """The recipe's opset, parity tolerance and axis limits applied to the model's spec."""
    changes: dict[str, Any] = {}
    if recipe.export.opset is not None:
        changes["opset"] = recipe.export.opset
    if recipe.parity is not None:
        changes["tolerance"] = recipe.parity
    limits = {"batch": recipe.limits.max_batch, "seq": recipe.limits.max_seq}
    ranges = dict(spec.axis_ranges)
    for axis, limit in limits.items():
        if limit and axis in ranges:
            low, _ = ranges[axis]
            ranges[axis] = (low, max(low, int(limit)))
    if ranges != spec.axis_ranges:
        changes["axis_ranges"] = ranges
        changes["parity_cases"] = [_clamp(case, ranges) for case in spec.parity_cases]
        changes["export_case"] = _clamp(spec.export_case, ranges)
    return replace(spec, **changes) if changes else spec


def _clamp(case: ShapeCase, ranges: dict[str, tuple[int, int]]) -> ShapeCase:
    sizes = {axis: min(size, ranges[axis][1]) if axis in ranges else size for axis, size in case.sizes.items()}
    absent = {m: tuple(r for r in rows if r < sizes.get("batch", 1)) for m, rows in case.absent.items()}
    return ShapeCase(case.name, sizes, absent)


def _build(module: Any, spec: ExportSpec, source: dict[str, Any], staging: Path, work: Path, recipe: Recipe,
           options: ExportOptions, timings: dict[str, float]) -> tuple[Manifest, dict[str, Any]]:
    for rel, data in spec.assets.items():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    t = time.perf_counter()
    progress.step("Exporting to ONNX")
    # The contract before export: forward()'s signature, and one PyTorch run at the export shape
    # whose outputs must have the declared shapes and dtypes and fit the postprocessing and labels.
    plan = plan_forward(module, spec)
    user = UserCode(module)
    built_in = {case.name: case_feed(spec, case, staging) for case in built_in_cases(spec)}
    export_feed = built_in[spec.export_case.name]
    probe = run_forward(module, plan, export_feed, case=spec.export_case.name, user=user)
    check_outputs(spec, export_feed, probe, case=spec.export_case.name)
    check_postprocessing(spec, probe, case=spec.export_case.name)
    exported = onnx_from_torch(module, spec, export_feed, staging / FP32_PATH, exporter=recipe.export.exporter,
                               external_data_threshold=options.external_data_threshold, plan=plan)
    if not options.allow_tracer_warnings:
        refuse_tracer_hazards(exported.tracer_hazards)
    for hazard in exported.tracer_hazards:
        log.warning("tracer warning accepted (--allow-tracer-warnings): %s", hazard.describe())
    timings["export"] = time.perf_counter() - t

    t = time.perf_counter()
    progress.step("Checking parity with PyTorch")
    data, data_spec = _held_out_data(options, source)
    sources = parity_inputs(spec, staging, data=data, data_spec=data_spec, built_in=built_in)
    references: dict[str, dict[str, np.ndarray]] = {}
    for item in progress.track(sources.feeds, label="PyTorch runs"):
        references[item.name] = run_forward(module, plan, item.feed, case=item.name, user=user)
        check_outputs(spec, item.feed, references[item.name], case=item.name)
        check_postprocessing(spec, references[item.name], case=item.name)
    warnings = activation_warnings(spec, list(references.values()))
    for warning in warnings:
        log.warning("%s", warning)
    inputs, outputs = spec.with_profiles()

    def parity_of(path: Path) -> tuple[dict[str, Any], list[OutputComparison]]:
        backend = OrtBackend(path, inputs, outputs, device="cpu", optimization="disable").activate()
        results: list[OutputComparison] = []
        for item in progress.track(sources.feeds, label="ONNX Runtime runs"):
            results.extend(compare_all(item.name, references[item.name], backend.run(item.feed),
                                       spec.tolerance, classify_outputs=spec.classifying_outputs))
        backend.deactivate()
        return {**summarize(results), "sources": sources.sources}, [r for r in results if not r.passed]

    parity, failures = parity_of(exported.path)
    timings["parity"] = time.perf_counter() - t
    _raise_on_mismatch("ONNX output", failures, parity, options, sources)

    artifacts = [Artifact(
        name="fp32", path=FP32_PATH, kind="onnx", precision="fp32",
        files=[p.relative_to(staging).as_posix() for p in exported.files],
        providers=["CPUExecutionProvider", "CUDAExecutionProvider"],
        requirements={"graph_optimized": False},
        validation={"parity": {k: v for k, v in parity.items() if k != "comparisons"}, "tolerance": spec.tolerance.to_dict()},
    )]
    validation: dict[str, Any] = {"reference": "pytorch", "tolerance": spec.tolerance.to_dict(), "parity": parity,
                                  "mismatch_accepted": bool(failures), "forward": plan.describe(),
                                  "tracer_warnings": [h.to_record() for h in exported.tracer_hazards],
                                  "warnings": warnings}

    bases = {"plain": exported.path}
    base_info: dict[str, dict[str, Any]] = {}
    if recipe.optimize.graph:
        from edgemm.optimize.graph import optimize_graph

        t = time.perf_counter()
        progress.step("Optimizing the graph")
        optimized = work / "fp32-optimized.onnx"
        base_info["optimized"] = optimize_graph(exported.path, optimized, spec.encoders)
        opt_parity, opt_failures = parity_of(optimized)
        base_info["optimized"]["parity"] = {k: v for k, v in opt_parity.items() if k != "comparisons"}
        _raise_on_mismatch("The ORT-optimized graph", opt_failures, opt_parity, options, sources)
        bases["optimized"] = optimized
        validation["optimization"] = base_info["optimized"]
        timings["optimize"] = time.perf_counter() - t

    if recipe.variants:
        t = time.perf_counter()
        progress.step("Building precision variants")
        artifacts += _variants(spec, staging, bases, base_info, recipe, validation,
                               lambda path: parity_of(path)[0], data, data_spec)
        timings["variants"] = time.perf_counter() - t

    progress.step("Recording the golden set")
    golden = _golden_set(module, spec, staging, options.golden_size)
    for art in artifacts:
        with make_backend(staging, art, inputs, outputs, compile_cache=False) as backend:
            golden.artifacts[art.name] = backend.run_reference(golden.feed)
        if art.name != "fp32":
            # Variants are checked against their own outputs, with room for their precision.
            art.validation.setdefault("tolerance", Tolerance.for_precision(art.precision).to_dict())
    record_labels(golden, spec)  # a label list changed after export then fails the golden check
    golden.save(staging / GOLDEN_FILE)

    manifest = Manifest(
        name=spec.name,
        task=spec.task,
        modalities=spec.modalities,
        inputs=inputs,
        outputs=outputs,
        preprocessing=spec.preprocessing,
        postprocessing=spec.postprocessing,
        artifacts=artifacts,
        labels=list(spec.labels),
        created_by={**_created_by(spec, exported.exporter), "recipe": recipe.name},
        source={**source, "family": spec.family, **({"zero_shot": spec.zero_shot} if spec.zero_shot else {})},
        validation=validation,
        golden=GOLDEN_FILE,
        display=options.display or {},
    )
    engine_skip = _engine_skip_reason(recipe)
    if engine_skip is not None:
        manifest.validation["tensorrt"] = {"skipped": engine_skip}
        log.info("TensorRT engines not built: %s", engine_skip)
    write_manifest(staging, manifest)

    # Self-check: the bundle verifies and every artifact reproduces the golden set via the runtime.
    t = time.perf_counter()
    progress.step("Verifying the bundle")
    verified = verify_bundle(staging)
    for art in artifacts:
        check_golden(staging, verified, art.name)
    timings["verify"] = time.perf_counter() - t
    if recipe.tensorrt.build and engine_skip is None:
        t = time.perf_counter()
        progress.step("Building TensorRT engines")
        verified = _build_engines(staging, verified, recipe)
        timings["tensorrt"] = time.perf_counter() - t
    return verified, parity


def _engine_skip_reason(recipe: Recipe) -> str | None:
    """Why this export does not build the recipe's TensorRT engines (None: it does). Never a fake engine."""
    if not recipe.tensorrt.build:
        return None
    from edgemm.runtime.trt_compat import probe_host

    host = probe_host()
    later = f"build them on the device: edgemm build-engine BUNDLE --target {recipe.name}"
    if host.tensorrt is None or host.compute_capability is None:
        return f"{'; '.join(host.problems) or 'TensorRT or a CUDA GPU is missing'} on the export machine; {later}"
    device = recipe.tensorrt.device
    if device == "jetson" and not host.is_jetson:
        return f"engines are device-specific and this recipe targets a Jetson, but this machine is not one; {later}"
    if device == "desktop" and host.is_jetson:
        return f"this recipe targets desktop GPUs, but this machine is a Jetson; {later}"
    return None


def _build_engines(staging: Path, manifest: Manifest, recipe: Recipe) -> Manifest:
    """Build the recipe's engines into the staging bundle; a failure is recorded, not fatal to the export."""
    from edgemm.errors import EdgemmError
    from edgemm.tensorrt.build import import_tensorrt
    from edgemm.tensorrt.bundle_engines import ENGINE_DIR, add_engines, requests_from_recipe

    try:
        requests = requests_from_recipe(recipe.tensorrt, manifest, str(import_tensorrt().__version__),
                                        workspace_mb=recipe.limits.workspace_mb)
        reports = add_engines(staging, requests, in_place=True)
        manifest = verify_bundle(staging)
        manifest.validation["tensorrt"] = {"built": reports}
    except EdgemmError as exc:
        log.warning("TensorRT engines failed, the bundle ships without them: %s", exc.message)
        manifest = verify_bundle(staging, check_hashes=False)
        manifest.artifacts = [a for a in manifest.artifacts if a.kind != "tensorrt"]
        shutil.rmtree(staging / ENGINE_DIR, ignore_errors=True)
        manifest.validation["tensorrt"] = {"failed": exc.message, "hint": exc.hint}
    manifest.files = []
    write_manifest(staging, manifest)
    return verify_bundle(staging)


def _raise_on_mismatch(what: str, failures: list[OutputComparison], parity: dict[str, Any],
                       options: ExportOptions, sources: ParityInputs) -> None:
    if failures and not options.allow_mismatch:
        lines = [f"{r.case}/{r.output}: " + "; ".join(r.reasons) for r in failures]
        total = len(parity["comparisons"])
        origin = {item.name: item.source for item in sources.feeds}
        failed = {origin.get(r.case, "built_in") for r in failures}
        if "built_in" in failed:
            hint = "Inspect the model for shape-dependent code (e.g. a traced Reshape)"
        else:
            kinds = " and ".join(k.replace("_", " ") for k in ("real_records", "randomized") if k in failed)
            hint = (f"The graph matches PyTorch on the built-in shapes but not on {kinds} inputs: forward() takes a "
                    "path there that the trace did not record (a Python branch on a tensor's value, which "
                    "--exporter legacy records as a tracer warning); compute both paths and pick with torch.where")
        raise ParityError(
            f"{what} differs from PyTorch in {len(failures)} of {total} comparisons:\n  " + "\n  ".join(lines),
            hint=hint + "; --allow-mismatch records and accepts it.",
            details={"failures": [r.to_dict() for r in failures]},
        )


def _held_out_data(options: ExportOptions, source: dict[str, Any]) -> tuple[Any, str | None]:
    """The held-out dataset (``--eval-data``, else the one the checkpoint was trained on), or None.

    ``--eval-data`` that cannot be read is an error; training data that is gone only means
    parity runs without real records (logged).
    """
    from edgemm.data.resolve import resolve_dataset

    if options.eval_data:
        return resolve_dataset(options.eval_data), options.eval_data
    trained_on = source.get("training", {}).get("data")
    if not trained_on:
        return None, None
    try:
        return resolve_dataset(trained_on), trained_on
    except EdgemmError as exc:
        log.warning("the data %s was trained on cannot be read (%s): parity runs without real records",
                    trained_on, exc.message)
        return None, None


def _variants(spec: ExportSpec, staging: Path, bases: dict[str, Path], base_info: dict[str, dict[str, Any]],
              recipe: Recipe, validation: dict[str, Any], parity_check: Any, dataset: Any,
              data_spec: str | None) -> list[Artifact]:
    """Evaluate, gate, repair and fall back every variant of the recipe."""
    from edgemm.data.evalset import EvalSet
    from edgemm.optimize.gate import run_artifact
    from edgemm.optimize.variants import VariantContext, build_variants, edge_feeds

    if spec.task not in ("classification", "matching", "zero_shot_classification", "token_classification"):
        raise UsageError(f"The accuracy gate measures classification tasks; {spec.task} has no variants yet.",
                         hint="Use --target default for this model.")
    if dataset is None:
        raise UsageError(
            f"Recipe {recipe.name!r} builds reduced-precision variants, and every one must pass the accuracy gate "
            "on held-out data — but there is none.",
            hint="Pass --eval-data (digit-match, or a .jsonl/.csv dataset with test and calibration splits), "
                 "or use --target default.",
        )
    dataset.check_task(spec.task)
    dataset.check_labels(spec.labels)
    test = dataset.require_split("test", minimum=MIN_EVAL_RECORDS, purpose="the accuracy gate")
    calibration = dataset.require_split("calibration", minimum=MIN_CALIBRATION_RECORDS, purpose="INT8 calibration")
    calibration = calibration[: recipe.calibration.samples]
    required = {m for m, info in spec.modality_specs().items() if info.required}
    modalities = [m for m in spec.modalities if m in dataset.modalities or m not in required]
    missing = sorted(required - set(dataset.modalities))
    if missing:
        from edgemm.data.dataset import DatasetError

        raise DatasetError(f"The evaluation data has no {', '.join(missing)}, which the model requires.",
                           hint="Give --eval-data with every required modality.")
    preprocessor = Preprocessor(staging, spec.preprocessing, spec.modalities)
    provenance = {"data": data_spec, "source": dataset.source, "fingerprint": dataset.fingerprint()}
    evalset = EvalSet.build(test, spec.labels, preprocessor, modalities, {**provenance, "split": "test"})
    calibration_feeds = EvalSet.build(calibration, spec.labels, preprocessor, modalities, provenance, batch_size=8,
                                      fixed_shapes=True).feeds
    output = spec.primary_output
    fp32_outputs = run_artifact(bases["plain"], evalset.feeds, output)
    rate = spec.preprocessing.get("audio", {}).get("sampling_rate")
    ctx = VariantContext(staging=staging, bases=bases, base_info=base_info, output=output, evalset=evalset,
                         fp32_outputs=fp32_outputs, calibration_feeds=calibration_feeds,
                         edge_feeds=edge_feeds(preprocessor, spec.modalities, rate=rate),
                         recipe=recipe, parity_check=parity_check, modalities=tuple(spec.modalities))
    from edgemm.data.metrics import classification_metrics

    artifacts = build_variants(ctx)
    validation["gate"] = {
        "metric": ctx.recipe.gate.metric,
        "budget_points": ctx.recipe.gate.budget,
        "eval": {**evalset.source, "records": len(evalset)},
        "calibration": {"records": len(calibration), "method": ctx.recipe.calibration.method},
        "fp32": classification_metrics(evalset.labels, fp32_outputs),
        "variants": ctx.reports,
    }
    if recipe.split is not None:
        from edgemm.optimize.split import split_variant

        with progress.stage("Split variant"):
            artifacts += split_variant(ctx, artifacts, spec, validation)
    return artifacts


def _golden_set(module: Any, spec: ExportSpec, staging: Path, size: int) -> GoldenSet:
    """Raw inputs at natural sizes, their runtime feed, and PyTorch's outputs for them."""
    sizes = {axis: min(size, spec.axis_ranges[axis][1]) for axis in ("batch", "text_batch") if axis in spec.axis_ranges}
    rows = sizes.get("batch", size)
    case = ShapeCase("golden", sizes, absent={m: (rows - 1,) for m, info in spec.modality_specs().items()
                                              if not info.required and rows > 1})
    if spec.make_feed is not None:
        feed = case_feed(spec, case, staging, seed=7)
        return GoldenSet(raw={}, feed=feed, expected=run_torch(module, spec, feed))
    raw = raw_batch(spec, case, seed=7)
    # Golden images share one size so they stack into one array.
    if "image" in raw:
        from edgemm.data.synthetic import synthesize_image

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
