"""One ranking of a bundle's CPU artifacts, measured on the machine that runs them. Torch-free.

``predict``, ``serve`` (through :meth:`edgemm.runtime.predictor.Predictor.load`) and ``bench``
(through :func:`edgemm.runtime.predictor.choose_artifact`) all ask this module, so the artifact a
bench headlines is the one a kiosk serves.

How a choice is made on ``cpu``:

1. Candidates: every ONNX Runtime, OpenVINO and split artifact this machine can run that passed
   its accuracy gate, in the *static order* (precision: int8, mixed, bf16, fp32; then engine:
   split, ONNX Runtime, OpenVINO; then one that requires CPU features this CPU has, such as
   ``ov-int8-bf16``; then the fused graph; then dynamic INT8 before Q/DQ). An
   unfused graph with a fused twin of the same kind and precision is not measured: the fused
   one is never slower.
2. The ranking cache: ``ranking.json`` in this bundle's cache directory
   (:func:`~edgemm.runtime.trt_compat.bundle_cache_dir`; never inside the bundle), valid for
   exactly this manifest (sha256), this machine (CPU model, flags, usable cores, thread count)
   and these library versions (edgemm, ONNX Runtime, OpenVINO). A damaged or stale file is
   ignored and replaced.
3. Without a valid cache entry the candidates are measured at load: each is loaded (hash check +
   session / compile, timed) and then timed interleaved on the bundle's golden feed at batch 1
   (about 0.6 s of timing). The loads dominate: ONNX Runtime sessions take tenths of a second,
   OpenVINO compiles about a second each on a 2-core kiosk. This is paid once per machine and
   bundle; every later start reads the cache in milliseconds. A kiosk is installed once and
   started many times, so paying once for the measured answer beats serving for months with a
   guessed one. The winner's session is the one the predictor keeps (not loaded twice), and a
   bundle too large to hold every candidate at once is measured one candidate at a time.
4. Cost per candidate: its batch-1 p50 plus its load time spread over
   :data:`AMORTIZED_REQUESTS` answers (an artifact that is slower to load pays for it). An
   artifact with an answer cache (a split) is timed on new answers and on cached ones, and its
   p50 is their mix at :data:`REPEAT_SHARE` cached: a kiosk hears the same few answers all day,
   and costing it on new answers only would give the cache to no one. Costs
   within :data:`TIE_RELATIVE` (or :data:`TIE_ABSOLUTE_MS`) of the best are a tie, and ties go to
   the static order, so noise does not flip the answer between machines of one kind. A
   measurement taken while the machine was busy (runs spread over half their median) is used
   but measured again at the next start, at most :data:`NOISY_MEASUREMENTS` times.

``EDGEMM_RANKING=static`` skips the cache and the measurement (static order only, e.g. for
tests); ``EDGEMM_RANKING=measure`` measures again and rewrites the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.manifest import Artifact, Manifest
from edgemm.errors import BackendUnavailableError, MissingDependencyError, RuntimeFailure

log = logging.getLogger("edgemm.runtime")

RANKING_ENV = "EDGEMM_RANKING"
RANKING_MODES = ("auto", "static", "measure")
CACHE_NAME = "ranking.json"
CACHE_SCHEMA = "edgemm.ranking/2"  # /2: answer-cache hits timed (REPEAT_SHARE)
# Load time is spread over this many answers: a kiosk answers thousands of questions per start.
AMORTIZED_REQUESTS = 1000
# Share of answers a kiosk has heard before, for artifacts with an answer cache. Measured on the
# reference model (2-core EPYC): a new answer through the split cost 1.87 ms against ORT int8's
# 1.53, a cached one 0.6 ms end to end — the split is ahead once about a fifth of answers repeat;
# a half is a cautious guess for a kiosk whose children pick from a few answers.
REPEAT_SHARE = 0.5
TIE_RELATIVE = 0.05
TIE_ABSOLUTE_MS = 0.05
# Interleaved timing: at least MIN_ROUNDS rounds, at most ROUNDS, stopping after BUDGET_S.
ROUNDS = 8
MIN_ROUNDS = 3
RUNS_PER_ROUND = 4
BUDGET_S = 0.6
# A measurement whose interquartile range exceeds this share of the median (and NOISY_FLOOR_MS)
# was taken under load (a browser starting beside the kiosk): it is used, but measured again at
# the next start, up to NOISY_MEASUREMENTS times, so one busy boot does not fix the answer forever.
NOISY_SPREAD = 0.5
NOISY_FLOOR_MS = 0.05
NOISY_MEASUREMENTS = 3
# Above this many bytes of candidate files, candidates are measured one at a time (memory).
INTERLEAVE_MAX_BYTES = 1 << 30

PRECISION_ORDER = ("int8", "mixed", "bf16", "fp32")
# Same precision: a split bundle's branch graphs first (text run at its real length, per-branch
# engine and precision), then ONNX Runtime, then OpenVINO, whose compile takes seconds where an
# ORT session takes tenths (a cold start pays it).
KIND_ORDER = ("split", "onnx", "openvino")

OpenBackend = Callable[[Artifact], Any]


def ranking_mode() -> str:
    """``auto`` (cache, else measure), ``static`` or ``measure`` from ``$EDGEMM_RANKING``."""
    mode = os.environ.get(RANKING_ENV, "auto").strip().lower() or "auto"
    return mode if mode in RANKING_MODES else "auto"


def static_key(art: Artifact) -> tuple[int, int, int, int, int, str]:
    """Sort key of the static order (smaller first); the name breaks the last ties."""
    precision = PRECISION_ORDER.index(art.precision) if art.precision in PRECISION_ORDER else len(PRECISION_ORDER)
    kind = KIND_ORDER.index(art.kind) if art.kind in KIND_ORDER else len(KIND_ORDER)
    # An artifact that requires CPU features (``ov-int8-bf16``: BF16 for the layers INT8 leaves)
    # is a candidate only where the CPU has them, and is what OpenVINO itself runs there: ahead of
    # its twin without them (BERT-base + ViT-B/16 sizes, 2-core EPYC: 2-10 % faster, often within
    # the tie band, where the name alone used to give the race to ``ov-int8``).
    hardware = 0 if art.cpu_flags_any else 1
    # Q/DQ INT8's S8S8 kernels are slow on CPUs without VNNI: dynamic INT8 first.
    qdq = 1 if art.quantization_method == "int8-static-qdq" else 0
    return (precision, kind, hardware, 0 if art.graph_optimized else 1, qdq, art.name)


def static_order(artifacts: Iterable[Artifact]) -> list[Artifact]:
    """``artifacts`` best first by the static order."""
    return sorted(artifacts, key=static_key)


def prune_unfused(candidates: list[Artifact]) -> tuple[list[Artifact], list[str]]:
    """Drop ONNX graphs whose fused twin (same kind, precision, quantization) is also a candidate.

    Returns:
        The candidates left (order kept) and one reason per dropped artifact.
    """
    kept, reasons = [], []
    for art in candidates:
        twin = next((o for o in candidates if o is not art and o.graph_optimized and not art.graph_optimized
                     and o.kind == art.kind == "onnx" and o.precision == art.precision
                     and o.quantization_method in (art.quantization_method, "graph-optimized")), None)
        if twin is not None:
            reasons.append(f"{art.name}: ranked below {twin.name} (same precision; the fused graph is never slower)")
        else:
            kept.append(art)
    return kept, reasons


@dataclass(frozen=True)
class Timing:
    """One candidate measured on this machine.

    Attributes:
        name: The artifact.
        load_ms: Hash check + session creation / compilation, plus the first run.
        p50_ms: Median latency at batch 1 on the golden feed (interleaved with the others); for
            an artifact with an answer cache, with the cache cleared (a new answer).
        runs: Timed runs behind ``p50_ms``.
        iqr_ms: Interquartile range of those runs (how steady the machine was).
        hit_p50_ms: For an artifact with an answer cache: the median of the same feed answered
            from the cache (None: no cache).
    """

    name: str
    load_ms: float
    p50_ms: float
    runs: int
    iqr_ms: float = 0.0
    hit_p50_ms: float | None = None

    @property
    def answer_ms(self) -> float:
        """The expected batch-1 latency: ``p50_ms``, or for a cached artifact its mix of new and
        cached answers at :data:`REPEAT_SHARE`."""
        if self.hit_p50_ms is None:
            return self.p50_ms
        return (1 - REPEAT_SHARE) * self.p50_ms + REPEAT_SHARE * self.hit_p50_ms

    @property
    def noisy(self) -> bool:
        """Whether the runs spread more than :data:`NOISY_SPREAD` of the median (machine busy)."""
        return self.iqr_ms > max(NOISY_FLOOR_MS, NOISY_SPREAD * self.p50_ms)

    @property
    def cost_ms(self) -> float:
        """:attr:`answer_ms` plus the load time spread over :data:`AMORTIZED_REQUESTS` answers."""
        return self.answer_ms + self.load_ms / AMORTIZED_REQUESTS

    def to_dict(self) -> dict[str, Any]:
        """JSON form (cache file, bench reports)."""
        return {"name": self.name, "load_ms": round(self.load_ms, 3), "p50_ms": round(self.p50_ms, 4),
                "runs": self.runs, "iqr_ms": round(self.iqr_ms, 4)} \
            | ({"hit_p50_ms": round(self.hit_p50_ms, 4)} if self.hit_p50_ms is not None else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timing:
        """Inverse of :meth:`to_dict`; raises ``KeyError`` / ``TypeError`` / ``ValueError`` on bad data."""
        hit = data.get("hit_p50_ms")
        return cls(str(data["name"]), float(data["load_ms"]), float(data["p50_ms"]), int(data["runs"]),
                   float(data.get("iqr_ms", 0.0)), None if hit is None else float(hit))


@dataclass
class Ranking:
    """The candidates of one bundle on one machine, best first, and why.

    Attributes:
        order: Candidate names, best first.
        timings: Measurements by name (empty for a static ranking).
        source: ``"measured"``, ``"cache"`` or ``"static"``.
        note: Why the ranking is static, when it is.
        failed: Candidates that could not be loaded or run while measuring, with the reason.
        measurements: How many starts measured this ranking (noisy ones are measured again).
    """

    order: list[str]
    timings: dict[str, Timing] = field(default_factory=dict)
    source: str = "static"
    note: str = ""
    failed: dict[str, str] = field(default_factory=dict)
    measurements: int = 1

    @property
    def noisy(self) -> bool:
        """Whether any candidate's runs were unsteady (see :data:`NOISY_SPREAD`)."""
        return any(t.noisy for t in self.timings.values())

    @property
    def best(self) -> str:
        """The name of the first candidate."""
        return self.order[0]

    def reasons(self) -> list[str]:
        """One line per candidate below the best, e.g. ``"int8: ranked below ov-int8 on this
        machine (1.9 ms vs 1.4 ms at batch 1)"``, then the candidates that failed."""
        best = self.order[0]
        lines = []
        for name in self.order[1:]:
            lines.append(f"{name}: ranked below {best} {self._why(name, best)}")
        lines += [f"{name}: could not be measured here: {why}" for name, why in self.failed.items()]
        return lines

    def _why(self, name: str, best: str) -> str:
        mine, theirs = self.timings.get(name), self.timings.get(best)
        if mine is None or theirs is None:
            return f"(static order{': ' + self.note if self.note else ''})"
        text = f"on this machine ({_latency(mine)} vs {_latency(theirs)} at batch 1"
        if _tied(mine.cost_ms, theirs.cost_ms):
            text += "; a tie, the static order decides"
        elif mine.answer_ms <= theirs.answer_ms:
            text += f"; load {mine.load_ms / 1e3:.2f} s vs {theirs.load_ms / 1e3:.2f} s"
        return text + ")"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``Predictor.ranking``, bench reports)."""
        return {"order": list(self.order), "source": self.source, "note": self.note,
                "timings": [self.timings[n].to_dict() for n in self.order if n in self.timings],
                "failed": dict(self.failed), "amortized_requests": AMORTIZED_REQUESTS, "noisy": self.noisy,
                "measurements": self.measurements}


def _ms(value: float) -> str:
    return f"{value:.3g} ms"


def _latency(timing: Timing) -> str:
    if timing.hit_p50_ms is None:
        return _ms(timing.p50_ms)
    return f"{_ms(timing.answer_ms)} ({_ms(timing.p50_ms)} new, {_ms(timing.hit_p50_ms)} cached answers)"


def _tied(a: float, b: float) -> bool:
    return abs(a - b) <= max(TIE_ABSOLUTE_MS, TIE_RELATIVE * min(a, b))


def order_by_cost(static: list[str], timings: dict[str, Timing]) -> list[str]:
    """Measured names best first: repeatedly the static-first candidate tied with the cheapest.

    Args:
        static: Names in the static order (only those in ``timings`` are ranked).
        timings: Measurements by name.
    """
    remaining = [n for n in static if n in timings]
    order: list[str] = []
    while remaining:
        cheapest = min(timings[n].cost_ms for n in remaining)
        pick = next(n for n in remaining if _tied(timings[n].cost_ms, cheapest) or timings[n].cost_ms <= cheapest)
        order.append(pick)
        remaining.remove(pick)
    return order


# -- this machine ---------------------------------------------------------------------------


def _cpu_info() -> tuple[str, str]:
    """The CPU's model name and its sorted feature flags."""
    from edgemm.runtime.cpu import cpu_info

    info = cpu_info()
    return info.model, " ".join(sorted(info.flags or ()))


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def machine_fingerprint(threads: int) -> dict[str, Any]:
    """What a measured ranking depends on besides the bundle: CPU, cores, threads, library versions.

    Library versions come from package metadata (importing OpenVINO would cost a kiosk start).
    """
    from edgemm import __version__

    model, flags = _cpu_info()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        cores = os.cpu_count() or 1
    return {
        "cpu": model,
        "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "machine": platform.machine(),
        "cores": cores,
        "threads": int(threads),
        "edgemm": __version__,
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "openvino": _version("openvino"),
    }


# -- the cache ------------------------------------------------------------------------------


def manifest_sha256(root: Path) -> str:
    """sha256 of the bundle's ``edgemm.json`` (the identity the cache is valid for)."""
    from edgemm.bundle.manifest import MANIFEST_NAME

    return hashlib.sha256((Path(root) / MANIFEST_NAME).read_bytes()).hexdigest()


def cache_path(root: Path) -> Path:
    """``ranking.json`` in this machine's cache directory for the bundle at ``root``."""
    from edgemm.runtime.trt_compat import bundle_cache_dir

    return bundle_cache_dir(root) / CACHE_NAME


def _cache_path_for(sha: str) -> Path:
    # bundle_cache_dir's layout, from the manifest's digest alone (a caller without the directory).
    from edgemm.runtime.trt_compat import cache_root

    return cache_root() / "bundles" / sha[:16] / CACHE_NAME


def cached_ranking(manifest: Manifest, candidates: list[str], threads: int) -> Ranking | None:
    """The cached ranking of a manifest read without its directory (``Manifest.to_json`` is the
    file's exact bytes), or None: lets a caller that only has the manifest agree with the runtime."""
    sha = hashlib.sha256(manifest.to_json().encode()).hexdigest()
    return read_cache(_cache_path_for(sha), sha, candidates, machine_fingerprint(threads))


def read_cache(path: Path, sha: str, candidates: list[str], machine: dict[str, Any]) -> Ranking | None:
    """The ranking cached in ``path`` for exactly this manifest digest, machine and candidate
    set, else None.

    A file that cannot be read or parsed, or that was written for anything else, is ignored
    (it is only a cache): the caller measures again and replaces it.
    """
    try:
        doc = json.loads(path.read_text("utf-8"))
        if (doc.get("schema") != CACHE_SCHEMA or doc.get("manifest_sha256") != sha
                or doc.get("machine") != machine or sorted(doc.get("candidates", [])) != sorted(candidates)):
            log.debug("ranking cache %s is for another bundle, machine or candidate set", path)
            return None
        timings = {t["name"]: Timing.from_dict(t) for t in doc["timings"]}
        if set(timings) != set(candidates) or any(not np.isfinite(t.answer_ms) or t.answer_ms <= 0
                                                  or not np.isfinite(t.p50_ms) for t in timings.values()):
            return None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.debug("ranking cache %s ignored: %s", path, exc)
        return None
    return Ranking(order_by_cost(candidates, timings), timings, source="cache",
                   measurements=max(1, int(doc.get("measurements", 1))))


def write_cache(root: Path, ranking: Ranking, candidates: list[str], machine: dict[str, Any]) -> Path | None:
    """Store a measured ranking (atomically). A cache that cannot be written is logged, not raised:
    a kiosk with a read-only home still serves, it only measures again at its next start."""
    import tempfile

    path = cache_path(root)
    doc = {"schema": CACHE_SCHEMA, "manifest_sha256": manifest_sha256(root), "machine": machine,
           "candidates": list(candidates), "timings": [t.to_dict() for t in ranking.timings.values()],
           "measurements": ranking.measurements, "noisy": ranking.noisy,
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A reader sees the old file or the whole new one (a cache: no fsync needed).
        fd, tmp = tempfile.mkstemp(prefix=".ranking-", suffix=".partial", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps(doc, indent=1).encode())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        log.warning("ranking cache %s not written (%s): the next start measures again", path, exc)
        return None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


# -- measuring ------------------------------------------------------------------------------


def batch_one(feed: dict[str, np.ndarray], dynamic_first_axis: set[str],
              text: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The first row of every input whose first axis is dynamic (the rest as they are), as the
    preprocessor would make it alone.

    Args:
        feed: A batch (the golden feed).
        dynamic_first_axis: Inputs whose first axis is the batch.
        text: The manifest's text preprocessing (``preprocessing["text"]``). With ``padding =
            "longest"`` a text alone is not padded: its padding in the golden batch (where its
            neighbours were longer) is cut away, down to ``min_length``. Timing the padded row
            would cost every artifact positions no kiosk request has, except a split, which trims
            them (the reference model's first golden row: 7 tokens padded to 21).
    """
    one = {name: (np.ascontiguousarray(array[:1]) if name in dynamic_first_axis else array)
           for name, array in feed.items()}
    mask_name = (text or {}).get("attention_mask")
    if not text or text.get("padding") != "longest" or mask_name not in one or one[mask_name].ndim != 2:
        return one
    mask = one[mask_name][0]
    width = mask.shape[0]
    real = np.flatnonzero(mask)
    left = text.get("padding_side") == "left"
    tokens = 0 if not real.size else (width - int(real[0]) if left else int(real[-1]) + 1)
    keep = max(tokens, int(text.get("min_length") or 1))
    if keep >= width:
        return one
    columns = slice(width - keep, width) if left else slice(0, keep)
    names = [text.get(key) for key in ("input_ids", "attention_mask", "token_type_ids")]
    for name in (n for n in names if n in one and one[n].ndim == 2 and one[n].shape[1] == width):
        one[name] = np.ascontiguousarray(one[name][:, columns])
    return one


def measure(candidates: list[Artifact], open_backend: OpenBackend, feed: dict[str, np.ndarray], *,
            budget_s: float = BUDGET_S, sequential: bool = False) -> tuple[dict[str, Timing], dict[str, Any], dict[str, str]]:
    """Load every candidate, then time them interleaved on ``feed``.

    Args:
        candidates: Artifacts in the static order.
        open_backend: Makes an *active* backend for an artifact (hash check included).
        feed: The batch-1 golden feed.
        budget_s: Timing stops after this many seconds once :data:`MIN_ROUNDS` rounds are done.
        sequential: Load, time and release one candidate at a time (at most two sessions alive:
            the cheapest so far and the one being timed) — for bundles too large to hold every
            candidate in memory at once; noisier than interleaving.

    Returns:
        Timings by name, the live backends by name (the caller keeps one and closes the rest),
        and the candidates that could not be loaded or run, with the reason.

    Raises:
        BundleError: A candidate's file does not match its hash (never a skip: the bundle is bad).
    """
    if sequential:
        return _measure_one_by_one(candidates, open_backend, feed, budget_s)
    live: dict[str, Any] = {}
    loads: dict[str, float] = {}
    failed: dict[str, str] = {}
    for art in candidates:
        start = time.perf_counter()
        try:
            backend = open_backend(art)
            _specialize(backend, False)
            backend.run(feed)  # first run: kernels picked, arenas allocated (part of a cold start)
        except (BackendUnavailableError, MissingDependencyError, RuntimeFailure) as exc:
            failed[art.name] = exc.message  # reported by Ranking.reasons()
            continue
        loads[art.name] = (time.perf_counter() - start) * 1e3
        live[art.name] = backend
    samples: dict[str, list[float]] = {name: [] for name in live}
    hits: dict[str, list[float]] = {name: [] for name in live}
    names = list(live)
    deadline = time.perf_counter() + budget_s
    for round_ in range(ROUNDS):
        # Alternate the order so no candidate always runs right after the same neighbour.
        for name in (names if round_ % 2 == 0 else names[::-1]):
            _time_runs(live[name], feed, RUNS_PER_ROUND, samples[name], hits[name])
        if round_ + 1 >= MIN_ROUNDS and time.perf_counter() > deadline:
            break
    timings = {name: _timing(name, loads[name], samples[name], hits[name]) for name in names}
    for backend in live.values():
        _specialize(backend, True)
    return timings, live, failed


def _timing(name: str, load_ms: float, samples: list[float], hits: list[float]) -> Timing:
    q1, _, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else (0.0, 0.0, 0.0)
    return Timing(name, load_ms, statistics.median(samples), len(samples), max(0.0, q3 - q1),
                  statistics.median(hits) if hits else None)


def _time_runs(backend: Any, feed: dict[str, np.ndarray], runs: int, out: list[float], hits: list[float]) -> None:
    # An artifact with an answer cache is timed both ways: the golden row as a new answer (cache
    # cleared before the run) and the same row again, answered from the cache.
    clear = getattr(backend, "clear_cache", None)
    # One untimed run first: the first run after another candidate's block pays for that
    # candidate's still-spinning workers and the caches it evicted, which a kiosk running one
    # artifact never does (it made every candidate but the first look slower, up to 3x).
    backend.run(feed)
    for _ in range(runs):
        if callable(clear):
            clear()
        start = time.perf_counter()
        backend.run(feed)
        out.append((time.perf_counter() - start) * 1e3)
        if callable(clear):
            start = time.perf_counter()
            backend.run(feed)
            hits.append((time.perf_counter() - start) * 1e3)


def _measure_one_by_one(candidates: list[Artifact], open_backend: OpenBackend, feed: dict[str, np.ndarray],
                        budget_s: float) -> tuple[dict[str, Timing], dict[str, Any], dict[str, str]]:
    timings: dict[str, Timing] = {}
    failed: dict[str, str] = {}
    best: tuple[str, Any] | None = None
    share = budget_s / max(1, len(candidates))
    for art in candidates:
        start = time.perf_counter()
        try:
            backend = open_backend(art)
            _specialize(backend, False)
            backend.run(feed)
        except (BackendUnavailableError, MissingDependencyError, RuntimeFailure) as exc:
            failed[art.name] = exc.message
            continue
        load_ms = (time.perf_counter() - start) * 1e3
        samples: list[float] = []
        hits: list[float] = []
        deadline = time.perf_counter() + share
        for round_ in range(ROUNDS):
            _time_runs(backend, feed, RUNS_PER_ROUND, samples, hits)
            if round_ + 1 >= MIN_ROUNDS and time.perf_counter() > deadline:
                break
        timings[art.name] = _timing(art.name, load_ms, samples, hits)
        if best is None or timings[art.name].cost_ms < timings[best[0]].cost_ms:
            if best is not None:
                best[1].deactivate()
            best = (art.name, backend)
        else:
            backend.deactivate()
    if best is not None:
        _specialize(best[1], True)
    return timings, ({best[0]: best[1]} if best is not None else {}), failed


def _specialize(backend: Any, enabled: bool) -> None:
    """Static-shape compiles off while timing (every candidate is timed on its dynamic graph, as a
    shape's first calls run, and no background compile competes with the timing), on for the kept one."""
    switch = getattr(backend, "set_shape_specialization", None)
    if callable(switch):
        switch(enabled)


def rank(root: Path, candidates: list[Artifact], open_backend: OpenBackend, feed: Callable[[], dict[str, np.ndarray] | None],
         *, threads: int, mode: str | None = None, sequential: bool = False) -> tuple[Ranking, dict[str, Any]]:
    """Rank ``candidates`` on this machine: cache, else measurement (see the module docstring).

    Args:
        root: The bundle directory.
        candidates: Runnable, gate-passed artifacts in the static order.
        open_backend: Makes an active backend for an artifact (used only when measuring).
        feed: Returns the batch-1 golden feed, or None when the bundle has none.
        threads: The thread count the predictor will use (part of the machine's fingerprint).
        mode: ``auto`` / ``static`` / ``measure`` (default: :func:`ranking_mode`).
        sequential: Measure one candidate at a time (see :func:`measure`).

    Returns:
        The ranking and the live backends a measurement left open (the caller closes those it
        does not keep; empty unless measured).

    Raises:
        BundleError: A file read while measuring is not the hashed one.
    """
    mode = mode or ranking_mode()
    names = [a.name for a in candidates]
    if len(candidates) < 2 or mode == "static":
        why = "" if len(candidates) < 2 else f"{RANKING_ENV}=static"
        return Ranking(names, source="static", note=why), {}
    machine = machine_fingerprint(threads)
    cached = read_cache(cache_path(root), manifest_sha256(root), names, machine) if mode == "auto" else None
    if cached is not None and not (cached.noisy and cached.measurements < NOISY_MEASUREMENTS):
        return cached, {}
    golden = feed()
    if golden is None:
        return Ranking(names, source="static", note="the bundle has no golden set to measure with"), {}
    started = time.perf_counter()
    timings, live, failed = measure(candidates, open_backend, golden, sequential=sequential)
    if not timings:
        return Ranking(names, source="static", note="no candidate could be measured", failed=failed), {}
    ranking = Ranking(order_by_cost(names, timings), timings, source="measured", failed=failed,
                      measurements=cached.measurements + 1 if cached is not None else 1)
    log.info("ranked %d artifacts on this machine in %.2f s: %s%s", len(timings), time.perf_counter() - started,
             ", ".join(f"{n} {_latency(timings[n])}" for n in ranking.order),
             " (the machine was busy: measured again at the next start)"
             if ranking.noisy and ranking.measurements < NOISY_MEASUREMENTS else "")
    if not failed:  # a candidate that failed here may work after a fix: measure again then
        write_cache(root, ranking, names, machine)
    return ranking, live
