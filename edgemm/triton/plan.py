"""Repository-wide decisions, made once from the manifest and the options before anything is written.

Which artifacts go in (and which one the ensembles run), the model base name, the shared batch
axis, ``max_batch_size``, the dynamic batcher's preferred sizes and the golden set used for
warm-up: every role module reads them from one :class:`Plan`, so an invalid bundle or option is
refused before the staging directory exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import ENGINE_KIND, Artifact, Manifest
from edgemm.errors import BundleError, UsageError
from edgemm.recipes import TritonSection
from edgemm.runtime.postprocess import PER_LABEL_TYPES
from edgemm.triton.errors import UnsupportedArtifactError, UnsupportedForTritonError
from edgemm.triton.naming import sanitize
from edgemm.triton.python_models import LABEL, PREDICTION, RAW_INPUTS, SCORE

log = logging.getLogger("edgemm.triton")

__all__ = ["ONNX_KINDS", "SUPPORTED_KINDS", "TENSORRT_KINDS", "Plan", "plan_repository"]

ONNX_KINDS = ("onnx",)
# Serialized TensorRT engines.
TENSORRT_KINDS = (ENGINE_KIND,)
SUPPORTED_KINDS = ONNX_KINDS + TENSORRT_KINDS
# Artifacts edgemm builds for its own kiosk runtime only (a default selection skips them).
KIOSK_ONLY_KINDS = ("openvino", "split")
# max_batch_size of a bundle without a batch profile.
DEFAULT_MAX_BATCH = 64
_ONE_BATCH_AXIS = "Serve this bundle with `edgemm serve`; Triton needs one shared batch axis."


@dataclass(frozen=True)
class Plan:
    """What the repository will hold, decided from a verified bundle and the options.

    Attributes:
        root: The bundle directory.
        manifest: Its verified manifest.
        options: The generation options.
        name: The models' base name (``--name``, else the bundle's name sanitised).
        artifacts: The selected artifacts; the first is the one the ensembles run.
        similarity: An image–text similarity bundle (one unbatched Python model, no ensembles).
        entities: A token-classification bundle (one unbatched Python model, no ensembles).
        batch_axis: The name of the shared leading axis (``""`` for similarity bundles).
        max_batch: Triton ``max_batch_size`` (0 for similarity bundles).
        preferred: The dynamic batcher's preferred batch sizes.
        golden: The golden set that warm-up samples come from, or None (no warm-up).
    """

    root: Path
    manifest: Manifest
    options: TritonSection
    name: str
    artifacts: tuple[Artifact, ...]
    similarity: bool
    entities: bool
    batch_axis: str
    max_batch: int
    preferred: tuple[int, ...]
    golden: GoldenSet | None

    @property
    def version(self) -> str:
        """The version directory's name (``"1"`` by default)."""
        return str(self.options.version)

    @property
    def primary(self) -> Artifact:
        """The artifact the ensembles (or the similarity model) run."""
        return self.artifacts[0]

    @property
    def label_output(self) -> str | None:
        """The output that gets Triton's ``label_filename`` (class scores, one per label), or None."""
        manifest = self.manifest
        if manifest.postprocessing.get("type") not in PER_LABEL_TYPES or not manifest.labels:
            return None
        name = manifest.primary_output
        spec = next((o for o in manifest.outputs if o.name == name), None)
        if spec is None or spec.shape[-1] != len(manifest.labels) or len(spec.shape) != 2:
            return None
        return name

    @property
    def text_pad_to(self) -> str:
        """The preprocess model's ``text_pad_to`` parameter: the bundle's text length, or ``""``
        (pad each request to its own longest text)."""
        text = self.manifest.preprocessing.get("text")
        if not text or self.options.text_padding == "longest":
            return ""
        return str(int(text["max_length"]))

    @property
    def python_device(self) -> str:
        """Device parameter of Python models: ONNX Runtime inside picks CUDA itself unless told cpu."""
        return "cpu" if self.options.device == "cpu" else "auto"


def plan_repository(root: Path, manifest: Manifest, options: TritonSection) -> Plan:
    """Decide the repository for a verified bundle.

    Args:
        root: The bundle directory.
        manifest: Its verified manifest.
        options: The generation options.

    Returns:
        The :class:`Plan`.

    Raises:
        UnsupportedArtifactError: A selected artifact's kind has no Triton backend here, or a
            similarity or token-classification bundle's selected artifact is not ONNX.
        UnsupportedForTritonError: The bundle's tensors have no single shared batch axis, or a graph
            tensor is named like one of the ensembles' own tensors.
        UsageError: An artifact is selected twice, or a batching option does not fit the bundle.
        BundleError: A selected artifact is not in the bundle.
    """
    artifacts = _select_artifacts(manifest, options)
    # Similarity bundles score each image against its own candidate texts: the texts have an
    # axis of their own, so there is no shared batch axis and one Python model serves them.
    # Token-classification bundles answer with words and character offsets in the request's
    # text, which an ensemble's postprocess model never sees: one Python model serves them too.
    similarity = manifest.task == "image_text_similarity"
    entities = manifest.task == "token_classification"
    if similarity or entities:
        _check_one_python_model("Similarity" if similarity else "Token-classification", artifacts[0], options)
        batch_axis, max_batch, preferred = "", 0, ()
    else:
        batch_axis = _batch_axis(manifest)
        _check_tensor_names(manifest)
        max_batch = _max_batch(manifest, options)
        preferred = _preferred(options, max_batch)
    return Plan(root=root, manifest=manifest, options=options, name=options.name or sanitize(manifest.name),
                artifacts=artifacts, similarity=similarity, entities=entities, batch_axis=batch_axis,
                max_batch=max_batch,
                preferred=preferred, golden=_golden(root, manifest, options))


def _select_artifacts(manifest: Manifest, options: TritonSection) -> tuple[Artifact, ...]:
    chosen = [manifest.artifact(n) for n in options.artifacts] if options.artifacts else list(manifest.artifacts)
    if not options.artifacts:
        # Artifacts for the kiosk's own runtime (OpenVINO IR, split graphs) have no Triton backend
        # here: a default selection leaves them out and says so; an explicit one is refused below,
        # and so is any kind edgemm does not know.
        for art in chosen:
            if art.kind in KIOSK_ONLY_KINDS:
                log.info("triton: artifact %s left out: kind %s has no Triton backend in this exporter",
                         art.name, art.kind)
        chosen = [a for a in chosen if a.kind not in KIOSK_ONLY_KINDS] or chosen
    bad = [a for a in chosen if a.kind not in SUPPORTED_KINDS]
    if bad:
        usable = [a.name for a in manifest.artifacts if a.kind in SUPPORTED_KINDS]
        listing = ", ".join(f"{a.name} ({a.kind})" for a in bad)
        hint = (f"Select supported artifacts with --artifact ({', '.join(usable)})." if usable
                else "Export the bundle with an ONNX artifact.")
        raise UnsupportedArtifactError(
            f"No Triton backend for artifact kind(s): {listing}. Supported kinds: {', '.join(SUPPORTED_KINDS)}.",
            hint=hint, details={"unsupported": [a.name for a in bad], "supported": usable})
    if len({a.name for a in chosen}) != len(chosen):
        raise UsageError("An artifact was selected twice.", hint="Give each --artifact once.")
    # The ensemble runs the first selected artifact; by default prefer fp32 ONNX, which runs
    # on every Triton device.
    if not options.artifacts:
        chosen.sort(key=lambda a: (a.kind not in ONNX_KINDS, a.precision != "fp32"))
    return tuple(chosen)


def _check_one_python_model(kind: str, primary: Artifact, options: TritonSection) -> None:
    if primary.kind not in ONNX_KINDS:
        raise UnsupportedArtifactError(
            f"{kind} bundles run on Triton through edgemm's Predictor, which takes an ONNX artifact; "
            f"{primary.name!r} is {primary.kind}.",
            hint="Select an ONNX artifact with --artifact.")
    if options.max_batch_size is not None or options.preferred_batch_sizes is not None:
        raise UsageError(f"{kind} bundles are not batched by Triton (each request is answered on its own "
                         "by edgemm's Predictor).",
                         hint="Drop --max-batch-size / --preferred-batch-sizes.")


def _batch_axis(manifest: Manifest) -> str:
    axes = {t.shape[0] for t in [*manifest.inputs, *manifest.outputs] if t.shape}
    if len(axes) != 1 or not isinstance(next(iter(axes)), str):
        raise UnsupportedForTritonError(
            f"Triton batches along one leading axis; this bundle's tensors lead with {sorted(map(str, axes))}.",
            hint=_ONE_BATCH_AXIS)
    for modality, spec in manifest.modality_specs().items():
        if spec.batch_axis != "batch":
            raise UnsupportedForTritonError(f"The {modality} inputs have their own batch axis ({spec.batch_axis}).",
                                            hint=_ONE_BATCH_AXIS)
    return str(next(iter(axes)))


def _check_tensor_names(manifest: Manifest) -> None:
    """The ensembles' own tensors (raw inputs, PREDICTION, LABEL, SCORE) share one namespace with the graph's."""
    taken = {PREDICTION, LABEL, SCORE, *RAW_INPUTS.values()}
    clash = sorted(taken & {t.name for t in [*manifest.inputs, *manifest.outputs]})
    if clash:
        raise UnsupportedForTritonError(f"Model tensors named {clash} clash with the ensemble's own tensors.",
                                        hint="Rename the graph's inputs/outputs when exporting.")


def _max_batch(manifest: Manifest, options: TritonSection) -> int:
    profile_max = DEFAULT_MAX_BATCH if manifest.max_batch is None else manifest.max_batch
    if options.max_batch_size is None:
        return profile_max
    if options.max_batch_size > profile_max:
        raise UsageError(f"--max-batch-size {options.max_batch_size} exceeds the bundle's batch profile "
                         f"maximum {profile_max}.", hint=f"Use at most {profile_max}.")
    return options.max_batch_size


def _preferred(options: TritonSection, max_batch: int) -> tuple[int, ...]:
    sizes = options.preferred_batch_sizes
    if sizes is None:
        return tuple(s for s in (4, 8, 16) if s <= max_batch) or (max_batch,)
    bad = [s for s in sizes if s < 1 or s > max_batch]
    if bad:
        raise UsageError(f"Preferred batch sizes {bad} are outside 1..{max_batch}.",
                         hint=f"Choose sizes between 1 and max_batch_size ({max_batch}).")
    return tuple(sorted(set(sizes)))


def _golden(root: Path, manifest: Manifest, options: TritonSection) -> GoldenSet | None:
    if not (options.warmup and manifest.golden):
        return None
    try:
        return GoldenSet.load(root / manifest.golden)
    except BundleError as exc:
        log.warning("no warm-up: %s", exc.message)
        return None
