"""Write a Triton Inference Server model repository from a verified edgemm bundle.

Layout (``N`` = the model name, ``V`` = the version, default 1)::

    OUT/
      edgemm-triton.json           provenance: bundle, manifest sha256, edgemm version, models
      N/                           ensemble: TEXT / IMAGE / AUDIO bytes → PREDICTION, LABEL, SCORE, raw outputs
      N_python/                    the same ensemble over the Python-backend model variant
      N_preprocess/V/model.py      Python backend: edgemm's torch-free preprocessing
      N_postprocess/V/model.py     Python backend: edgemm's postprocessing
      N_<artifact>/V/<file>.onnx   onnxruntime backend (one per ONNX artifact); labels.txt
      N_<artifact>/V/model.plan    tensorrt backend (one per TensorRT plan artifact)
      N_<artifact>_python/V/       Python backend running the ensemble's ONNX artifact on ONNX Runtime

An image–text similarity bundle (each image scored against its own candidate texts, so no shared
batch axis) instead gets one Python-backend model ``N``: IMAGE (BYTES [1]) + TEXTS (BYTES [n]) →
SCORES (FP32 [n]), LABEL, PREDICTION, running edgemm's Predictor on the whole bundle; a
token-classification bundle (entities are words and character offsets in the request's text,
which an ensemble's postprocessing never sees) gets one too: TEXT (BYTES [1]) → PREDICTION.

Every Python model carries the bundle files it reads under ``V/bundle/`` (with the bundle's
``edgemm.json``) and hash-checks them at load; its ``model.py`` imports ``edgemm``, which must be
pip-installed in the Triton server's Python (the base install is torch-free). Installing rather
than vendoring keeps one versioned copy of the code; the third-party runtime dependencies
(numpy, onnxruntime, tokenizers, Pillow) have to be installed there either way.

Nothing is written unless every config parsed as Triton's ``ModelConfig``: the repository is
built in a staging directory next to ``OUT`` and renamed into place.

The work is split by role: :mod:`~edgemm.triton.plan` decides (artifacts, batch axis, sizes),
:mod:`~edgemm.triton.backend_models`, :mod:`~edgemm.triton.python_backend`,
:mod:`~edgemm.triton.ensembles` and :mod:`~edgemm.triton.similarity` write the models through one
:class:`~edgemm.triton.writer.ModelWriter`, :mod:`~edgemm.triton.warmup` adds warm-up from the
golden set and :mod:`~edgemm.triton.provenance` records where it all came from.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgemm.bundle.verify import verify_bundle
from edgemm.recipes import TRITON_DEVICES, TRITON_ORT_EPS, TritonSection
from edgemm.staging import staged_directory
from edgemm.triton.backend_models import write_backend_model
from edgemm.triton.ensembles import check_ensembles, write_ensemble
from edgemm.triton.errors import RepositoryExistsError
from edgemm.triton.naming import check_name, model_name
from edgemm.triton.plan import ONNX_KINDS, Plan, plan_repository
from edgemm.triton.provenance import write_provenance
from edgemm.triton.python_backend import write_postprocess, write_preprocess, write_python_model
from edgemm.triton.similarity import write_entities_model, write_similarity_model
from edgemm.triton.writer import ModelWriter

log = logging.getLogger("edgemm.triton")

__all__ = ["DEVICES", "ORT_EPS", "RepositoryOptions", "RepositoryReport", "write_repository"]

# The generation options are the recipe's [triton] section: one definition for `edgemm triton`,
# `--target triton` and the Python API.
RepositoryOptions = TritonSection
DEVICES = TRITON_DEVICES
ORT_EPS = TRITON_ORT_EPS


@dataclass
class RepositoryReport:
    """What was written.

    Attributes:
        repository: The repository directory.
        bundle: The bundle it was generated from.
        name: The models' base name.
        version: The model version written.
        ensemble: The main ensemble (or, for similarity bundles, the one model).
        python_ensemble: The ensemble over the Python-backend model variant, or None.
        models: Every model's role and details, by name, in write order.
    """

    repository: Path
    bundle: Path
    name: str
    version: int
    ensemble: str
    python_ensemble: str | None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (paths as strings).

        Returns:
            The dict (``edgemm triton --json`` prints it).
        """
        data = asdict(self)
        data["repository"], data["bundle"] = str(self.repository), str(self.bundle)
        return data


def write_repository(bundle: str | os.PathLike[str], output: str | os.PathLike[str],
                     options: RepositoryOptions | None = None, *, force: bool = False) -> RepositoryReport:
    """Verify ``bundle`` and write a Triton model repository at ``output``.

    Args:
        bundle: The bundle directory.
        output: The repository directory to create.
        options: Generation options (defaults: all artifacts, dynamic batching, warm-up).
        force: Replace an existing repository at ``output``.

    Returns:
        A :class:`RepositoryReport` listing every model.

    Raises:
        BundleError / InputPathError: The bundle fails verification (nothing is written).
        RepositoryExistsError: ``output`` exists and ``force`` is false.
        UnsupportedArtifactError: A selected artifact's kind has no Triton backend here.
        UnsupportedForTritonError: The bundle's interface cannot be batched by Triton.
        UsageError: An option is invalid.
        ModelConfigError: A generated config failed protobuf validation (a bug; nothing written).
        MissingDependencyError: tritonclient / protobuf are not installed.
    """
    options = options or RepositoryOptions()
    if options.name is not None:
        check_name(options.name, hint="Use letters, digits, '_', '.' and '-' (at most 100 characters).")
    root = Path(bundle)
    out = Path(output)
    exists = RepositoryExistsError(f"{out} already exists.", hint="Choose another directory or pass --force.")
    if out.exists() and not force:
        raise exists
    plan = plan_repository(root, verify_bundle(root), options)
    with staged_directory(out, replace=force, exists_error=exists) as staging:
        report = _write(plan, staging)
    report.repository = out
    log.info("Triton repository %s: %d models", out, len(report.models))
    return report


def _write(plan: Plan, staging: Path) -> RepositoryReport:
    """Write every model of ``plan`` and the provenance file into ``staging``."""
    writer = ModelWriter(plan, staging)
    python = None
    if plan.similarity:
        write_similarity_model(plan, writer, plan.primary)
    elif plan.entities:
        write_entities_model(plan, writer, plan.primary)
    else:
        models = {art.name: write_backend_model(plan, writer, art) for art in plan.artifacts}
        pre = write_preprocess(plan, writer)
        post = write_postprocess(plan, writer)
        write_ensemble(plan, writer, model_name(plan.name, "ensemble"), pre, models[plan.primary.name], post)
        if plan.primary.kind in ONNX_KINDS:
            python_variant = write_python_model(plan, writer, plan.primary)
            python = write_ensemble(plan, writer, model_name(plan.name, "python_ensemble"), pre, python_variant, post)
        check_ensembles(writer.configs)
    write_provenance(staging, plan, python_ensemble=python, models=writer.models)
    return RepositoryReport(repository=staging, bundle=plan.root, name=plan.name, version=plan.options.version,
                            ensemble=plan.name, python_ensemble=python, models=writer.models)
