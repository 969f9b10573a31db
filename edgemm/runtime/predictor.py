"""Predictor: verified bundle → preprocessing → best runnable artifact → predictions. Torch-free.

Fallback chain for ``device="auto"``: a TensorRT engine of the bundle (when TensorRT, a GPU and
the engine's compatibility record all fit this machine) → ONNX Runtime CUDA → the CPU. On the
CPU, ONNX Runtime, OpenVINO and split artifacts compete in one ranking measured on this machine
(:mod:`edgemm.runtime.ranking`), the same one ``bench`` headlines. Every skipped step is
logged (INFO, logger ``edgemm.runtime``) and kept in :attr:`Predictor.skipped` with its reason. Loading never
builds an engine: a stale or mismatched engine is reported with the command that rebuilds it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.bundle.manifest import Artifact, Manifest
from edgemm.bundle.verify import verify_bundle, verify_hashes
from edgemm.errors import (
    BackendUnavailableError,
    EdgemmError,
    InvalidInputError,
    MissingDependencyError,
    MissingModalityError,
    RuntimeFailure,
    UsageError,
)
from edgemm.runtime.backends.base import Backend, axis_meanings
from edgemm.runtime.backends.kinds import (  # noqa: F401  (unavailable_reason, RUNNABLE_KINDS: public here too)
    RUNNABLE_KINDS,
    _ep_can_run,
    make_backend,
    unavailable_reason,
)
from edgemm.runtime.backends.onnxruntime import tensorrt_ep_options
from edgemm.runtime.golden import check_golden, load_golden
from edgemm.runtime.postprocess import TOKEN_TYPES, Prediction, postprocess
from edgemm.runtime.preprocess.pipeline import Preprocessor
from edgemm.runtime.ranking import (
    INTERLEAVE_MAX_BYTES,
    Ranking,
    batch_one,
    cached_ranking,
    prune_unfused,
    rank,
    ranking_mode,
    static_order,
)
from edgemm.runtime.semantics import check_semantics
from edgemm.runtime.sessions import available_devices, default_threads
from edgemm.runtime.trt_compat import (
    ENGINE_KIND,
    CompatPolicy,
    HostInfo,
    bundle_cache_dir,
    check_engine,
    rebuild_hint,
)

log = logging.getLogger("edgemm.runtime")

DEVICES = ("auto", "cpu", "cuda", "tensorrt", "tensorrt-ep")
# Preference per device, best first. INT8 on a GPU provider is slower than FP32 (no QLinear CUDA
# kernels), so CUDA prefers FP16; CPUs prefer INT8 where the bundle ships one that passed its gate.
# TensorRT (engines or the ORT TensorRT EP) runs Q/DQ INT8 on tensor cores: INT8 first.
_PRECISION_ORDER = {"cuda": ("fp16", "fp32", "mixed"), "cpu": ("int8", "mixed", "bf16", "fp32"),
                    "tensorrt-ep": ("int8", "fp16", "fp32"), "tensorrt": ("int8", "fp16", "fp32")}
def choose_engine(manifest: Manifest, host: HostInfo, policy: CompatPolicy | None = None,
                  requested: str | None = None) -> tuple[list[Artifact], list[str]]:
    """TensorRT engine artifacts that may be deserialized here, best first, and why the others may not.

    Decided from the manifest's compatibility records only: nothing is read or deserialized.
    """
    engines = [a for a in manifest.artifacts if a.kind == ENGINE_KIND and (requested is None or a.name == requested)]
    if requested is not None and not engines:
        manifest.artifact(requested)  # raises with the valid names when unknown
        raise BackendUnavailableError(f"Artifact {requested!r} is not a TensorRT engine.",
                                      hint="Use --device cuda or cpu for ONNX artifacts.")
    if not engines:
        return [], ["tensorrt: the bundle has no TensorRT engine (build one on the device: edgemm build-engine BUNDLE)"]
    order = _PRECISION_ORDER["tensorrt"]
    usable, skipped = [], []
    for art in engines:
        decision = check_engine(art.requirements, host, policy)
        if not decision.ok:
            fix = f" — {rebuild_hint('BUNDLE', art.source_artifact)}" if decision.rebuildable else ""
            skipped.append(f"{art.name}: TensorRT engine {decision.summary()}{fix}")
        elif art.gate_failed:
            skipped.append(f"{art.name}: failed its accuracy gate")
        else:
            usable.append(art)
    usable.sort(key=lambda a: order.index(a.precision) if a.precision in order else len(order))
    return usable, skipped


def candidates(manifest: Manifest, device: str) -> tuple[list[Artifact], list[str]]:
    """The artifacts that may run on ``device`` here (gate passed, kind runnable), in the static
    order, and why each other artifact may not."""
    skipped: list[str] = []
    usable: list[Artifact] = []
    order = _PRECISION_ORDER[device]
    for art in manifest.artifacts:
        reason = unavailable_reason(art, device)
        if reason is not None:
            skipped.append(f"{art.name}: {reason}")
        elif art.gate_failed:
            skipped.append(f"{art.name}: failed its accuracy gate")
        elif art.precision not in order:
            skipped.append(f"{art.name}: precision {art.precision} is not used on {device}")
        else:
            usable.append(art)
    if device == "cpu":
        return static_order(usable), skipped
    # Same precision: prefer the fused graph, then dynamic INT8 over QDQ.
    usable.sort(key=lambda a: (order.index(a.precision), 0 if a.graph_optimized else 1,
                               1 if a.quantization_method == "int8-static-qdq" else 0))
    return usable, skipped


def choose_artifact(manifest: Manifest, device: str, requested: str | None = None, *,
                    bundle: str | os.PathLike[str] | None = None, threads: int | None = None) -> tuple[Artifact, list[str]]:
    """Pick the artifact to run on ``device``: the one ranking ``predict``, ``serve`` and ``bench`` share.

    On ``cpu`` with ``bundle`` given, the candidates are ranked by measurement on this machine
    (cached per machine and bundle; see :mod:`edgemm.runtime.ranking`), exactly as
    :meth:`Predictor.load` ranks them. Without ``bundle`` nothing can be measured: a ranking
    this machine cached for the manifest is used, else the static order decides — pass
    ``bundle`` to be sure of the runtime's answer.

    Args:
        manifest: The bundle's manifest.
        device: ``"cpu"``, ``"cuda"`` or ``"tensorrt-ep"``.
        requested: An artifact name that wins if it can run here.
        bundle: The bundle directory (enables the measured ranking on ``cpu``).
        threads: The intra-op threads the predictor will use (default: :func:`default_threads`).

    Returns:
        The artifact and why each other artifact was skipped or ranked lower.

    Raises:
        UnknownArtifactError: ``requested`` is not in the bundle (the hint lists the names).
        BackendUnavailableError: ``requested`` cannot run here, or nothing can.
    """
    if requested is not None:
        return _requested(manifest, device, requested), []
    usable, skipped = candidates(manifest, device)
    if not usable:
        raise _nothing_runs(device, skipped)
    if device == "cpu" and bundle is None and ranking_mode() != "static":
        measured, pruned = prune_unfused(usable)
        cached = cached_ranking(manifest, [a.name for a in measured], threads or default_threads())
        if cached is not None:
            return manifest.artifact(cached.best), [*skipped, *pruned, *cached.reasons()]
    if device != "cpu" or bundle is None:
        skipped += _static_reasons(usable, device)
        return usable[0], skipped
    root = Path(bundle)
    ranking, live, pruned = _rank_cpu(root, manifest, usable, threads or default_threads(), "all")
    for backend in live.values():
        backend.deactivate()
    return manifest.artifact(ranking.best), [*skipped, *pruned, *ranking.reasons()]


def _requested(manifest: Manifest, device: str, requested: str) -> Artifact:
    art = manifest.artifact(requested)
    reason = unavailable_reason(art, device)
    if reason is not None:
        raise BackendUnavailableError(
            f"Artifact {requested!r} cannot run on {device}: {reason} (providers: {', '.join(art.providers)}).",
            hint="Choose another --artifact or --device.",
        )
    return art


def _nothing_runs(device: str, skipped: list[str]) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"No artifact of this bundle can run on {device}: " + "; ".join(skipped),
        hint="Use --device cpu, or export with a recipe that targets this device.",
    )


def _static_reasons(usable: list[Artifact], device: str) -> list[str]:
    return [f"{art.name}: ranked below {usable[0].name} on {device}" for art in usable[1:]]


def _rank_cpu(root: Path, manifest: Manifest, usable: list[Artifact], threads: int,
              optimization: str) -> tuple[Ranking, dict[str, Backend], list[str]]:
    """Rank the CPU candidates (cache or measurement); returns the ranking, the live backends a
    measurement left open, and the reasons for candidates not measured at all."""
    measured, pruned = prune_unfused(usable)

    def open_backend(art: Artifact) -> Backend:
        verify_hashes(root, manifest, art.files)  # before the engine reads a byte
        backend = make_backend(root, art, manifest.inputs, manifest.outputs, threads=threads, optimization=optimization)
        backend.activate()
        return backend

    dynamic = {spec.name for spec in manifest.inputs if spec.shape and not isinstance(spec.shape[0], int)}

    def feed() -> dict[str, np.ndarray] | None:
        if manifest.golden is None:
            return None
        return batch_one(load_golden(root, manifest).feed, dynamic, manifest.preprocessing.get("text"))

    sizes = {entry.path: entry.bytes for entry in manifest.files}
    total = sum(sizes.get(path, 0) for art in measured for path in art.files)
    ranking, live = rank(root, measured, open_backend, feed, threads=threads,
                         sequential=total > INTERLEAVE_MAX_BYTES)
    return ranking, live, pruned


class Predictor:
    """Run a bundle on this machine.

    Use :meth:`load`; then :meth:`predict` with raw inputs or :meth:`run` with a feed dict.
    """

    def __init__(self, bundle: Path, manifest: Manifest, backend: Backend, artifact: Artifact,
                 skipped: list[str]):
        self.bundle = bundle
        self.manifest = manifest
        self.backend = backend
        self.artifact = artifact
        self.skipped = skipped
        # How the CPU artifacts were ranked on this machine (None: not ranked, e.g. GPU or named).
        self.ranking: Ranking | None = None
        self.preprocessor = Preprocessor(bundle, manifest.preprocessing, manifest.modalities)
        backend.axis_meanings = axis_meanings(manifest)  # out-of-profile inputs explained in user terms
        self.max_batch = manifest.max_batch or 64

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike[str],
        *,
        device: str = "auto",
        artifact: str | None = None,
        threads: int | None = None,
        optimization: str = "all",
        allow_cpu_fallback: bool | None = None,
        engine_policy: CompatPolicy | None = None,
        host: HostInfo | None = None,
    ) -> Predictor:
        """Verify ``bundle`` and prepare the best artifact this machine can run.

        Args:
            bundle: Bundle directory.
            device: ``"auto"`` (TensorRT engine → ORT CUDA → ORT CPU, each skip logged),
                ``"cpu"``, ``"cuda"``, ``"tensorrt"`` (a native engine of the bundle, or an error)
                or ``"tensorrt-ep"`` (an ONNX artifact through ONNX Runtime's TensorRT EP, with
                engine and timing caches in this machine's cache directory).
            artifact: Force an artifact by name (default: the best for the device; on the CPU the
                best measured on this machine, see :mod:`edgemm.runtime.ranking`).
            threads: CPU intra-op threads (default: cores, at most 4).
            optimization: ONNX Runtime graph optimization level.
            allow_cpu_fallback: Accept a CUDA session that ONNX Runtime placed on the CPU, reported
                in :attr:`degraded`. Default: True for ``"auto"``, False otherwise.
            engine_policy: Accept version-compatible engines / plugins (refused by default).
            host: This machine's TensorRT/CUDA facts (probed when an engine is considered).

        Raises:
            BundleError: The bundle fails verification, or its manifest does not describe a
                runnable model (:func:`~edgemm.runtime.semantics.check_semantics`).
            BundleIntegrityError: A file it reads differs from its recorded sha256 (exit 4).
            BackendUnavailableError: The device cannot be used (exit 3).
        """
        if device not in DEVICES:
            raise UsageError(f"Unknown device {device!r}.", hint=f"Choose one of: {', '.join(DEVICES)}.")
        root = Path(bundle)
        # Structure (listing, links, sizes) of everything now; hashes of exactly the files this
        # predictor will read, before they are read. Hashing every artifact of a multi-precision
        # bundle at each start would cost a kiosk seconds for files it never opens.
        manifest = verify_bundle(root, check_hashes=False)
        # The manifest's numbers are checked before any session, tokenizer or buffer exists.
        check_semantics(manifest)
        skipped: list[str] = []
        if device in ("auto", "tensorrt"):
            loaded = _load_engine(root, manifest, device, artifact, engine_policy, host, skipped)
            if loaded is not None:
                return loaded
            if artifact is not None and manifest.artifact(artifact).kind == ENGINE_KIND:
                raise BackendUnavailableError(f"Engine {artifact!r} cannot run here: " + "; ".join(skipped),
                                              hint="Choose an ONNX --artifact, or rebuild the engine on this device.")
        if device == "auto":
            usable = available_devices()
            chain = [d for d in ("cuda", "cpu") if d in usable] or ["cpu"]
            if "cuda" not in usable:
                skipped.append("cuda: ONNX Runtime here has no CUDA provider")
        else:
            chain = [device]
        last: EdgemmError | None = None
        for step in chain:
            fallback = allow_cpu_fallback if allow_cpu_fallback is not None else device == "auto"
            try:
                predictor = cls._load_artifact(root, manifest, step, artifact, threads, optimization, fallback, skipped)
            except BackendUnavailableError as exc:
                if device != "auto" or step == chain[-1]:
                    raise
                skipped.append(f"{step}: {exc.message}")
                last = exc
                continue
            return predictor
        raise last or BackendUnavailableError("No artifact can run here.")  # pragma: no cover - chain ends on cpu

    @classmethod
    def _load_artifact(cls, root: Path, manifest: Manifest, device: str, artifact: str | None, threads: int | None,
                       optimization: str, fallback: bool, skipped: list[str]) -> Predictor:
        if device == "cuda" and "cuda" not in available_devices():
            raise BackendUnavailableError(
                "--device cuda was requested but ONNX Runtime here has no CUDA provider.",
                hint="Install onnxruntime-gpu instead of onnxruntime (see README), or use --device cpu.",
            )
        options = None
        ort_device = "tensorrt" if device == "tensorrt-ep" else device
        ranking: Ranking | None = None
        live: dict[str, Backend] = {}
        if artifact is not None and manifest.artifact(artifact).kind != ENGINE_KIND:
            order = [_requested(manifest, device, artifact)]
        else:
            order, why = candidates(manifest, device)
            skipped += why
            if not order:
                raise _nothing_runs(device, skipped)
            if device == "cpu":
                ranking, live, pruned = _rank_cpu(root, manifest, order, threads or default_threads(), optimization)
                skipped += pruned
                order = [manifest.artifact(name) for name in ranking.order]
            else:
                skipped += _static_reasons(order, device)
        try:
            for index, chosen in enumerate(order):
                backend = live.pop(chosen.name, None)
                if backend is not None:
                    verify_hashes(root, manifest, manifest.asset_paths())
                    break
                verify_hashes(root, manifest, [*chosen.files, *manifest.asset_paths()])
                if device == "tensorrt-ep":
                    options = tensorrt_ep_options(manifest.inputs, bundle_cache_dir(root), fp16=chosen.precision == "fp16",
                                                  int8=chosen.quantization_method == "int8-static-qdq")
                backend = make_backend(root, chosen, manifest.inputs, manifest.outputs, device=ort_device, threads=threads,
                                       optimization=optimization, allow_cpu_fallback=fallback, provider_options=options)
                try:
                    backend.activate()
                    break
                except (BackendUnavailableError, MissingDependencyError, RuntimeFailure) as exc:
                    # A requested or ONNX Runtime artifact that cannot load is an error; a
                    # ranked OpenVINO / split artifact that cannot gives way to the next one.
                    if artifact is not None or chosen.kind == "onnx" or index == len(order) - 1:
                        raise
                    skipped.append(f"{chosen.name}: could not be loaded here: {exc.message}")
        finally:
            for other in live.values():
                other.deactivate()
        if ranking is not None:
            skipped += [r for r in ranking.reasons() if not r.startswith(f"{chosen.name}:")]
        for reason in skipped:
            log.info("skipped %s", reason)
        log.info("artifact %s on %s", chosen.name, backend.device)
        predictor = cls(root, manifest, backend, chosen, skipped)
        predictor.ranking = ranking
        return predictor

    # -- properties -----------------------------------------------------------------------

    @property
    def device(self) -> str:
        """Where inference actually runs."""
        return self.backend.device

    @property
    def degraded(self) -> str | None:
        """Why this predictor runs below what was asked for (e.g. CUDA fell back to CPU)."""
        return getattr(self.backend, "degraded", None)

    @property
    def labels(self) -> list[str]:
        """The bundle's labels, in the order of the model's outputs."""
        return self.manifest.labels

    # -- inference ------------------------------------------------------------------------

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on an already preprocessed feed."""
        return self.backend.run(feed)

    def predict(self, *, text: Any = None, image: Any = None, audio: Any = None) -> Prediction | list[Prediction]:
        """Predict from raw inputs.

        Each argument is one item or a list (a batch): ``text`` str, ``image`` bytes / path /
        PIL image / uint8 array, ``audio`` WAV bytes / path / ``(samples, rate)``. For
        image–text similarity bundles, ``text`` is the list of candidate texts.

        Returns:
            One :class:`Prediction` for single items, else a list.

        Raises:
            MissingModalityError: A required modality is missing.
            InvalidInputError / InputTooLargeError / UnsupportedMediaError: Bad inputs.
        """
        given = {"text": text, "image": image, "audio": audio}
        unknown = [m for m, v in given.items() if v is not None and m not in self.manifest.modalities]
        if unknown:
            raise InvalidInputError(
                f"This model does not take {', '.join(unknown)}.",
                hint=f"It takes: {', '.join(self.manifest.modalities)}.",
            )
        candidates = None
        if self.manifest.task == "image_text_similarity":
            if text is None:
                raise MissingModalityError("Image–text similarity needs candidate texts.", hint="Pass text=[...].")
            candidates = [text] if isinstance(text, (str, bytes)) else list(text)
            given["text"] = candidates
        batched = [m for m, v in given.items() if isinstance(v, (list, tuple)) and not _is_audio_pair(v)
                   and not (m == "text" and candidates is not None)]
        single = not batched
        batch = {m: (list(v) if m in batched or (m == "text" and candidates is not None) else [v])
                 for m, v in given.items() if m in self.manifest.modalities and v is not None}
        for m in self.manifest.modalities:
            if m not in batch:
                rows = max((len(v) for k, v in batch.items() if k != "text" or candidates is None), default=1)
                batch[m] = [None] * rows
        predictions: list[Prediction] = []
        rows = max(len(v) for k, v in batch.items() if k != "text" or candidates is None)
        for start in range(0, rows, self.max_batch):
            chunk = {m: (v if m == "text" and candidates is not None else v[start:start + self.max_batch])
                     for m, v in batch.items()}
            outputs = self.run(self.preprocessor(chunk))
            predictions.extend(postprocess(outputs, self.manifest,
                                           candidates=candidates, tokens=self._alignments(chunk)))
        return predictions[0] if single else predictions

    def _alignments(self, chunk: dict[str, list[Any]]) -> list[Any] | None:
        """Where each token of the chunk's texts came from, for token classification (else None)."""
        if self.manifest.postprocessing.get("type") not in TOKEN_TYPES or self.preprocessor.text is None:
            return None
        return self.preprocessor.text.alignments(["" if t is None else t for t in chunk.get("text", [])])

    def check_golden(self) -> dict[str, Any]:
        """Known-answer canary: reproduce the golden set through this predictor's own session.

        Raises:
            GoldenSetError: Preprocessing or the outputs differ from what the export recorded.
        """
        return check_golden(self.bundle, self.manifest, self.artifact.name, device=self.device,
                            backend=self.backend)

    def close(self) -> None:
        """Release the session."""
        self.backend.deactivate()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_audio_pair(value: Any) -> bool:
    """``(samples, rate)`` is one audio item, not a batch of two."""
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], np.ndarray)
            and isinstance(value[1], (int, np.integer)))


def _load_engine(root: Path, manifest: Manifest, device: str, artifact: str | None, policy: CompatPolicy | None,
                 host: HostInfo | None, skipped: list[str]) -> Predictor | None:
    """First step of the chain: a native TensorRT engine, or None with the reasons in ``skipped``."""
    requested = artifact if artifact is not None and manifest.artifact(artifact).kind == ENGINE_KIND else None
    if artifact is not None and requested is None:
        return None  # an ONNX artifact was asked for by name
    has_engines = any(a.kind == ENGINE_KIND for a in manifest.artifacts)
    if not has_engines:
        if device == "tensorrt":
            raise BackendUnavailableError("The bundle has no TensorRT engine.",
                                          hint="Build one on this device: edgemm build-engine BUNDLE; or use --device tensorrt-ep.")
        return None
    if host is None:
        from edgemm.runtime.trt_compat import probe_host

        host = probe_host()
    candidates, why = choose_engine(manifest, host, policy, requested)
    skipped += why
    from edgemm.runtime.backends.tensorrt import TensorRTBackend

    for art in candidates:
        try:
            backend = TensorRTBackend.from_bundle(root, manifest, art, host=host, policy=policy)
            verify_hashes(root, manifest, manifest.asset_paths())
            backend.activate()
        except (BackendUnavailableError, MissingDependencyError, RuntimeFailure) as exc:
            skipped.append(f"{art.name}: TensorRT could not load the engine: {exc.message}")
            continue
        for reason in skipped:
            log.info("skipped %s", reason)
        log.info("artifact %s on TensorRT", art.name)
        return Predictor(root, manifest, backend, art, list(skipped))
    if device == "tensorrt":
        raise BackendUnavailableError("No TensorRT engine of this bundle can run here: " + "; ".join(skipped),
                                      hint="Rebuild on this device: edgemm build-engine BUNDLE --rebuild; "
                                           "or use --device cuda / cpu.")
    for reason in skipped:
        log.info("skipped %s", reason)
    return None
