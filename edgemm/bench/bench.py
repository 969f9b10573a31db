"""``edgemm bench``: one run, same machine, same inputs, edgemm artifacts and peers side by side."""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bench.accuracy import accuracy_drift, golden_evalset
from edgemm.bench.coldstart import measure as cold_start
from edgemm.bench.contenders import EdgemmContender
from edgemm.bench.machine import fingerprint, machine_id
from edgemm.bench.runner import Measurement, TimingOptions, run_interleaved
from edgemm.bundle.manifest import Manifest
from edgemm.bundle.verify import verify_bundle
from edgemm.errors import (
    BackendUnavailableError,
    CheckFailedError,
    MissingDependencyError,
    UsageError,
)

log = logging.getLogger("edgemm.bench")

SCHEMA = "edgemm.bench/1"
PEERS_CPU = ("torch-eager", "torch-compile", "optimum")
PEERS_GPU = ("torch-eager", "torch-eager-fp16", "torch-compile", "optimum")


@dataclass
class BenchConfig:
    """What ``edgemm bench`` measures (CLI options end up here)."""

    bundle: Path
    artifacts: tuple[str, ...] | None = None
    device: str = "cpu"
    timing: TimingOptions = field(default_factory=TimingOptions)
    peers: tuple[str, ...] | None = None          # None: every peer this machine can run
    checkpoint: Path | None = None                # default: the manifest's source path
    threads: int | None = None
    cold_start: bool = True
    cold_runs: int = 3
    accuracy: bool = True
    eval_data: str | None = None
    eval_limit: int = 1000
    max_p99_ms: float | None = None
    cuda_graphs: bool = True
    telemetry: bool = True
    targets: dict[str, float] = field(default_factory=dict)
    suite: str | None = None


@dataclass
class BenchReport:
    """The whole result (serialised as schema ``edgemm.bench/1``)."""

    document: dict[str, Any]

    @property
    def budget_failures(self) -> list[str]:
        """Latency budgets that were exceeded (``--max-p99-ms`` …), one line each; empty when all held."""
        return self.document.get("budgets", {}).get("failures", [])


def run_bench(config: BenchConfig) -> BenchReport:
    """Run the benchmark described by ``config``.

    Raises:
        InputPathError / BundleError: The bundle is missing or invalid.
        UsageError: Unknown artifact or peer, batch or sequence outside the artifacts' profiles.
        BackendUnavailableError: ``cuda`` requested where ONNX Runtime has no CUDA provider.
    """
    bundle = Path(config.bundle)
    manifest = verify_bundle(bundle)
    _check_request(config, manifest)
    machine = fingerprint()
    names = _artifacts(config, manifest)
    contenders: list[Any] = [_edgemm_contender(config, bundle, manifest, name) for name in names]
    peer_notes: list[str] = []
    peers = _peers(config, bundle, manifest, peer_notes)
    everyone = contenders + peers
    evalset, data_note = _evalset(config, bundle, manifest)
    inputs = _input_maker(bundle, manifest, evalset_records=data_note.get("records"))
    sampler = _sampler(config, peer_notes)

    log.info("timing %s", ", ".join(c.name for c in everyone))
    try:
        measurements = run_interleaved(everyone, inputs, config.timing, sampler=sampler)
    finally:
        if sampler is not None:
            sampler.close()
    accuracy: list[dict[str, Any]] = []
    if config.accuracy and evalset is not None:
        reference = next((c for c in contenders if c.info.get("artifact") == "fp32"), None) or \
            EdgemmContender(bundle, "fp32", device=config.device, threads=config.threads)
        accuracy = accuracy_drift(everyone, evalset, reference)
    cold: list[dict[str, Any]] = []
    if config.cold_start:
        cold = _cold_starts(config, bundle, manifest, peers)
    flops = _flops(bundle, manifest, measurements, inputs, machine)
    for c in everyone:
        c.close()

    document = {
        "schema": SCHEMA,
        "suite": config.suite,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine, "id": machine_id(machine)},
        "bundle": {"path": str(bundle), "name": manifest.name, "task": manifest.task,
                   "recipe": manifest.created_by.get("recipe"), "artifacts": [a.name for a in manifest.artifacts]},
        "config": {"device": config.device, "threads": config.threads, "batch_sizes": list(config.timing.batch_sizes),
                   "seq_lens": list(config.timing.seq_lens), "warmup": config.timing.warmup,
                   "iterations": config.timing.iterations, "rounds": config.timing.rounds,
                   "duration_s": config.timing.duration_s, "modes": list(config.timing.modes),
                   "interleaved": True, "inputs": data_note.get("inputs"),
                   "telemetry": sampler.source if sampler is not None else None},
        "contenders": [{"name": c.name, "kind": c.kind, "precision": c.precision, "device": c.device, **c.info}
                       for c in everyone],
        "notes": peer_notes,
        "latency": [m.to_dict() for m in measurements],
        "accuracy": {"data": data_note.get("data"), "rows": accuracy},
        "cold_start": cold,
        "flops": flops,
    }
    document["ratios"] = ratios(document)
    document["targets"] = evaluate_targets(document, config.targets)
    document["budgets"] = _budgets(config, measurements, contenders)
    return BenchReport(document)


# -- set-up -----------------------------------------------------------------------------------


def _check_request(config: BenchConfig, manifest: Manifest) -> None:
    if config.device not in ("cpu", "cuda"):
        raise UsageError(f"Unknown device {config.device!r}.", hint="Choose cpu or cuda.")
    if config.device == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise BackendUnavailableError("--device cuda was asked for, but ONNX Runtime here has no CUDA provider.",
                                          hint="Install onnxruntime-gpu (pip install 'edgemm[gpu]') on a GPU machine.")
    limits = {axis: bounds for t in manifest.inputs for axis, bounds in t.profile.items()}
    for batch in config.timing.batch_sizes:
        low, _, high = limits.get("batch", [1, 1, 1 << 30])
        if not low <= batch <= high:
            raise UsageError(f"Batch size {batch} is outside the artifacts' profile {low}..{high}.",
                             hint=f"Choose batch sizes between {low} and {high} (the export recipe sets the maximum).")
    for seq in config.timing.seq_lens:
        if seq is not None and "seq" in limits and not limits["seq"][0] <= seq <= limits["seq"][2]:
            raise UsageError(f"Sequence length {seq} is outside the profile {limits['seq'][0]}..{limits['seq'][2]}.")
        if seq is not None and "seq" not in limits:
            raise UsageError("--seq-lens was given but this model takes no text sequence.")
    if config.timing.iterations < 1 or config.timing.rounds < 1:
        raise UsageError("iterations and rounds must be at least 1.")


def _artifacts(config: BenchConfig, manifest: Manifest) -> list[str]:
    provider = "CUDAExecutionProvider" if config.device == "cuda" else "CPUExecutionProvider"
    runnable = [a.name for a in manifest.artifacts if a.kind == "onnx" and provider in a.providers
                and not a.gate_failed]
    if not config.artifacts:
        if not runnable:
            raise BackendUnavailableError(f"No artifact of this bundle runs on {config.device}.",
                                          hint="Benchmark on the device the bundle was exported for.")
        return runnable
    for name in config.artifacts:
        manifest.artifact(name)  # raises with the valid names
        if name not in runnable:
            raise BackendUnavailableError(f"Artifact {name!r} does not run on {config.device}.",
                                          hint=f"Runnable here: {', '.join(runnable)}.")
    return list(config.artifacts)


def _edgemm_contender(config: BenchConfig, bundle: Path, manifest: Manifest, name: str) -> Any:
    if config.device == "cuda":
        from edgemm.bench.iobinding import IOBindingContender

        return IOBindingContender(bundle, manifest, name, device="cuda", cuda_graphs=config.cuda_graphs)
    return EdgemmContender(bundle, name, device=config.device, threads=config.threads)


def _checkpoint(config: BenchConfig, manifest: Manifest) -> Path | None:
    if config.checkpoint is not None:
        return config.checkpoint
    path = manifest.source.get("path")
    if not path or not Path(path).is_dir():
        return None
    folder = Path(path)
    if manifest.source.get("kind") == "fusion":
        return folder
    # A Hugging Face classifier directory: the peers run its own *For… class and processors.
    return folder if _transformers_classifier(folder) else None


# The Hugging Face heads the peers run as a transformers user would: one score per label per row.
PEER_HEADS = ("ForSequenceClassification", "ForImageClassification", "ForAudioClassification")


def _transformers_classifier(folder: Path) -> bool:
    """Whether ``folder``'s config.json names a classifier class the peers can run (read as
    JSON here: the bench core stays torch-free)."""
    try:
        names = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return bool(names) and isinstance(names[0], str) and names[0].endswith(PEER_HEADS)


def _peers(config: BenchConfig, bundle: Path, manifest: Manifest, notes: list[str]) -> list[Any]:
    requested = config.peers
    auto = requested is None
    if auto:
        requested = PEERS_GPU if config.device == "cuda" else PEERS_CPU
    if not requested:
        return []
    checkpoint = _checkpoint(config, manifest)
    import importlib.util

    try:
        installed = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
    except (ImportError, ValueError):  # an import hook that forbids them (the edge guard) counts as absent
        installed = False
    if not installed:
        if auto:
            notes.append("peers skipped: the export extra (torch, transformers, optimum) is not installed")
            return []
        raise MissingDependencyError("Peers need the export extra.", hint="pip install 'edgemm[export]'")
    from edgemm.bench.peers import make_peer
    if checkpoint is None:
        if auto:
            source = Path(manifest.source.get("path") or "")
            if source.name and (source / "config.json").is_file():
                notes.append(f"peers skipped: the PyTorch peers run Hugging Face classifiers (*{', *'.join(PEER_HEADS)}); "
                             f"{source.name} is not one")
            else:
                notes.append("peers skipped: the PyTorch checkpoint of this bundle is not available (--checkpoint)")
            return []
        raise UsageError("Peers need the PyTorch checkpoint.", hint="Pass --checkpoint DIR (what `edgemm train` wrote).")
    peers = []
    for name in requested:
        try:
            peers.append(make_peer(name, bundle=bundle, checkpoint=checkpoint, device=config.device, threads=config.threads))
        except (ImportError, MissingDependencyError) as exc:
            if not auto:
                raise
            notes.append(f"peer {name} skipped: {exc}")
    return peers


def _evalset(config: BenchConfig, bundle: Path, manifest: Manifest) -> tuple[Any, dict[str, Any]]:
    """Real labelled data when we know it (the raw inputs for timing come from it too), else the golden set."""
    from edgemm.data.evalset import EvalSet
    from edgemm.data.resolve import resolve_dataset
    from edgemm.runtime.preprocess.pipeline import Preprocessor

    spec = config.eval_data or manifest.source.get("training", {}).get("data")
    if spec:
        dataset = resolve_dataset(spec)
        dataset.check_labels(manifest.labels)
        records = dataset.split("test")[: config.eval_limit]
        if records:
            modalities = [m for m in manifest.modalities if m in dataset.modalities]
            preprocessor = Preprocessor(bundle, manifest.preprocessing, manifest.modalities)
            evalset = EvalSet.build(records, manifest.labels, preprocessor, modalities,
                                    {"data": spec, "split": "test", "records": len(records)})
            return evalset, {"data": {"source": spec, "split": "test", "records": len(records)},
                             "inputs": f"{spec} test split", "records": records, "modalities": modalities}
    return golden_evalset(bundle, manifest), {"data": {"source": "golden set", "labels": "fp32 predictions"},
                                              "inputs": "golden set", "records": None}


def _input_maker(bundle: Path, manifest: Manifest, *, evalset_records: list[Any] | None):
    """``(batch, seq) → (raw lists, feed)`` from real test records, or the golden set's raw inputs."""
    from edgemm.runtime.preprocess.pipeline import Preprocessor

    preprocessor = Preprocessor(bundle, manifest.preprocessing, manifest.modalities)
    if evalset_records:
        rows = [r.inputs(list(manifest.modalities)) for r in evalset_records]
    else:
        from edgemm.runtime.golden import load_golden

        golden = load_golden(bundle, manifest).raw_requests()
        count = len(next(iter(golden.values())))
        rows = [{m: golden[m][i] for m in golden} for i in range(count)]

    def make(batch: int, seq: int | None) -> tuple[dict[str, list[Any]], dict[str, np.ndarray]]:
        chosen = list(itertools.islice(itertools.cycle(rows), batch))
        raw = {m: [row.get(m) for row in chosen] for m in manifest.modalities}
        raw = {m: items for m, items in raw.items() if any(x is not None for x in items) or manifest.modality(m).required}
        return raw, preprocessor(raw, text_pad_to=seq)

    return make


def _sampler(config: BenchConfig, notes: list[str]) -> Any:
    if config.device != "cuda" or not config.telemetry:
        return None
    from edgemm.bench.telemetry import open_telemetry

    try:
        return open_telemetry()
    except BackendUnavailableError as exc:
        notes.append(f"GPU power/memory not recorded: {exc.message}")
        return None


def _cold_starts(config: BenchConfig, bundle: Path, manifest: Manifest, peers: list[Any]) -> list[dict[str, Any]]:
    from edgemm.runtime.predictor import choose_artifact

    best, _ = choose_artifact(manifest, config.device)
    rows = [cold_start("edgemm", bundle, artifact=best.name, device=config.device, threads=config.threads,
                       runs=config.cold_runs) | {"contender": f"edgemm:{best.name}"}]
    checkpoint = _checkpoint(config, manifest)
    for peer in peers:
        if peer.name in ("torch-eager", "optimum") and checkpoint is not None:
            rows.append(cold_start(peer.name, bundle, checkpoint=checkpoint, device=config.device, threads=config.threads,
                                   runs=config.cold_runs) | {"contender": peer.name})
    return rows


def _flops(bundle: Path, manifest: Manifest, measurements: list[Measurement], inputs: Any,
           machine: dict[str, Any]) -> dict[str, Any]:
    try:
        from edgemm.bench.flops import achieved, count_flops, fp16_peak_tflops
    except ImportError:
        return {}
    try:
        import onnx  # noqa: F401
    except ImportError:
        return {"note": "install onnx to count FLOPs"}
    fp32 = manifest.artifact("fp32")
    peak = fp16_peak_tflops(machine["gpus"][0]["name"]) if machine.get("gpus") else None
    per_shape: dict[tuple[int, int | None], float] = {}
    rows = []
    for m in measurements:
        if m.mode != "model" or m.error or not m.stats.get("n"):
            continue
        key = (m.batch, m.seq)
        if key not in per_shape:
            _, feed = inputs(m.batch, m.seq)
            per_shape[key] = count_flops(bundle / fp32.path, {k: v.shape for k, v in feed.items()})
        rows.append({"contender": m.contender, "batch": m.batch, "seq": m.seq, "gflops_per_batch": per_shape[key] / 1e9,
                     **achieved(per_shape[key], m.stats["p50_ms"], peak)})
    return {"peak_fp16_tflops": peak, "rows": rows}


# -- summaries --------------------------------------------------------------------------------


def _p50(document: dict[str, Any], contender: str, mode: str, batch: int) -> float | None:
    for row in document["latency"]:
        if row["contender"] == contender and row["mode"] == mode and row["batch"] == batch and row.get("seq") is None \
                and row.get("n"):
            return row["p50_ms"]
    return None


def best_edgemm(document: dict[str, Any], *, mode: str = "e2e", batch: int = 1, max_drop: float = 0.5) -> str | None:
    """The fastest edgemm contender at ``batch`` whose accuracy drop is within ``max_drop`` points."""
    drops = {r["contender"]: r.get("drop_points") for r in document["accuracy"]["rows"]}
    candidates = []
    for c in document["contenders"]:
        if c["kind"] != "edgemm":
            continue
        drop = drops.get(c["name"])
        if drop is not None and drop > max_drop:
            continue
        p50 = _p50(document, c["name"], mode, batch)
        if p50 is not None:
            candidates.append((p50, c["name"]))
    return min(candidates)[1] if candidates else None


def ratios(document: dict[str, Any]) -> dict[str, Any]:
    """Peer p50 ÷ best edgemm p50 (same mode, batch), and the cold-start / memory ratios."""
    out: dict[str, Any] = {"speedup": []}
    batches = sorted({row["batch"] for row in document["latency"]})
    for mode in ("e2e", "model"):
        for batch in batches:
            best = best_edgemm(document, mode=mode, batch=batch)
            if best is None:
                continue
            ours = _p50(document, best, mode, batch)
            for c in document["contenders"]:
                if c["kind"] != "peer":
                    continue
                theirs = _p50(document, c["name"], mode, batch)
                if theirs and ours:
                    out["speedup"].append({"mode": mode, "batch": batch, "edgemm": best, "peer": c["name"],
                                           "edgemm_p50_ms": ours, "peer_p50_ms": theirs, "ratio": theirs / ours})
    cold = {row["contender"]: row for row in document["cold_start"] if "error" not in row}
    ours = next((row for name, row in cold.items() if name.startswith("edgemm:")), None)
    torch_row = cold.get("torch-eager")
    if ours and torch_row:
        out["cold_start"] = {"edgemm_s": ours["total_s"], "torch_pipeline_s": torch_row["total_s"],
                             "ratio": torch_row["total_s"] / ours["total_s"],
                             "edgemm_peak_rss_mb": ours["peak_rss_mb"], "torch_peak_rss_mb": torch_row["peak_rss_mb"],
                             "rss_fraction": ours["peak_rss_mb"] / torch_row["peak_rss_mb"]}
    return out


_TARGETS = {
    "speedup_vs_torch_eager": ("≥", lambda r: _speedup(r, "torch-eager", "e2e")),
    "speedup_vs_optimum": ("≥", lambda r: _speedup(r, "optimum", "e2e")),
    "model_speedup_vs_torch_eager": ("≥", lambda r: _speedup(r, "torch-eager", "model")),
    "model_speedup_vs_torch_compile": ("≥", lambda r: _speedup(r, "torch-compile", "model")),
    "cold_start_s": ("≤", lambda r: r.get("cold_start", {}).get("edgemm_s")),
    "cold_start_speedup": ("≥", lambda r: r.get("cold_start", {}).get("ratio")),
    "rss_fraction": ("≤", lambda r: r.get("cold_start", {}).get("rss_fraction")),
}


def _speedup(r: dict[str, Any], peer: str, mode: str) -> float | None:
    return next((row["ratio"] for row in r["speedup"] if row["peer"] == peer and row["mode"] == mode and row["batch"] == 1),
                None)


def evaluate_targets(document: dict[str, Any], targets: dict[str, float]) -> list[dict[str, Any]]:
    """Measured vs target for each named target (met / missed / not measured)."""
    rows = []
    for name, goal in targets.items():
        if name == "model_b1_ms":
            best = best_edgemm(document, mode="model", batch=1)
            value, op = (_p50(document, best, "model", 1) if best else None), "≤"
        elif name == "fp16_peak_fraction":
            fractions = [r["fraction_of_peak"] for r in document["flops"].get("rows", [])
                         if r["contender"].startswith("edgemm:") and r.get("fraction_of_peak") is not None]
            value, op = (max(fractions) if fractions else None), "≥"
        elif name in _TARGETS:
            op, getter = _TARGETS[name]
            value = getter(document["ratios"])
        else:
            rows.append({"target": name, "goal": goal, "status": "unknown target"})
            continue
        status = "not measured" if value is None else (
            "met" if (value >= goal if op == "≥" else value <= goal) else "missed")
        rows.append({"target": name, "goal": f"{op} {goal}", "measured": value, "status": status})
    return rows


def _budgets(config: BenchConfig, measurements: list[Measurement], contenders: list[Any]) -> dict[str, Any]:
    if config.max_p99_ms is None:
        return {}
    ours = {c.name for c in contenders}
    failures = [f"{m.contender} batch {m.batch} {m.mode}: p99 {m.stats['p99_ms']:.2f} ms > {config.max_p99_ms} ms"
                for m in measurements if m.contender in ours and m.mode == "e2e" and m.stats.get("n")
                and m.stats["p99_ms"] > config.max_p99_ms]
    return {"max_p99_ms": config.max_p99_ms, "failures": failures}


def check_budgets(report: BenchReport) -> None:
    """Raise :class:`CheckFailedError` (exit 4) when a latency budget was exceeded."""
    if report.budget_failures:
        raise CheckFailedError("Latency budget exceeded: " + "; ".join(report.budget_failures),
                               hint="Pick a faster artifact or target, or relax --max-p99-ms.")
