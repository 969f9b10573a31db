"""Branch-aware execution: a model cut into branch graphs run in sequence, with an answer cache.

A kiosk asks the same question and hears the same few answers all day. An artifact of kind
``split`` is the model cut where one encoder branch (text, or audio) meets fusion: a *branch
part* (that branch's graph inputs → the tensors fusion reads from it) and a *rest part* (the
other inputs plus those tensors → the model's outputs). :class:`SplitBackend` runs the branch
part only for rows it has not seen, keeps their outputs in a bounded LRU cache keyed by the
exact bytes of the row, and assembles each batch from cached and fresh rows.

Why every fresh row is computed alone (batch 1), at its own length: an INT8-dynamic graph scales
activations per *tensor*, so a row's branch output depends on its batch neighbours and on how
far it was padded. Computing rows alone makes a row's output a pure function of its bytes: a
cached row is bit-identical to the same row computed fresh, whatever batch it arrives in.
Trailing padding is trimmed before the key is taken only where the export verified that the
model ignores padded positions (``requirements.cache.padding == "trim"``).

Why a third, *whole* part: a row alone pays the branch graph's per-call overhead, so a batch of
many new answers is slower row by row than through the unsplit graph (measured on the reference
model, 2-core EPYC: 8 new answers 8.5 ms row by row against 2.3 ms unsplit). Where the export
recorded one (``requirements.whole``), a batch whose share of new answers reaches the measured
break-even runs through an unsplit graph, and one of its new rows is computed alone and cached, so
a classroom's answers still reach the cache. That graph is another artifact's own file, gated on
its own: whichever of the source artifact and the bundle's portable OpenVINO IRs the export
measured fastest on its largest batch (OpenVINO's INT8 kernels beat ONNX Runtime's at batch 32 on
the reference model, 10.1 against 13.9 ms). A kiosk that cannot run it (no ``openvino``
installed) runs every batch through the parts. Golden sets and the gate see the parts
(:meth:`Backend.run_reference`: every row alone, nothing cached).

Why a fourth, *joint* part: a new answer alone (a kiosk's everyday request) through the parts
pays two sessions; the joint part is the source graph that also returns the branch part's
outputs, so one call answers and fills the cache (reference model, 2-core EPYC: 0.73 against
0.90 ms). Recorded only where the export found its branch rows and answers bit-identical to the
parts' on every held-out row; used only for one new row given without padding to trim.

Torch-free: ONNX Runtime (through :func:`edgemm.runtime.sessions.create_session`) or, for parts
built for it, OpenVINO.
"""

from __future__ import annotations

import logging
import platform
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.manifest import Artifact, TensorSpec
from edgemm.errors import BundleError, UsageError
from edgemm.runtime.backends.base import Backend
from edgemm.runtime.sessions import create_session, default_threads, engine_errors

log = logging.getLogger("edgemm.runtime")

SPLIT_KIND = "split"
WHOLE_PART = "whole"
JOINT_PART = "joint"
ROUTES = ("auto", "parts", "whole")
ENGINES = ("onnxruntime", "openvino")
DEFAULT_CACHE_ENTRIES = 256
_REBUILD = "The bundle is damaged or was not written by this edgemm; export it again."


@dataclass(frozen=True)
class PartSpec:
    """One part of a split artifact (an entry of ``requirements.parts``).

    Attributes:
        name: ``"text"`` / ``"audio"`` (a cacheable branch) or ``"rest"``.
        path: The part's model file, bundle-relative.
        inputs / outputs: Its graph inputs and outputs, by name.
        engine: ``"onnxruntime"`` or ``"openvino"``.
        precision: What its weights are (``"int8"``, ``"fp32"``, ``"bf16"`` …).
    """

    name: str
    path: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    engine: str
    precision: str

    def to_dict(self) -> dict[str, Any]:
        """The part as recorded in the manifest."""
        return {"name": self.name, "path": self.path, "inputs": list(self.inputs), "outputs": list(self.outputs),
                "engine": self.engine, "precision": self.precision}


@dataclass(frozen=True)
class CachePolicy:
    """``requirements.cache``: which branch is cached, how many rows, how rows are keyed.

    Attributes:
        branch: The cached part's name (``"text"`` / ``"audio"``).
        entries: Most rows kept (least recently used leave first); 0 disables the cache.
        padding: ``"trim"``: trailing positions where ``mask`` is 0 are dropped before keying and
            computing (verified at export to change nothing but float rounding); ``"exact"``: rows
            are keyed and computed as given.
        mask: The input whose zeros mark padding (``"trim"`` only).
        min_length: Rows are never trimmed below this many positions (the graph's profile minimum).
    """

    branch: str
    entries: int
    padding: str = "exact"
    mask: str | None = None
    min_length: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The policy as recorded in the manifest."""
        return {"branch": self.branch, "entries": self.entries, "padding": self.padding, "mask": self.mask,
                "min_length": self.min_length}


def parse_requirements(artifact: Artifact) -> tuple[list[PartSpec], CachePolicy]:
    """The parts and cache policy of a ``split`` artifact, checked.

    Raises:
        BundleError: The record is incomplete or inconsistent (a part not among the artifact's
            files, no ``rest`` part, a cache naming no part, an unknown engine).
    """
    req = artifact.requirements
    raw_parts = req.get("parts")
    if not isinstance(raw_parts, list) or not raw_parts:
        raise BundleError(f"Split artifact {artifact.name!r} lists no parts.", hint=_REBUILD)
    parts = []
    for i, raw in enumerate(raw_parts):
        if not isinstance(raw, dict):
            raise BundleError(f"Split artifact {artifact.name!r}: parts[{i}] is not an object.", hint=_REBUILD)
        try:
            part = PartSpec(name=str(raw["name"]), path=str(raw["path"]), inputs=tuple(map(str, raw["inputs"])),
                            outputs=tuple(map(str, raw["outputs"])), engine=str(raw["engine"]),
                            precision=str(raw.get("precision", artifact.precision)))
        except (KeyError, TypeError) as exc:
            raise BundleError(f"Split artifact {artifact.name!r}: parts[{i}] lacks {exc}.", hint=_REBUILD) from exc
        if part.path not in artifact.files:
            raise BundleError(f"Split artifact {artifact.name!r}: part {part.name!r} names {part.path!r}, which is "
                              "not one of the artifact's files.", hint=_REBUILD)
        if part.engine not in ENGINES:
            raise BundleError(f"Split artifact {artifact.name!r}: part {part.name!r} has the unknown engine "
                              f"{part.engine!r}.", hint=f"Known: {', '.join(ENGINES)}. {_REBUILD}")
        weights = _ir_weights(part)
        if weights is not None and weights not in artifact.files:
            # OpenVINO reads the .bin beside the .xml: unlisted, it would load without its hash checked.
            raise BundleError(f"Split artifact {artifact.name!r}: part {part.name!r} is an OpenVINO IR whose weights "
                              f"{weights!r} are not one of the artifact's files.", hint=_REBUILD)
        parts.append(part)
    names = [p.name for p in parts]
    optional = {"rest", WHOLE_PART, JOINT_PART}
    if names.count("rest") != 1 or len(set(names)) != len(names) or len(set(names) - optional) != 1:
        raise BundleError(f"Split artifact {artifact.name!r} needs one branch part, one 'rest' part, at most one "
                          f"'{WHOLE_PART}' and one '{JOINT_PART}' part and unique part names, "
                          f"got {names}.", hint=_REBUILD)
    cache = req.get("cache")
    if not isinstance(cache, dict) or cache.get("branch") not in names or cache.get("branch") in optional:
        raise BundleError(f"Split artifact {artifact.name!r}: requirements.cache must name a branch part.",
                          hint=_REBUILD)
    entries = cache.get("entries", DEFAULT_CACHE_ENTRIES)
    if not isinstance(entries, int) or isinstance(entries, bool) or entries < 0:
        raise BundleError(f"Split artifact {artifact.name!r}: cache entries must be a count, got {entries!r}.",
                          hint=_REBUILD)
    padding = cache.get("padding", "exact")
    mask = cache.get("mask")
    if padding not in ("trim", "exact") or (padding == "trim" and not isinstance(mask, str)):
        raise BundleError(f"Split artifact {artifact.name!r}: cache padding must be 'exact', or 'trim' with a mask.",
                          hint=_REBUILD)
    policy = CachePolicy(branch=str(cache["branch"]), entries=entries, padding=padding, mask=mask,
                         min_length=int(cache.get("min_length", 1)))
    whole_fraction(artifact)  # checked with the rest of the record
    return parts, policy


def _ir_weights(part: PartSpec) -> str | None:
    """The ``.bin`` an OpenVINO part's ``.xml`` reads (None: not an OpenVINO IR)."""
    if part.engine != "openvino" or not part.path.endswith(".xml"):
        return None
    return part.path[: -len(".xml")] + ".bin"


def whole_fraction(artifact: Artifact) -> float | None:
    """The share of new rows from which a batch runs through the ``whole`` part (None: no such part).

    Raises:
        BundleError: A ``whole`` part without a valid ``requirements.whole.min_new_fraction`` (a
            number in (0, 1]), or the record without the part.
    """
    req = artifact.requirements
    has_part = any(isinstance(p, dict) and p.get("name") == WHOLE_PART for p in req.get("parts") or [])
    record = req.get("whole")
    if not has_part and record is None:
        return None
    fraction = record.get("min_new_fraction") if isinstance(record, dict) else None
    if (not has_part or not isinstance(fraction, (int, float)) or isinstance(fraction, bool)
            or not 0 < fraction <= 1):
        raise BundleError(f"Split artifact {artifact.name!r}: a '{WHOLE_PART}' part needs requirements.whole."
                          f"min_new_fraction in (0, 1], and that record needs the part.", hint=_REBUILD)
    return float(fraction)


def unavailable_reason(artifact: Artifact) -> str | None:
    """Why this machine cannot run ``artifact`` (None: it can).

    A part for OpenVINO needs the ``openvino`` package (and, for BF16, a CPU with BF16
    instructions); ONNX Runtime parts need nothing beyond the base install. The ``whole`` part is
    not required: without it every batch runs the parts (:attr:`SplitBackend.whole_unavailable`).
    """
    try:
        parts, _ = parse_requirements(artifact)
    except BundleError as exc:
        return exc.message
    for part in parts:
        if part.name != WHOLE_PART:
            reason = part_unavailable_reason(part)
            if reason is not None:
                return reason
    return None


def part_unavailable_reason(part: PartSpec) -> str | None:
    """Why this machine cannot run one part (None: it can)."""
    if part.engine != "openvino":
        return None
    from edgemm.runtime.backends.openvino import has_bf16, openvino_installed

    # Looked up, not imported: the import would cost a kiosk's cold start for a whole part that
    # may never load.
    if not openvino_installed():
        return f"part {part.name!r} runs on OpenVINO, which is not installed: pip install 'edgemm[openvino]'"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"part {part.name!r} was built for OpenVINO on x86 CPUs"
    if part.precision == "bf16" and not has_bf16():
        return f"part {part.name!r} runs in BF16, which this CPU lacks (no avx512_bf16 / amx_bf16)"
    return None


class _Part:
    """A loaded part: one engine session (or compiled OpenVINO model) and the outputs it returns."""

    def __init__(self, spec: PartSpec, root: Path, threads: int, cache_dir: Path | None = None):
        self.spec = spec
        self._outputs = list(spec.outputs)
        self.requests: Any = None
        self._session: Any = None
        if spec.engine == "onnxruntime":
            # The parts run back to back on the same cores: no part's workers may keep spinning.
            self._session = create_session(root / spec.path, threads=threads, stop_spinning=True)
        else:
            from edgemm.runtime.backends.openvino import kept_requests

            # Static-shape compiles only for the whole part: it answers batches and feeds no
            # cache, so a static compile (checked against the dynamic one within the precision's
            # tolerance) cannot make a cached row differ from the same row computed fresh.
            self.requests = kept_requests(
                root / spec.path, threads=threads, cache_dir=cache_dir, precision=spec.precision,
                inference_precision="bf16" if spec.precision == "bf16" else "f32",
                specialize_shapes=spec.name == WHOLE_PART)

    def run(self, feed: dict[str, np.ndarray], *, specialize: bool = True) -> dict[str, np.ndarray]:
        if self._session is not None:
            return dict(zip(self._outputs, self._session.run(self._outputs, feed)))
        return self.requests.infer({k: feed[k] for k in self.spec.inputs}, self._outputs, specialize=specialize)

    def close(self) -> None:
        if self.requests is not None:
            self.requests.close()


class SplitBackend(Backend):
    """A ``split`` artifact: the cached branch part per row, then the rest part on the batch.

    Args:
        root: The bundle directory.
        artifact: The split artifact (``requirements.parts`` and ``requirements.cache``).
        input_specs / output_specs: The manifest's graph interface.
        threads: Intra-op threads per part (default :func:`default_threads`).
        cache_entries: Override the manifest's cache size (0 disables caching).
        compile_cache: Keep OpenVINO parts' compiled models in the bundle's machine-local cache
            (off while a bundle is still being written).

    Attributes:
        whole_unavailable: Why the artifact's ``whole`` part cannot run here (None: it can, or
            there is none); without it every batch runs the parts.

    Raises:
        BundleError: The artifact's split record is inconsistent.
        UsageError: A negative ``cache_entries`` or ``threads``.
    """

    name = "split"

    def __init__(self, root: str | Path, artifact: Artifact, input_specs: list[TensorSpec],
                 output_specs: list[TensorSpec], *, threads: int | None = None, cache_entries: int | None = None,
                 compile_cache: bool = True):
        super().__init__(input_specs, output_specs)
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be at least 1, got {threads}.")
        if cache_entries is not None and cache_entries < 0:
            raise UsageError(f"cache_entries must not be negative, got {cache_entries}.")
        self.root = Path(root)
        self.artifact = artifact
        self.parts, policy = parse_requirements(artifact)
        self._whole_spec = next((p for p in self.parts if p.name == WHOLE_PART), None)
        self._joint_spec = next((p for p in self.parts if p.name == JOINT_PART), None)
        self._compile_cache = compile_cache
        if cache_entries is not None:
            policy = CachePolicy(policy.branch, cache_entries, policy.padding, policy.mask, policy.min_length)
        self.policy = policy
        self.threads = threads or default_threads()
        self._branch_spec = next(p for p in self.parts if p.name == policy.branch)
        self._rest_spec = next(p for p in self.parts if p.name == "rest")
        graph_inputs = {s.name for s in input_specs}
        unknown = [n for spec in (self._branch_spec, self._whole_spec, self._joint_spec) if spec is not None
                   for n in spec.inputs if n not in graph_inputs]
        if unknown:
            raise BundleError(f"Split artifact {artifact.name!r}: its parts read {unknown}, which are "
                              "not graph inputs.", hint=_REBUILD)
        for spec in (p for p in (self._rest_spec, self._whole_spec, self._joint_spec) if p is not None):
            wanted = [s.name for s in output_specs] + (list(self._branch_spec.outputs) if spec is self._joint_spec else [])
            missing = [name for name in wanted if name not in spec.outputs]
            if missing:
                raise BundleError(f"Split artifact {artifact.name!r}: its {spec.name} part does not return {missing}, "
                                  "which the model outputs.", hint=_REBUILD)
        if policy.padding == "trim" and policy.mask not in self._branch_spec.inputs:
            raise BundleError(f"Split artifact {artifact.name!r}: the padding mask {policy.mask!r} is not an input "
                              f"of the {policy.branch} part.", hint=_REBUILD)
        self._output_names = [s.name for s in output_specs]
        self._loaded: dict[str, _Part] = {}
        self._cache: OrderedDict[bytes, tuple[np.ndarray, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._stats = self._zero_stats()
        self._enabled = True
        self._whole_fraction = whole_fraction(artifact)
        self.whole_unavailable = part_unavailable_reason(self._whole_spec) if self._whole_spec else None
        if self.whole_unavailable is not None:
            # An optional part: the batch route is lost, the answers are not.
            log.warning("split %s: every batch runs the parts: %s", artifact.name, self.whole_unavailable)
            self._whole_spec, self._whole_fraction = None, None
        self._route = "auto"
        self._specializing = True

    @classmethod
    def from_artifact(cls, root: str | Path, artifact: Artifact, input_specs: list[TensorSpec],
                      output_specs: list[TensorSpec], *, threads: int | None = None,
                      cache_entries: int | None = None, compile_cache: bool = True) -> SplitBackend:
        """The backend of a bundle's split artifact (files are hash-checked by bundle verification;
        ``input_specs`` / ``output_specs`` are the bundle's ``manifest.inputs`` / ``outputs``).

        Raises:
            BundleError: The artifact is not of kind ``split`` or its record is inconsistent.
        """
        if artifact.kind != SPLIT_KIND:
            raise BundleError(f"Artifact {artifact.name!r} is of kind {artifact.kind!r}, not {SPLIT_KIND!r}.")
        return cls(root, artifact, input_specs, output_specs, threads=threads, cache_entries=cache_entries,
                   compile_cache=compile_cache)

    # -- cache ---------------------------------------------------------------------------------

    def cache_stats(self) -> dict[str, int | str]:
        """``{"branch", "hits", "misses", "evictions", "whole_batches", "joint_answers", "entries",
        "capacity"}`` since the last clear (``whole_batches``: batches answered by the whole part;
        ``joint_answers``: new answers alone answered by the joint part)."""
        with self._lock:
            return {"branch": self.policy.branch, **self._stats, "entries": len(self._cache),
                    "capacity": self.policy.entries}

    def set_caching(self, enabled: bool) -> None:
        """Turn the answer cache on (the manifest's size) or off (every row computed, nothing kept).

        Benchmarks time the cache's worst case — every answer new — with it off.
        """
        with self._lock:
            self._enabled = bool(enabled)

    def clear_cache(self) -> None:
        """Forget every cached row and reset the counters."""
        with self._lock:
            self._cache.clear()
            self._stats = self._zero_stats()

    @staticmethod
    def _zero_stats() -> dict[str, int]:
        return {"hits": 0, "misses": 0, "evictions": 0, "whole_batches": 0, "joint_answers": 0}

    def new_rows(self, feed: dict[str, np.ndarray]) -> int:
        """How many distinct branch rows of ``feed`` are not cached (what a run would compute)."""
        rows = int(feed[self._branch_spec.inputs[0]].shape[0])
        keys = {self._key(feed, i)[0] for i in range(rows)}
        with self._lock:
            if not (self.policy.entries and self._enabled):
                return len(keys)
            return sum(1 for key in keys if key not in self._cache)

    def set_route(self, route: str) -> None:
        """Which graphs answer: ``"auto"`` (the parts, or the whole graph for batches of many new
        rows where the artifact has a whole part), ``"parts"`` (always the parts) or ``"whole"``.

        Raises:
            UsageError: An unknown route, or ``"whole"`` for an artifact without a whole part.
        """
        if route not in ROUTES:
            raise UsageError(f"Unknown route {route!r}; expected one of {', '.join(ROUTES)}.")
        if route == "whole" and self._whole_fraction is None:
            raise UsageError(f"Split artifact {self.artifact.name!r} has no '{WHOLE_PART}' part.")
        self._route = route


    def compare_joint(self, feed: dict[str, np.ndarray]) -> dict[str, float]:
        """Largest |difference| between the joint part and the parts on a one-row, unpadded
        ``feed``, per branch output and per model output (the export records a joint part only
        where every one is 0: a row it caches must be the row the branch part computes).

        Raises:
            UsageError: The artifact has no joint part, or ``feed`` is not one unpadded row.
        """
        if self._joint_spec is None:
            raise UsageError(f"Split artifact {self.artifact.name!r} has no '{JOINT_PART}' part.")
        _, length = self._key(feed, 0)
        if int(feed[self._branch_spec.inputs[0]].shape[0]) != 1 or not self._unpadded(feed, length):
            raise UsageError("compare_joint takes one row without padding to trim.")
        row = self._compute_row(feed, 0, length)
        parts = self._answer(feed, route="parts", caching=False, counted=False)
        joint = self._loaded[JOINT_PART].run({name: feed[name] for name in self._joint_spec.inputs})
        diffs = {name: float(np.abs(joint[name][0] - row[j]).max()) for j, name in enumerate(self._branch_spec.outputs)}
        diffs.update({name: float(np.abs(joint[name] - parts[name]).max()) for name in self._output_names})
        return diffs

    # -- Backend hooks -------------------------------------------------------------------------

    def _activate_impl(self) -> None:
        # The whole part loads the first time a batch needs it: a kiosk with one child at a time
        # never does, and it is as large as the other two parts together.
        self._loaded = {p.name: self._load(p) for p in self.parts if p.name != WHOLE_PART}

    def _load(self, spec: PartSpec) -> _Part:
        cache_dir = None
        if spec.engine == "openvino" and self._compile_cache:
            from edgemm.runtime.backends.openvino import model_cache_dir

            cache_dir = model_cache_dir(self.root)
        try:
            return _Part(spec, self.root, self.threads, cache_dir)
        except engine_errors() as exc:
            from edgemm.errors import RuntimeFailure

            raise RuntimeFailure(f"ONNX Runtime could not load a part of split artifact {self.artifact.name!r}: {exc}",
                                 hint="Run `edgemm verify` on the bundle; re-export it if verification fails.") from exc

    def _whole(self, spec: PartSpec) -> _Part:
        part = self._loaded.get(WHOLE_PART)
        if part is None:
            with self._load_lock:
                part = self._loaded.get(WHOLE_PART)
                if part is None:
                    part = self._loaded[WHOLE_PART] = self._load(spec)
        return part

    def _deactivate_impl(self) -> None:
        for part in self._loaded.values():
            part.close()
        self._loaded = {}

    def set_shape_specialization(self, enabled: bool) -> None:
        """Let the whole part use (and make) static-shape compiles, or run only its dynamic model."""
        self._specializing = bool(enabled)

    def shape_stats(self) -> dict[str, int] | None:
        """The whole part's static-shape compile counters (None: not loaded, or none)."""
        requests = getattr(self._loaded.get(WHOLE_PART), "requests", None)
        return requests.shape_stats() if requests is not None else None

    def wait_for_compiles(self) -> bool:
        """Wait for the whole part's static-shape compile in flight, if any (True: there was one)."""
        requests = getattr(self._loaded.get(WHOLE_PART), "requests", None)
        return requests.wait_for_compiles() if requests is not None else False

    def _device_impl(self) -> str:
        return "cpu"

    def _engine_errors(self) -> tuple[type[BaseException], ...]:
        errors = engine_errors()
        if any(p.engine == "openvino" for p in self.parts):
            from edgemm.runtime.backends.openvino import OpenVinoError

            errors = (*errors, OpenVinoError)
        return errors

    def _run_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._answer(feed, route=self._route, caching=self._enabled and self.policy.entries > 0, counted=True)

    def _run_reference_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Every row computed alone through the parts; the cache is neither read nor written and the
        # counters stay as they are (a server's canary runs beside its requests).
        return self._answer(feed, route="parts", caching=False, counted=False)

    def _answer(self, feed: dict[str, np.ndarray], *, route: str, caching: bool,
                counted: bool) -> dict[str, np.ndarray]:
        branch = self._branch_spec
        rows = int(feed[branch.inputs[0]].shape[0])
        values: list[tuple[np.ndarray, ...] | None] = [None] * rows
        keys = [self._key(feed, i) for i in range(rows)]
        if caching or counted:
            with self._lock:
                for i, (key, _) in enumerate(keys):
                    hit = self._cache.get(key) if caching else None
                    if hit is not None:
                        self._cache.move_to_end(key)
                        values[i] = hit
                    if counted:
                        self._stats["hits" if hit is not None else "misses"] += 1
        new = {key: (i, length) for i, (key, length) in enumerate(keys) if values[i] is None}
        if route == "auto" and rows == 1 and new and self._joint_spec is not None and self._unpadded(feed, keys[0][1]):
            return self._answer_joint(feed, keys[0][0], caching)
        whole = self._whole_spec
        if whole is not None and self._runs_whole(route, len(new), rows):
            out = self._whole(whole).run({name: feed[name] for name in whole.inputs}, specialize=self._specializing)
            with self._lock:
                self._stats["whole_batches"] += 1
            # One new row computed alone and kept: answers that keep coming in busy batches still
            # reach the cache, at the cost of one row per batch.
            if new and caching:
                key, (i, length) = next(iter(new.items()))
                self._store({key: self._compute_row(feed, i, length)})
            return {name: out[name] for name in self._output_names}
        fresh: dict[bytes, tuple[np.ndarray, ...]] = {}
        for i, (key, length) in enumerate(keys):
            if values[i] is not None:
                continue
            if key not in fresh:  # the same answer twice in one batch is computed once
                fresh[key] = self._compute_row(feed, i, length)
            values[i] = fresh[key]
        if caching:
            self._store(fresh)
        rest_feed = {name: feed[name] for name in self._rest_spec.inputs if name in feed}
        for j, name in enumerate(branch.outputs):
            rest_feed[name] = np.stack([v[j] for v in values if v is not None])
        out = self._loaded["rest"].run(rest_feed)
        return {name: out[name] for name in self._output_names}

    def _answer_joint(self, feed: dict[str, np.ndarray], key: bytes, caching: bool) -> dict[str, np.ndarray]:
        """One new answer alone through the joint part: the model's outputs and the branch row in
        one call (bit-exact to the parts', verified at export), the row kept for the cache."""
        out = self._loaded[JOINT_PART].run({name: feed[name] for name in self._joint_spec.inputs})
        if caching:
            self._store({key: tuple(np.array(out[name][0]) for name in self._branch_spec.outputs)})
        with self._lock:
            self._stats["joint_answers"] += 1
        return {name: out[name] for name in self._output_names}

    def _unpadded(self, feed: dict[str, np.ndarray], length: int | None) -> bool:
        """Whether the row is given at the length its branch row is computed at (no padding to trim)."""
        return length is None or all(feed[name].shape[1] == length for name in self._branch_spec.inputs)

    def _runs_whole(self, route: str, new: int, rows: int) -> bool:
        """Whether this batch goes through the whole part: two or more new rows, at least the
        recorded share of the batch (the break-even the export measured)."""
        if self._whole_fraction is None or route == "parts":
            return False
        return route == "whole" or (new >= 2 and new >= self._whole_fraction * rows)

    def _compute_row(self, feed: dict[str, np.ndarray], i: int, length: int | None) -> tuple[np.ndarray, ...]:
        """Row ``i``'s branch outputs, computed alone at ``length`` positions (None: as given)."""
        branch = self._branch_spec
        row = {name: np.ascontiguousarray(feed[name][i:i + 1, :length] if length is not None else feed[name][i:i + 1])
               for name in branch.inputs}
        out = self._loaded[branch.name].run(row)
        return tuple(np.array(out[name][0]) for name in branch.outputs)

    def _store(self, fresh: dict[bytes, tuple[np.ndarray, ...]]) -> None:
        if fresh:
            with self._lock:
                for key, value in fresh.items():
                    self._cache[key] = value
                    self._cache.move_to_end(key)
                while len(self._cache) > self.policy.entries:
                    self._cache.popitem(last=False)
                    self._stats["evictions"] += 1

    def _key(self, feed: dict[str, np.ndarray], row: int) -> tuple[bytes, int | None]:
        """The cache key of one row (its inputs' exact bytes, shapes and dtypes) and the length to
        compute it at (None: as given)."""
        length: int | None = None
        if self.policy.padding == "trim":
            mask = feed[self.policy.mask][row]
            nonzero = np.flatnonzero(mask)
            length = max(int(nonzero[-1]) + 1 if nonzero.size else 0, self.policy.min_length)
        parts = []
        for name in self._branch_spec.inputs:
            value = feed[name][row] if length is None else feed[name][row, :length]
            value = np.ascontiguousarray(value)
            parts.append(f"{name}|{value.dtype.str}|{value.shape}|".encode() + value.tobytes())
        return b"\x00".join(parts), length
