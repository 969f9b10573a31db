"""Predictor: verified bundle → preprocessing → best runnable artifact → predictions. Torch-free."""

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
    InvalidInputError,
    MissingModalityError,
    UsageError,
)
from edgemm.runtime.backends.onnxruntime import OrtBackend, available_devices
from edgemm.runtime.postprocess import Prediction, postprocess
from edgemm.runtime.preprocess.pipeline import Preprocessor

log = logging.getLogger("edgemm.runtime")

DEVICES = ("auto", "cpu", "cuda")
# Preference per device, best first. INT8 on a GPU provider is slower than FP32 (no QLinear CUDA
# kernels), so CUDA prefers FP16; CPUs prefer INT8 where the bundle ships one that passed its gate.
_PRECISION_ORDER = {"cuda": ("fp16", "fp32", "mixed"), "cpu": ("int8", "mixed", "fp32")}
_PROVIDER = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def choose_artifact(manifest: Manifest, device: str, requested: str | None = None) -> tuple[Artifact, list[str]]:
    """Pick the artifact to run on ``device``; returns it and why the others were skipped."""
    if requested is not None:
        art = manifest.artifact(requested)
        if _PROVIDER[device] not in art.providers:
            raise BackendUnavailableError(
                f"Artifact {requested!r} cannot run on {device} (providers: {', '.join(art.providers)}).",
                hint="Choose another --artifact or --device.",
            )
        return art, []
    skipped: list[str] = []
    ranked: list[tuple[tuple[int, int, int], Artifact]] = []
    order = _PRECISION_ORDER[device]
    for art in manifest.artifacts:
        if art.kind != "onnx":
            skipped.append(f"{art.name}: kind {art.kind} has no backend in this runtime")
        elif _PROVIDER[device] not in art.providers:
            skipped.append(f"{art.name}: not built for {device}")
        elif art.validation.get("gate", {}).get("passed", True) is False:
            skipped.append(f"{art.name}: failed its accuracy gate")
        elif art.precision not in order:
            skipped.append(f"{art.name}: precision {art.precision} is not used on {device}")
        else:
            # Same precision: prefer the fused graph, then (CPU) dynamic INT8 over QDQ, whose
            # S8S8 kernels are slow on CPUs without VNNI.
            method = (art.quantization or {}).get("method", "")
            ranked.append(((order.index(art.precision), 0 if art.requirements.get("graph_optimized") else 1,
                            1 if method == "int8-static-qdq" else 0), art))
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

    def __init__(self, bundle: Path, manifest: Manifest, backend: OrtBackend, artifact: Artifact,
                 skipped: list[str]):
        self.bundle = bundle
        self.manifest = manifest
        self.backend = backend
        self.artifact = artifact
        self.skipped = skipped
        self.preprocessor = Preprocessor(bundle, manifest.preprocessing, manifest.modalities)
        batch_profile = next((t.profile.get("batch") for t in manifest.inputs if "batch" in t.profile), None)
        self.max_batch = int(batch_profile[-1]) if batch_profile else 64

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
    ) -> Predictor:
        """Verify ``bundle`` and prepare the best artifact this machine can run.

        Args:
            bundle: Bundle directory.
            device: ``"auto"`` (CUDA when ONNX Runtime has it, else CPU), ``"cpu"`` or ``"cuda"``.
            artifact: Force an artifact by name (default: the best for the device).
            threads: CPU intra-op threads (default: cores, at most 4).
            optimization: ONNX Runtime graph optimization level.
            allow_cpu_fallback: Accept a CUDA session that ONNX Runtime placed on the CPU, reported
                in :attr:`degraded`. Default: True for ``"auto"``, False for ``"cuda"``.

        Raises:
            BundleError: The bundle fails verification.
            BackendUnavailableError: The device cannot be used (exit 3).
        """
        if device not in DEVICES:
            raise UsageError(f"Unknown device {device!r}.", hint=f"Choose one of: {', '.join(DEVICES)}.")
        root = Path(bundle)
        # Structure (listing, links, sizes) of everything now; hashes of exactly the files this
        # predictor will read, before they are read. Hashing every artifact of a multi-precision
        # bundle at each start would cost a kiosk seconds for files it never opens.
        manifest = verify_bundle(root, check_hashes=False)
        if device == "auto":
            usable = available_devices()
            device = usable[0] if usable else "cpu"
            if device == "cpu":
                log.info("device auto: using the CPU (ONNX Runtime here has no CUDA provider)")
        elif device == "cuda" and "cuda" not in available_devices():
            raise BackendUnavailableError(
                "--device cuda was requested but ONNX Runtime here has no CUDA provider.",
                hint="Install onnxruntime-gpu instead of onnxruntime (see README), or use --device cpu.",
            )
        fallback = allow_cpu_fallback if allow_cpu_fallback is not None else device != "cuda"
        chosen, skipped = choose_artifact(manifest, device, artifact)
        verify_hashes(root, manifest, [*chosen.files, *manifest.asset_paths()])
        for reason in skipped:
            log.info("skipped artifact %s", reason)
        backend = OrtBackend(root / chosen.path, manifest.inputs, manifest.outputs, device=device,
                             threads=threads, optimization=optimization, allow_cpu_fallback=fallback)
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
        return self.backend.degraded

    @property
    def labels(self) -> list[str]:
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
            predictions.extend(postprocess(outputs, self.manifest.postprocessing, self.manifest.labels,
                                           candidates=candidates))
        return predictions[0] if single else predictions

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
