"""``edgemm bench``: one run, same machine, same inputs, edgemm artifacts and peers side by side."""

from __future__ import annotations

import dataclasses
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
from edgemm.bench.contenders import EdgemmContender, backend_hook, shape_stats
from edgemm.bench.machine import fingerprint, machine_id
from edgemm.bench.runner import Measurement, TimingOptions, load_core, run_interleaved
from edgemm.bundle.manifest import Manifest
from edgemm.bundle.verify import verify_bundle
from edgemm.errors import (
    BackendUnavailableError,
    CheckFailedError,
    EdgemmError,
    MissingDependencyError,
    UsageError,
)
from edgemm.runtime.backends.ov_shapes import DEFAULT_AFTER
from edgemm.runtime.backends.ov_shapes import ENV as SHAPES_ENV

log = logging.getLogger("edgemm.bench")

SCHEMA = "edgemm.bench/1"
PEERS_CPU = ("torch-eager", "torch-compile", "optimum", "openvino", "openvino-int8")
WORKLOADS = ("standard", "repeated")
# Artifact kinds beside plain ONNX that the runtime runs through their own backend module (CPU).
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
    contention: bool = False                      # also time every standard cell with one core busy
    workloads: tuple[str, ...] = ("standard",)    # "standard" and/or "repeated" (see _repeated_requests)
    repeated_batch_sizes: tuple[int, ...] | None = None  # None: timing.batch_sizes
    repeated_answers: int = 3                     # distinct texts in the repeated workload


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
    peer_notes: list[str] = []
    # The runtime's choice first, in a process with nothing else loaded yet: where it has to
    # measure the artifacts (no ranking cached for this machine), it measures them as a fresh
    # `predict` / `serve` would, not beside a dozen loaded contenders and their threads.
    choice = _runtime_choice(config, manifest, peer_notes)
    names = _artifacts(config, manifest, peer_notes)
    contenders: list[Any] = []
    for name in names:
        try:
            contenders.append(_edgemm_contender(config, bundle, manifest, name))
        except EdgemmError as exc:
            if config.artifacts or manifest.artifact(name).kind == "onnx":
                raise
            peer_notes.append(f"artifact {name} not run: {exc.message}")
    if not contenders:
        raise BackendUnavailableError(f"No artifact of this bundle runs on {config.device}: " + "; ".join(peer_notes),
                                      hint="Benchmark on the device the bundle was exported for.")
    peers = _peers(config, bundle, manifest, peer_notes)
    everyone = contenders + peers
    evalset, data_note = _evalset(config, bundle, manifest)
    rows = _raw_rows(bundle, manifest, data_note.get("records"))
    inputs = _input_maker(bundle, manifest, rows)
    sampler = _sampler(config, peer_notes)
    timing = dataclasses.replace(config.timing, contention=config.contention)
    workloads: dict[str, str] = {}  # name → what it is (shown in reports)
    repeated_details: dict[str, Any] | None = None

    log.info("timing %s", ", ".join(c.name for c in everyone))
    measurements: list[Measurement] = []
    try:
        if "standard" in config.workloads:
            workloads["standard"] = "one request per batch size, the same every call"
            # Every call of a cell repeats one request: an answer cache would hit on all of them.
            # The standard workload times its worst case instead (cache off: every answer new).
            _set_caching(contenders, False)
            try:
                measurements += run_interleaved(everyone, inputs, timing, sampler=sampler)
            finally:
                _set_caching(contenders, True)
            _snapshot_caches(contenders, "standard", peer_notes)
        if "repeated" in config.workloads:
            requests, repeated_details = _repeated_requests(manifest, rows, answers=config.repeated_answers)
            if requests is None:
                peer_notes.append(f"repeated-answer workload not run: {repeated_details['description']}")
            else:
                workloads["repeated"] = repeated_details["description"]
                _clear_caches(contenders)
                repeated = dataclasses.replace(timing, modes=("e2e",), seq_lens=(None,),
                                               batch_sizes=config.repeated_batch_sizes or timing.batch_sizes)
                measurements += run_interleaved(everyone, inputs, repeated, sampler=sampler, workload="repeated",
                                                requests=requests)
                _snapshot_caches(contenders, "repeated", peer_notes)
    finally:
        if sampler is not None:
            sampler.close()
    accuracy: list[dict[str, Any]] = []
    if config.accuracy and evalset is not None:
        reference = next((c for c in contenders if c.info.get("artifact") == "fp32"), None) or \
            EdgemmContender(bundle, "fp32", device=config.device, threads=config.threads)
        accuracy = accuracy_drift(everyone, evalset, reference)
    headline = _headline(choice, contenders, peer_notes)
    cold: list[dict[str, Any]] = []
    if config.cold_start:
        cold = _cold_starts(config, bundle, manifest, peers, headline, contenders)
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
                   "telemetry": sampler.source if sampler is not None else None,
                   "workloads": list(workloads),
                   "contention": ({"core": load_core(), "load": "one process spinning in a tight loop, pinned to "
                                   "that core, started before and stopped after each contended pass",
                                   "interleaved_with_quiet": True} if config.contention else None)},
        "headline": headline,
        "workload": workloads,
        "repeated_workload": repeated_details,
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
    unknown = [w for w in config.workloads if w not in WORKLOADS]
    if unknown or not config.workloads:
        raise UsageError(f"Unknown workload {', '.join(unknown) or '(none)'}.", hint=f"Choose from: {', '.join(WORKLOADS)}.")
    for batch in config.repeated_batch_sizes or ():
        low, _, high = limits.get("batch", [1, 1, 1 << 30])
        if not low <= batch <= high:
            raise UsageError(f"Batch size {batch} is outside the artifacts' profile {low}..{high}.",
                             hint=f"Choose batch sizes between {low} and {high}.")
    if config.contention and config.device != "cpu":
        raise UsageError("--contention measures CPU kiosks (one core kept busy).", hint="Use it with --device cpu.")


def _artifacts(config: BenchConfig, manifest: Manifest, notes: list[str]) -> list[str]:
    provider = "CUDAExecutionProvider" if config.device == "cuda" else "CPUExecutionProvider"
    runnable: list[str] = []
    why: dict[str, str] = {}
    for a in manifest.artifacts:
        if a.gate_failed:
            continue
        if a.kind == "onnx":
            if provider in a.providers:
                runnable.append(a.name)
        elif a.kind in ("openvino", "split"):
            from edgemm.runtime.predictor import unavailable_reason

            reason = unavailable_reason(a, config.device)
            if reason is None:
                runnable.append(a.name)
            else:
                why[a.name] = reason
    if not config.artifacts:
        notes += [f"artifact {name} not run: {reason}" for name, reason in why.items()]
        if not runnable:
            raise BackendUnavailableError(f"No artifact of this bundle runs on {config.device}.",
                                          hint="Benchmark on the device the bundle was exported for.")
        return runnable
    for name in config.artifacts:
        manifest.artifact(name)  # raises with the valid names
        if name not in runnable:
            reason = f" ({why[name]})" if name in why else ""
            raise BackendUnavailableError(f"Artifact {name!r} does not run on {config.device}{reason}.",
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

    from edgemm.bench.peers import OPENVINO_PEERS

    # The OpenVINO peers preprocess with transformers but need no torch.
    needed = ("transformers",) if set(requested) <= set(OPENVINO_PEERS) else ("torch", "transformers")
    try:
        installed = all(importlib.util.find_spec(m) is not None for m in needed)
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
    from edgemm.bench.peers import OPENVINO_HINT

    peers = []
    for name in requested:
        try:
            peers.append(make_peer(name, bundle=bundle, checkpoint=checkpoint, device=config.device,
                                   threads=config.threads, data=config.eval_data))
        except (ImportError, MissingDependencyError) as exc:
            if name in OPENVINO_PEERS:  # an optional extra: its absence is reported, never fatal
                notes.append(f"peer {name} not run: {OPENVINO_HINT}")
                continue
            if not auto:
                raise
            notes.append(f"peer {name} skipped: {exc}")
        except EdgemmError:
            raise
        except Exception as exc:  # OpenVINO / NNCF failing on this model is the peer's result, reported
            if name not in OPENVINO_PEERS:
                raise
            log.warning("peer %s failed to load", name, exc_info=True)
            notes.append(f"peer {name} not run: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
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


def _raw_rows(bundle: Path, manifest: Manifest, evalset_records: list[Any] | None) -> list[dict[str, Any]]:
    """One raw request per row (``modality → item``): real test records, or the golden set's raw inputs."""
    if evalset_records:
        return [r.inputs(list(manifest.modalities)) for r in evalset_records]
    from edgemm.runtime.golden import load_golden

    golden = load_golden(bundle, manifest).raw_requests()
    count = len(next(iter(golden.values())))
    return [{m: golden[m][i] for m in golden} for i in range(count)]


def _input_maker(bundle: Path, manifest: Manifest, rows: list[dict[str, Any]]):
    """``(batch, seq) → (raw lists, feed)`` from ``rows`` (the standard workload: one request per cell)."""
    from edgemm.runtime.preprocess.pipeline import Preprocessor

    preprocessor = Preprocessor(bundle, manifest.preprocessing, manifest.modalities)

    def make(batch: int, seq: int | None) -> tuple[dict[str, list[Any]], dict[str, np.ndarray]]:
        chosen = list(itertools.islice(itertools.cycle(rows), batch))
        raw = {m: [row.get(m) for row in chosen] for m in manifest.modalities}
        raw = {m: items for m, items in raw.items() if any(x is not None for x in items) or manifest.modality(m).required}
        return raw, preprocessor(raw, text_pad_to=seq)

    return make


def _repeated_requests(manifest: Manifest, rows: list[dict[str, Any]], *, answers: int = 3,
                       calls: int = 64, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """The repeated-answer workload: a kiosk asks one question and hears the same few answers all
    day, about pictures that change. Each request's rows take the next pictures (cycling through
    the records) and a text drawn (seeded) from the first ``answers`` distinct texts.

    Returns:
        (``batch → calls`` raw requests, or None when the model takes no text; a description for the JSON).
    """
    texts = list(dict.fromkeys(row["text"] for row in rows if isinstance(row.get("text"), str) and row["text"]))
    if "text" not in manifest.modalities or not texts:
        return None, {"description": "the model takes no text (or the data has none) to repeat"}
    chosen = texts[:answers]
    described = {"description": f"texts repeat from {len(chosen)} answers while the other inputs vary "
                                f"({min(calls, len(rows))} distinct rows per batch size); timed end to end",
                 "answers": chosen, "requests_per_batch": calls, "seed": seed, "distinct_rows": len(rows)}

    def make(batch: int) -> list[dict[str, list[Any]]]:
        rng = np.random.default_rng(seed)
        requests = []
        for call in range(calls):
            picked = [dict(rows[(call * batch + j) % len(rows)]) for j in range(batch)]
            for row in picked:
                row["text"] = chosen[int(rng.integers(len(chosen)))]
            raw = {m: [row.get(m) for row in picked] for m in manifest.modalities}
            requests.append({m: items for m, items in raw.items()
                             if any(x is not None for x in items) or manifest.modality(m).required})
        return requests

    return make, described


def _cache_stats(contender: Any) -> dict[str, Any] | None:
    stats = backend_hook(contender, "cache_stats")
    return stats() if stats is not None else None


def _clear_caches(contenders: list[Any]) -> None:
    """A kiosk starts with an empty answer cache: each workload is measured from one (warm-up fills it)."""
    for c in contenders:
        clear = backend_hook(c, "clear_cache")
        if clear is not None:
            clear()


def _set_caching(contenders: list[Any], enabled: bool) -> None:
    for c in contenders:
        switch = backend_hook(c, "set_caching")
        if switch is not None:
            switch(enabled)


def _snapshot_caches(contenders: list[Any], workload: str, notes: list[str]) -> None:
    for c in contenders:
        shapes = shape_stats(c)
        if shapes is not None:
            c.info.setdefault("static_shapes", {})[workload] = shapes
            if workload == "standard" and shapes["compiled"]:
                notes.append(
                    f"{c.name}: OpenVINO compiled {shapes['compiled']} static-shape graph(s) in the background during "
                    f"warm-up (a shape seen {DEFAULT_AFTER} times, checked against the dynamic graph: "
                    f"{shapes['adopted']} adopted, {shapes['refused']} refused); every cell repeats one shape, so "
                    f"{shapes['static_runs']} timed and warm-up calls ran a static graph, as a kiosk's calls do for "
                    "the shapes it keeps seeing; a shape not seen before runs the dynamic graph "
                    f"({SHAPES_ENV}=0 times only that)")
        stats = _cache_stats(c)
        if stats is None:
            continue
        c.info.setdefault("cache", {})[workload] = stats
        if workload == "standard":
            backend = c.predictor.backend
            whole = (getattr(backend, "artifact", None) and backend.artifact.requirements.get("whole")) or {}
            graph = f"the {whole['artifact']} artifact's graph" if whole.get("artifact") else "the unsplit graph"
            if getattr(backend, "whole_unavailable", None):
                graph += f", which cannot run here ({backend.whole_unavailable}), so none did"
            notes.append(f"{c.name}: answer cache off in the standard workload (it repeats one request per cell, "
                         "which would hit every time): its numbers are the cache's worst case, every answer new "
                         f"({stats.get('whole_batches', 0)} batches of many new answers went through the split's "
                         f"whole part, {graph}, as in serving); the repeated-answer workload (texts repeat, "
                         "pictures change) shows the cache at work")


def _runtime_choice(config: BenchConfig, manifest: Manifest, notes: list[str]) -> str | None:
    """The artifact ``predict`` / ``serve`` choose on this machine
    (:func:`edgemm.runtime.predictor.choose_artifact`), or None (noted) where they choose none."""
    from edgemm.runtime.predictor import choose_artifact

    try:
        chosen, _ = choose_artifact(manifest, config.device, bundle=config.bundle, threads=config.threads)
    except EdgemmError as exc:
        notes.append(f"headline: the runtime chooses no artifact on {config.device} ({exc.message}); "
                     "ratios use the fastest measured artifact per cell")
        return None
    return chosen.name


def _headline(choice: str | None, contenders: list[Any], notes: list[str]) -> dict[str, Any]:
    """The artifact every ratio headlines: the runtime's choice (:func:`_runtime_choice`), not the
    fastest measured one."""
    if choice is None:
        return {"artifact": None, "contender": None, "source": "fastest measured"}
    measured = {c.info.get("artifact"): c.name for c in contenders}
    if choice not in measured:
        notes.append(f"headline: the runtime's choice on this machine, {choice}, was not measured "
                     "(--artifact); ratios use the fastest measured artifact per cell")
        return {"artifact": choice, "contender": None, "source": "fastest measured"}
    return {"artifact": choice, "contender": measured[choice], "source": "choose_artifact"}


def _sampler(config: BenchConfig, notes: list[str]) -> Any:
    if config.device != "cuda" or not config.telemetry:
        return None
    from edgemm.bench.telemetry import open_telemetry

    try:
        return open_telemetry()
    except BackendUnavailableError as exc:
        notes.append(f"GPU power/memory not recorded: {exc.message}")
        return None


def _cold_starts(config: BenchConfig, bundle: Path, manifest: Manifest, peers: list[Any], headline: dict[str, Any],
                 contenders: list[Any]) -> list[dict[str, Any]]:
    """Fresh process → first result: the runtime's choice first (marked ``chosen``), every measured
    OpenVINO artifact (the issue's "cold start with the OpenVINO artifact"), then the peers."""
    rows = []
    names = [headline["artifact"]] if headline.get("artifact") else []
    names += [c.info["artifact"] for c in contenders if c.info.get("artifact") not in names
              and manifest.artifact(c.info["artifact"]).kind == "openvino"]
    for name in names:
        row = cold_start("edgemm", bundle, artifact=name, device=config.device, threads=config.threads,
                         runs=config.cold_runs)
        rows.append(row | {"contender": f"edgemm:{name}", "chosen": name == headline.get("artifact")})
    checkpoint = _checkpoint(config, manifest)
    for peer in peers:
        if peer.name in ("torch-eager", "optimum", "openvino") and checkpoint is not None:
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
        if m.mode != "model" or m.error or not m.stats.get("n") or m.load != "quiet" or m.workload != "standard":
            continue
        key = (m.batch, m.seq)
        if key not in per_shape:
            _, feed = inputs(m.batch, m.seq)
            per_shape[key] = count_flops(bundle / fp32.path, {k: v.shape for k, v in feed.items()})
        rows.append({"contender": m.contender, "batch": m.batch, "seq": m.seq, "gflops_per_batch": per_shape[key] / 1e9,
                     **achieved(per_shape[key], m.stats["p50_ms"], peak)})
    return {"peak_fp16_tflops": peak, "rows": rows}


# -- summaries --------------------------------------------------------------------------------


def _p50(document: dict[str, Any], contender: str, mode: str, batch: int, *, load: str = "quiet",
         workload: str = "standard") -> float | None:
    for row in document["latency"]:
        if row["contender"] == contender and row["mode"] == mode and row["batch"] == batch and row.get("seq") is None \
                and row.get("load", "quiet") == load and row.get("workload", "standard") == workload and row.get("n"):
            return row["p50_ms"]
    return None


def fastest_edgemm(document: dict[str, Any], *, mode: str = "e2e", batch: int = 1, max_drop: float = 0.5,
                   load: str = "quiet", workload: str = "standard") -> str | None:
    """The fastest edgemm contender in one cell whose accuracy drop is within ``max_drop`` points
    (shown beside the headline where it differs: information, not the headline)."""
    drops = {r["contender"]: r.get("drop_points") for r in document["accuracy"]["rows"]}
    candidates = []
    for c in document["contenders"]:
        if c["kind"] != "edgemm":
            continue
        drop = drops.get(c["name"])
        if drop is not None and drop > max_drop:
            continue
        p50 = _p50(document, c["name"], mode, batch, load=load, workload=workload)
        if p50 is not None:
            candidates.append((p50, c["name"]))
    return min(candidates)[1] if candidates else None


def best_edgemm(document: dict[str, Any], *, mode: str = "e2e", batch: int = 1, max_drop: float = 0.5,
                load: str = "quiet", workload: str = "standard") -> str | None:
    """The headline edgemm contender of a cell: the artifact the runtime chooses on this machine
    (``document["headline"]``, from :func:`~edgemm.runtime.predictor.choose_artifact`) — the one
    ``predict`` and ``serve`` run. Only where that was not measured (or an older document has no
    headline): the fastest measured artifact within ``max_drop`` points."""
    chosen = (document.get("headline") or {}).get("contender")
    if chosen:
        return chosen if _p50(document, chosen, mode, batch, load=load, workload=workload) is not None else None
    return fastest_edgemm(document, mode=mode, batch=batch, max_drop=max_drop, load=load, workload=workload)


def _speedups(document: dict[str, Any], *, load: str, workload: str) -> list[dict[str, Any]]:
    rows = []
    cells = {(r["mode"], r["batch"]) for r in document["latency"]
             if r.get("load", "quiet") == load and r.get("workload", "standard") == workload and r.get("seq") is None}
    for mode in ("e2e", "model"):
        for batch in sorted(b for m, b in cells if m == mode):
            where = {"load": load, "workload": workload}
            best = best_edgemm(document, mode=mode, batch=batch, **where)
            ours = _p50(document, best, mode, batch, **where) if best else None
            if not ours:
                continue
            fastest = fastest_edgemm(document, mode=mode, batch=batch, **where)
            for c in document["contenders"]:
                if c["kind"] != "peer":
                    continue
                theirs = _p50(document, c["name"], mode, batch, **where)
                if not theirs:
                    continue
                row = {"mode": mode, "batch": batch, "edgemm": best, "peer": c["name"], "edgemm_p50_ms": ours,
                       "peer_p50_ms": theirs, "ratio": theirs / ours}
                if load != "quiet" or workload != "standard":
                    row |= where
                if fastest and fastest != best:
                    row |= {"fastest_edgemm": fastest,
                            "fastest_ratio": theirs / _p50(document, fastest, mode, batch, **where)}
                rows.append(row)
    return rows


def _contention(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Each contender's contended p50 ÷ its quiet p50, per workload, mode and batch."""
    rows = []
    for row in document["latency"]:
        if row.get("load") != "contended" or row.get("seq") is not None or not row.get("n"):
            continue
        workload = row.get("workload", "standard")
        quiet = _p50(document, row["contender"], row["mode"], row["batch"], workload=workload)
        if quiet:
            rows.append({"contender": row["contender"], "mode": row["mode"], "batch": row["batch"], "workload": workload,
                         "quiet_p50_ms": quiet, "contended_p50_ms": row["p50_ms"], "slowdown": row["p50_ms"] / quiet})
    return rows


def ratios(document: dict[str, Any]) -> dict[str, Any]:
    """Peer p50 ÷ headline edgemm p50 (same mode, batch, load, workload), contended ÷ quiet p50 per
    contender, and the cold-start / memory ratios.

    ``speedup`` holds the quiet, standard-workload cells; ``contended_speedup`` the cells timed
    with one core busy (every workload), ``repeated_speedup`` the quiet repeated-answer cells.
    """
    out: dict[str, Any] = {"headline": (document.get("headline") or {}).get("contender"),
                           "speedup": _speedups(document, load="quiet", workload="standard")}
    contended = {r.get("workload", "standard") for r in document["latency"] if r.get("load") == "contended"}
    if contended:
        out["contended_speedup"] = [row for workload in sorted(contended, key=WORKLOADS.index)
                                    for row in _speedups(document, load="contended", workload=workload)]
        out["contention"] = _contention(document)
    if any(r.get("workload") == "repeated" for r in document["latency"]):
        out["repeated_speedup"] = _speedups(document, load="quiet", workload="repeated")
    cold = {row["contender"]: row for row in document["cold_start"] if "error" not in row}
    ours = next((row for row in cold.values() if row.get("chosen")), None) or \
        next((row for name, row in cold.items() if name.startswith("edgemm:")), None)
    if ours:
        summary = {"edgemm": ours["contender"], "edgemm_s": ours["total_s"], "edgemm_peak_rss_mb": ours["peak_rss_mb"]}
        torch_row = cold.get("torch-eager")
        if torch_row:
            summary |= {"torch_pipeline_s": torch_row["total_s"], "ratio": torch_row["total_s"] / ours["total_s"],
                        "torch_peak_rss_mb": torch_row["peak_rss_mb"],
                        "rss_fraction": ours["peak_rss_mb"] / torch_row["peak_rss_mb"]}
        ov_row = cold.get("openvino")
        if ov_row:
            summary |= {"openvino_s": ov_row["total_s"], "openvino_ratio": ov_row["total_s"] / ours["total_s"]}
        out["cold_start"] = summary
    return out


def _speedup(r: dict[str, Any], peer: str, mode: str) -> float | None:
    return next((row["ratio"] for row in r["speedup"] if row["peer"] == peer and row["mode"] == mode and row["batch"] == 1),
                None)


def _extreme(rows: list[dict[str, Any]], key: str, *, lowest: bool) -> tuple[float | None, str | None]:
    """The smallest (or largest) ``key`` of ``rows`` and which cell it came from."""
    if not rows:
        return None, None
    row = (min if lowest else max)(rows, key=lambda r: r[key])
    where = f"{row.get('contender') or row.get('peer')} {row['mode']} batch {row['batch']}"
    if row.get("workload", "standard") != "standard":
        where += f", {row['workload']} workload"
    return row[key], where


def _min_vs_peer(r: dict[str, Any], peer: str) -> tuple[float | None, str | None]:
    return _extreme([row for row in r["speedup"] if row["peer"] == peer], "ratio", lowest=True)


def _headline_drop(document: dict[str, Any]) -> tuple[float | None, str | None]:
    best = (document.get("headline") or {}).get("contender")
    row = next((r for r in document["accuracy"]["rows"] if r["contender"] == best and "drop_points" in r), None)
    return (row["drop_points"], best) if row else (None, None)


def _repeated_vs(r: dict[str, Any], peer: str) -> tuple[float | None, str | None]:
    row = next((x for x in r.get("repeated_speedup", []) if x["peer"] == peer and x["mode"] == "e2e"
                and x["batch"] == 1), None)
    return (row["ratio"], f"{row['edgemm']} e2e batch 1") if row else (None, None)


def _contended_slowdown(document: dict[str, Any], r: dict[str, Any]) -> tuple[float | None, str | None]:
    best = (document.get("headline") or {}).get("contender")
    return _extreme([row for row in r.get("contention", []) if row["contender"] == best], "slowdown", lowest=False)


_TARGETS = {
    "speedup_vs_torch_eager": ("≥", lambda r: _speedup(r, "torch-eager", "e2e")),
    "speedup_vs_optimum": ("≥", lambda r: _speedup(r, "optimum", "e2e")),
    "model_speedup_vs_torch_eager": ("≥", lambda r: _speedup(r, "torch-eager", "model")),
    "model_speedup_vs_torch_compile": ("≥", lambda r: _speedup(r, "torch-compile", "model")),
    "cold_start_s": ("≤", lambda r: r.get("cold_start", {}).get("edgemm_s")),
    "cold_start_speedup": ("≥", lambda r: r.get("cold_start", {}).get("ratio")),
    "rss_fraction": ("≤", lambda r: r.get("cold_start", {}).get("rss_fraction")),
}
# Targets that say where they were measured (the worst cell), from the ratios and the document.
_TARGETS_WHERE = {
    # the headline vs OpenVINO + NNCF INT8 at every batch recorded, model only and end to end (the worst cell)
    "min_speedup_vs_openvino_int8": ("≥", lambda d, r: _min_vs_peer(r, "openvino-int8")),
    "min_speedup_vs_openvino": ("≥", lambda d, r: _min_vs_peer(r, "openvino")),
    # the headline's accuracy drop against FP32 on the eval data (points)
    "accuracy_drop_points": ("≤", lambda d, r: _headline_drop(d)),
    # repeated-answer workload, end to end, batch 1, vs the plain OpenVINO peer
    "repeated_e2e_speedup_vs_openvino": ("≥", lambda d, r: _repeated_vs(r, "openvino")),
    # the headline's contended p50 ÷ its quiet p50, worst cell
    "contended_slowdown": ("≤", _contended_slowdown),
    # the headline vs every peer with one core busy, worst cell ("ahead of every peer": > 1)
    "min_contended_speedup_vs_peers": ("≥", lambda d, r: _extreme(r.get("contended_speedup", []), "ratio", lowest=True)),
    # fresh process → first result of the plain OpenVINO peer ÷ the headline's
    "cold_start_vs_openvino": ("≥", lambda d, r: ((r.get("cold_start") or {}).get("openvino_ratio"), None)),
}


def evaluate_targets(document: dict[str, Any], targets: dict[str, float]) -> list[dict[str, Any]]:
    """Measured vs target for each named target (met / missed / not measured); targets over many
    cells report their worst cell in ``where``."""
    rows = []
    for name, goal in targets.items():
        where = None
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
        elif name in _TARGETS_WHERE:
            op, getter2 = _TARGETS_WHERE[name]
            value, where = getter2(document, document["ratios"])
        else:
            rows.append({"target": name, "goal": goal, "status": "unknown target"})
            continue
        status = "not measured" if value is None else (
            "met" if (value >= goal if op == "≥" else value <= goal) else "missed")
        rows.append({"target": name, "goal": f"{op} {goal}", "measured": value, "status": status,
                     **({"where": where} if where else {})})
    return rows


def _budgets(config: BenchConfig, measurements: list[Measurement], contenders: list[Any]) -> dict[str, Any]:
    if config.max_p99_ms is None:
        return {}
    ours = {c.name for c in contenders}
    failures = [f"{m.contender} batch {m.batch} {m.mode}: p99 {m.stats['p99_ms']:.2f} ms > {config.max_p99_ms} ms"
                for m in measurements if m.contender in ours and m.mode == "e2e" and m.stats.get("n")
                and m.load == "quiet" and m.stats["p99_ms"] > config.max_p99_ms]
    return {"max_p99_ms": config.max_p99_ms, "failures": failures}


def check_budgets(report: BenchReport) -> None:
    """Raise :class:`CheckFailedError` (exit 4) when a latency budget was exceeded."""
    if report.budget_failures:
        raise CheckFailedError("Latency budget exceeded: " + "; ".join(report.budget_failures),
                               hint="Pick a faster artifact or target, or relax --max-p99-ms.")
