"""Predictor: verified bundle → preprocessing → best runnable artifact → predictions. Torch-free.

Fallback chain for ``device="auto"``: a TensorRT engine of the bundle (when TensorRT, a GPU and
the engine's compatibility record all fit this machine) → ONNX Runtime CUDA → ONNX Runtime CPU.
Every skipped step is logged and kept in :attr:`Predictor.skipped` with its reason. Loading never
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
from edgemm.runtime.backends.onnxruntime import OrtBackend, tensorrt_ep_options
from edgemm.runtime.golden import check_golden
from edgemm.runtime.postprocess import TOKEN_TYPES, Prediction, postprocess
from edgemm.runtime.preprocess.pipeline import Preprocessor
from edgemm.runtime.semantics import check_semantics
from edgemm.runtime.sessions import available_devices
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
_PRECISION_ORDER = {"cuda": ("fp16", "fp32", "mixed"), "cpu": ("int8", "mixed", "fp32"),
                    "tensorrt-ep": ("int8", "fp16", "fp32"), "tensorrt": ("int8", "fp16", "fp32")}
_PROVIDER = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider", "tensorrt-ep": "TensorrtExecutionProvider"}


def _ep_can_run(art: Artifact, device: str) -> bool:
    if device != "tensorrt-ep":
        return _PROVIDER[device] in art.providers
    # The plain fp32 graph parses in TensorRT too; ORT-fused graphs carry contrib ops it cannot take.
    return _PROVIDER[device] in art.providers or (art.precision == "fp32" and not art.graph_optimized)


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


def choose_artifact(manifest: Manifest, device: str, requested: str | None = None) -> tuple[Artifact, list[str]]:
    """Pick the artifact to run on ``device``; returns it and why the others were skipped."""
    if requested is not None:
        art = manifest.artifact(requested)
        if art.kind != "onnx" or not _ep_can_run(art, device):
            raise BackendUnavailableError(
                f"Artifact {requested!r} cannot run on {device} (providers: {', '.join(art.providers)}).",
                hint="Choose another --artifact or --device.",
            )
        return art, []
    skipped: list[str] = []
    ranked: list[tuple[tuple[int, int, int], Artifact]] = []
    order = _PRECISION_ORDER[device]
    for art in manifest.artifacts:
        if art.kind == ENGINE_KIND:
            skipped.append(f"{art.name}: TensorRT engine, not an ONNX graph for {device}")
        elif art.kind != "onnx":
            skipped.append(f"{art.name}: kind {art.kind} has no backend in this runtime")
        elif not _ep_can_run(art, device):
            skipped.append(f"{art.name}: not built for {device}")
        elif art.gate_failed:
            skipped.append(f"{art.name}: failed its accuracy gate")
        elif art.precision not in order:
            skipped.append(f"{art.name}: precision {art.precision} is not used on {device}")
        else:
            # Same precision: prefer the fused graph, then (CPU) dynamic INT8 over QDQ, whose
            # S8S8 kernels are slow on CPUs without VNNI.
            ranked.append(((order.index(art.precision), 0 if art.graph_optimized else 1,
                            1 if art.quantization_method == "int8-static-qdq" else 0), art))
    if not ranked:
        raise BackendUnavailableError(
            f"No artifact of this bundle can run on {device}: " + "; ".join(skipped),
            hint="Use --device cpu, or export with a recipe that targets this device.",
        )
    ranked.sort(key=lambda pair: pair[0])
    skipped += [f"{art.name}: ranked below {ranked[0][1].name} on {device}" for _, art in ranked[1:]]
    return ranked[0][1], skipped


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
            artifact: Force an artifact by name (default: the best for the device).
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
                predictor = cls._load_onnx(root, manifest, step, artifact, threads, optimization, fallback, skipped)
            except BackendUnavailableError as exc:
                if device != "auto" or step == chain[-1]:
                    raise
                skipped.append(f"{step}: {exc.message}")
                last = exc
                continue
            return predictor
        raise last or BackendUnavailableError("No artifact can run here.")  # pragma: no cover - chain ends on cpu

    @classmethod
    def _load_onnx(cls, root: Path, manifest: Manifest, device: str, artifact: str | None, threads: int | None,
                   optimization: str, fallback: bool, skipped: list[str]) -> Predictor:
        if device == "cuda" and "cuda" not in available_devices():
            raise BackendUnavailableError(
                "--device cuda was requested but ONNX Runtime here has no CUDA provider.",
                hint="Install onnxruntime-gpu instead of onnxruntime (see README), or use --device cpu.",
            )
        chosen, why = choose_artifact(manifest, device, None if artifact and manifest.artifact(artifact).kind == ENGINE_KIND
                                      else artifact)
        skipped += why
        verify_hashes(root, manifest, [*chosen.files, *manifest.asset_paths()])
        for reason in skipped:
            log.info("skipped %s", reason)
        options = None
        ort_device = device
        if device == "tensorrt-ep":
            ort_device = "tensorrt"
            cache = bundle_cache_dir(root)
            options = tensorrt_ep_options(manifest.inputs, cache, fp16=chosen.precision == "fp16",
                                          int8=chosen.quantization_method == "int8-static-qdq")
        backend = OrtBackend(root / chosen.path, manifest.inputs, manifest.outputs, device=ort_device,
                             threads=threads, optimization=optimization, allow_cpu_fallback=fallback,
                             provider_options=options)
        backend.activate()
        log.info("artifact %s on %s", chosen.name, backend.device)
        return cls(root, manifest, backend, chosen, skipped)

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
