"""Add TensorRT engines to a bundle: plan, build (or reuse the cache), check against the golden set,
re-hash and swap in atomically.

Used by ``edgemm build-engine BUNDLE`` on the device and by ``edgemm export`` when the recipe asks
for engines and TensorRT is present. The bundle is never edited in place: a staging copy gets the
engine, its new manifest and golden outputs, is verified, and only then replaces the original.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edgemm.bundle.compare import Tolerance, compare_all
from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import ENGINE_KIND, Artifact, Manifest
from edgemm.bundle.verify import verify_bundle, verify_hashes
from edgemm.bundle.writer import write_manifest
from edgemm.errors import GoldenSetError, UsageError
from edgemm.recipes import TensorRTSection
from edgemm.runtime.trt_compat import (
    CompatPolicy,
    HostInfo,
    cache_root,
    check_engine,
    host_record,
    probe_host,
)
from edgemm.staging import staged_directory
from edgemm.tensorrt.plan import BuildOptions, BuildPlan, make_plan
from edgemm.tensorrt.profiles import build_profiles

log = logging.getLogger("edgemm.tensorrt")
ENGINE_DIR = "engines"


@dataclass
class EngineRequest:
    """One engine to add: from which ONNX artifact, with which options and profiles."""

    source: str
    options: BuildOptions = field(default_factory=BuildOptions)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    name: str | None = None

    @property
    def engine_name(self) -> str:
        """The engine's artifact name: the one asked for, else ``trt-<source artifact>``."""
        return self.name or engine_name_for(self.source)


def engine_name_for(source: str) -> str:
    """The default artifact name of the engine built from ``source``."""
    return f"trt-{source}"


def default_source(manifest: Manifest) -> str:
    """The ONNX artifact to build from when none is named: fp16, else Q/DQ INT8, else fp32 (plain graphs)."""
    plain = [a for a in manifest.artifacts if a.kind == "onnx" and not a.graph_optimized]
    for precision, method in (("fp16", None), ("int8", "int8-static-qdq"), ("fp32", None)):
        for art in plain:
            if art.precision == precision and (method is None or (art.quantization or {}).get("method") == method):
                return art.name
    raise UsageError("The bundle has no plain ONNX artifact TensorRT can build from.",
                     hint="Export with --target jetson-orin-nano (plain graphs, fp16 and Q/DQ INT8).")


def plan_engine(manifest: Manifest, request: EngineRequest, tensorrt_version: str, *, jetson: bool) -> BuildPlan:
    """The build plan for ``request`` (no TensorRT needed)."""
    artifact = manifest.artifact(request.source)
    profiles = build_profiles(manifest.inputs, request.profiles or None)
    return make_plan(artifact, tensorrt_version, profiles, request.options, jetson=jetson)


def source_for_precision(manifest: Manifest, precision: str, tensorrt_version: str) -> str:
    """Which ONNX artifact an engine of ``precision`` is built from, per regime.

    TensorRT 10 builds FP16 from the fp32 graph with the FP16 flag (LayerNorm pinned by
    constraints); TensorRT 11 has no such flag and builds from the fp16 graph. INT8 is always the
    Q/DQ graph.
    """
    major = int(tensorrt_version.split(".")[0])
    plain = [a for a in manifest.artifacts if a.kind == "onnx" and not a.graph_optimized]
    if precision == "int8":
        wanted = [a for a in plain if (a.quantization or {}).get("method") == "int8-static-qdq"]
    elif precision == "fp16" and major >= 11:
        wanted = [a for a in plain if a.precision == "fp16"]
    elif precision in ("fp16", "fp32"):
        wanted = [a for a in plain if a.precision == "fp32"]
    else:
        raise UsageError(f"Unknown engine precision {precision!r}.", hint="Choose fp32, fp16 or int8.")
    if not wanted:
        need = {"int8": "a Q/DQ INT8 artifact", "fp16": "an fp16 artifact" if major >= 11 else "a plain fp32 artifact",
                "fp32": "a plain fp32 artifact"}[precision]
        raise UsageError(f"A {precision} engine with TensorRT {tensorrt_version} is built from {need}; the bundle has none.",
                         hint="Export with a jetson-* recipe (plain graphs, fp16 and Q/DQ INT8 variants).")
    return wanted[0].name


def requests_from_recipe(section: TensorRTSection, manifest: Manifest, tensorrt_version: str, *,
                         workspace_mb: int | None = None,
                         overrides: dict[str, Any] | None = None) -> list[EngineRequest]:
    """Engine requests from a recipe's ``[tensorrt]`` section plus ``edgemm build-engine``'s options.

    The section's ``precisions`` name engine precisions (the source artifact follows from the
    TensorRT regime, see :func:`source_for_precision`); its ``artifacts`` name ONNX artifacts to
    build from instead (default: the best plain one). ``[limits] workspace_mb`` bounds the
    builder's memory pool.

    Args:
        section: The recipe's ``[tensorrt]`` section (an empty one without ``--target``).
        manifest: The bundle's manifest.
        tensorrt_version: The TensorRT the engines are planned for.
        workspace_mb: The recipe's ``[limits] workspace_mb``.
        overrides: CLI values (None: not given): ``artifacts``, ``precisions``, ``profiles``,
            ``name`` and any :class:`BuildOptions` field; they win over the recipe's.

    Raises:
        UsageError: ``name`` given for several engines, or no source artifact fits.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    precisions = overrides.pop("precisions", None)
    sources = overrides.pop("artifacts", None)
    named: list[tuple[str, str | None, str | None]] = []  # (source artifact, engine name, precision)
    if sources:
        named = [(s, None, None) for s in sources]
    elif precisions or (section.precisions and not section.artifacts):
        named = [(source_for_precision(manifest, p, tensorrt_version), f"trt-{p}", p)
                 for p in (precisions or section.precisions)]
    else:
        named = [(s, None, None) for s in (section.artifacts or [default_source(manifest)])]
    profiles = overrides.pop("profiles", None) or list(section.profiles)
    name = overrides.pop("name", None)
    values = section.build_options()
    if workspace_mb is not None:
        values["workspace_mb"] = workspace_mb
    option_fields = {f.name for f in dataclasses.fields(BuildOptions)}
    values.update({k: v for k, v in overrides.items() if k in option_fields})
    if name and len(named) > 1:
        raise UsageError("--name applies to one engine; name one --artifact.")
    return [EngineRequest(source=s, options=BuildOptions(**{**values, **({"precision": p} if p else {})}),
                          profiles=profiles, name=name or default_name)
            for s, default_name, p in named]


def timing_cache_path(host: HostInfo) -> Path:
    """This machine's timing cache: valid only for one TensorRT version on one GPU type."""
    cc = (host.compute_capability or "unknown").replace(".", "")
    return cache_root() / "tensorrt" / f"timing-trt{host.tensorrt}-sm{cc}.cache"


def add_engines(bundle: Path, requests: list[EngineRequest], *, rebuild: bool = False, use_cache: bool = True,
                timing_cache: Path | None = None, host: HostInfo | None = None,
                progress: IO[str] | None = None, in_place: bool = False) -> list[dict[str, Any]]:
    """Build the requested engines into ``bundle`` and return one report per engine.

    An engine already in the bundle whose record matches this machine and whose cache key is
    unchanged is kept (``"outcome": "up to date"``). One that is stale or mismatched is rebuilt
    only with ``rebuild`` — otherwise this raises, so a rebuild is always asked for.

    Args:
        bundle: A bundle directory (verified first).
        requests: What to build.
        rebuild: Replace engines that exist (stale, mismatched or not).
        use_cache: Reuse an engine from this machine's engine cache when its cache key matches.
        timing_cache: Timing cache file (default: this machine's, per TensorRT version and GPU).
        host: This machine (probed when omitted).
        progress: Where build progress goes (stderr).
        in_place: Modify ``bundle`` directly (for export's own staging directory).

    Raises:
        MissingDependencyError: TensorRT is not installed (exit 3).
        UsageError: An engine exists and is out of date, without ``rebuild``.
        GoldenSetError: An engine does not reproduce the golden set within its tolerance (exit 4).
    """
    from edgemm.tensorrt.build import import_tensorrt

    trt = import_tensorrt()
    host = host or probe_host()
    if host.compute_capability is None:
        raise UsageError("No CUDA GPU is visible: engines are built on the device that runs them.",
                         hint="; ".join(host.problems) or "Run this on the Jetson / GPU machine.")
    manifest = verify_bundle(bundle)
    version = str(trt.__version__)
    if in_place:
        return _build_into(bundle, manifest, requests, version, host, rebuild=rebuild, use_cache=use_cache,
                           timing_cache=timing_cache, progress=progress)[0]
    try:
        with staged_directory(bundle, replace=True, copy_from=bundle) as work:
            reports, changed = _build_into(work, manifest, requests, version, host, rebuild=rebuild,
                                           use_cache=use_cache, timing_cache=timing_cache, progress=progress)
            if not changed:
                raise _Unchanged(reports)
    except _Unchanged as unchanged:  # every engine was up to date: the bundle is left untouched
        return unchanged.reports
    return reports


class _Unchanged(Exception):
    """Internal: abandon the staged copy, nothing needs publishing."""

    def __init__(self, reports: list[dict[str, Any]]):
        super().__init__("unchanged")
        self.reports = reports


def _build_into(work: Path, manifest: Manifest, requests: list[EngineRequest], version: str, host: HostInfo, *,
                rebuild: bool, use_cache: bool, timing_cache: Path | None,
                progress: IO[str] | None) -> tuple[list[dict[str, Any]], bool]:
    """Build the requested engines into the bundle directory ``work``; returns the reports and
    whether anything changed (the manifest is rewritten and re-verified if so)."""
    from edgemm.tensorrt.build import engine_from_onnx

    jetson = host.is_jetson
    reports: list[dict[str, Any]] = []
    golden = GoldenSet.load(work / manifest.golden) if manifest.golden else None
    changed = False
    for request in requests:
        plan = plan_engine(manifest, request, version, jetson=jetson)
        source = manifest.artifact(request.source)
        verify_hashes(work, manifest, list(source.files))
        source_sha = next(f.sha256 for f in manifest.files if f.path == source.path)
        key = plan.cache_key(source_sha, host.compute_capability)
        name = request.engine_name
        existing = next((a for a in manifest.artifacts if a.name == name), None)
        if existing is not None:
            if existing.kind != ENGINE_KIND:
                raise UsageError(f"Artifact {name!r} exists and is not an engine.", hint="Pass another --name.")
            decision = check_engine(existing.requirements, host, CompatPolicy())
            same = existing.built_with.get("cache_key") == key
            if decision.ok and same and not rebuild:
                reports.append({"engine": name, "outcome": "up to date", "cache_key": key})
                continue
            if not rebuild:
                state = decision.summary() if not decision.ok else "built with other options"
                raise UsageError(f"Engine {name!r} is already in the bundle ({state}).",
                                 hint="Pass --rebuild to replace it (a build takes minutes on a Jetson).")
        rel = f"{ENGINE_DIR}/{name}.plan"
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        cached = cache_root() / "tensorrt" / "engines" / f"{key}.plan"
        started = time.perf_counter()
        if use_cache and cached.is_file():
            shutil.copyfile(cached, target)
            built = {"outcome": "from cache", "seconds": 0.0, "gate": {"findings": [], "waived": False},
                     "layernorm_layers": []}
        else:
            result = engine_from_onnx(work / source.path, plan, target, progress_stream=progress,
                                      timing_cache=timing_cache or timing_cache_path(host))
            built = {"outcome": "built", "seconds": result.seconds, "gate": result.gate,
                     "layernorm_layers": result.layernorm_layers}
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target, cached)
        artifact = Artifact(
            name=name, path=rel, kind=ENGINE_KIND, precision=plan.precision, files=[rel], providers=[],
            quantization=source.quantization,
            requirements={**host_record(host), "built_with": {
                **plan.to_dict(), "cache_key": key, "source_sha256": source_sha, "plugins": [],
                "serialized_plugin_libraries": [], "fp16_gate": built["gate"],
                "layernorm_layers_pinned": len(built["layernorm_layers"]),
            }},
            validation={"tolerance": Tolerance.for_precision(plan.precision, engine=True).to_dict()},
        )
        if golden is not None:
            artifact.validation["golden"] = _golden_check(work, manifest, artifact, source, golden, host)
        manifest.artifacts = [a for a in manifest.artifacts if a.name != name] + [artifact]
        changed = True
        reports.append({"engine": name, "path": rel, "precision": plan.precision, "regime": plan.regime,
                        "cache_key": key, "seconds": round(time.perf_counter() - started, 2), **built})
    if changed:
        if golden is not None:
            golden.save(work / manifest.golden)
        manifest.files = []
        write_manifest(work, manifest)
        verify_bundle(work)
    return reports, changed


def _golden_check(root: Path, manifest: Manifest, engine: Artifact, source: Artifact, golden: GoldenSet,
                  host: HostInfo) -> dict[str, Any]:
    """Run the new engine on the golden feed; it must match the source artifact's recorded outputs."""
    from edgemm.runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(root / engine.path, manifest.inputs, manifest.outputs)
    with backend:
        outputs = backend.run(golden.feed)
    reference = golden.artifacts.get(source.name, golden.expected)
    tolerance = Tolerance.for_precision(engine.precision, engine=True)
    results = compare_all("golden", reference, outputs, tolerance, classify_outputs=manifest.classifying_outputs)
    if not all(r.passed for r in results):
        failed = [f"{r.output}: {'; '.join(r.reasons)}" for r in results if not r.passed]
        raise GoldenSetError(f"Engine {engine.name!r} differs from artifact {source.name!r} on the golden set: "
                             + "; ".join(failed) + ".",
                             hint="Build from the fp32 artifact, keep LayerNorm in FP32, or check the build log.",
                             details={"outputs": [r.to_dict() for r in results]})
    golden.artifacts[engine.name] = outputs
    return {"passed": True, "against": source.name, "outputs": [r.to_dict() for r in results]}
