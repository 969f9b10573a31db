"""The one model of a repository that Triton cannot batch: edgemm's Predictor per request.

* Image–text similarity: each request scores one image against its own candidate texts, which
  have an axis of their own, so there is no shared batch axis for Triton's batcher: IMAGE (BYTES
  [1]) + TEXTS (BYTES [n]) → SCORES (FP32 [n]), LABEL, PREDICTION.
* Token classification: the answer is words with character offsets in the request's text, which
  an ensemble's postprocess model never sees: TEXT (BYTES [1]) → PREDICTION (its ``entities``).
"""

from __future__ import annotations

from edgemm.bundle.manifest import Artifact
from edgemm.triton.fields import typed_tensor
from edgemm.triton.plan import Plan
from edgemm.triton.python_backend import model_parameters, python_config
from edgemm.triton.python_models import CANDIDATES, LABEL, PREDICTION, RAW_INPUTS, SCORES
from edgemm.triton.writer import ModelWriter

__all__ = ["write_entities_model", "write_similarity_model"]


def write_similarity_model(plan: Plan, writer: ModelWriter, art: Artifact) -> str:
    """Write the similarity model ``N``: IMAGE + TEXTS → SCORES, LABEL, PREDICTION through the Predictor.

    Args / Returns / Raises: as :func:`_write_predictor_model`.
    """
    return _write_predictor_model(
        plan, writer, art, "similarity",
        inputs=[typed_tensor(RAW_INPUTS["image"], "bytes", [1]), typed_tensor(CANDIDATES, "bytes", [-1])],
        outputs=[typed_tensor(SCORES, "float32", [-1]), typed_tensor(LABEL, "bytes", [1]),
                 typed_tensor(PREDICTION, "bytes", [1])])


def write_entities_model(plan: Plan, writer: ModelWriter, art: Artifact) -> str:
    """Write the token-classification model ``N``: TEXT → PREDICTION (entities) through the Predictor.

    Args / Returns / Raises: as :func:`_write_predictor_model`.
    """
    return _write_predictor_model(plan, writer, art, "entities",
                                  inputs=[typed_tensor(RAW_INPUTS["text"], "bytes", [1])],
                                  outputs=[typed_tensor(PREDICTION, "bytes", [1])])


def _write_predictor_model(plan: Plan, writer: ModelWriter, art: Artifact, role: str, *,
                           inputs: list[dict], outputs: list[dict]) -> str:
    """Write the one unbatched Python model ``N`` of ``role`` running edgemm's Predictor.

    Args:
        plan: The repository plan.
        writer: The repository's writer.
        art: The ONNX artifact the Predictor runs.
        role: ``"similarity"`` or ``"entities"`` (a role of the Python models).
        inputs / outputs: The model's tensors.

    Returns:
        The model's name (the base name ``N``).

    Raises:
        UsageError: The model's name is unusable.
        BundleError: A bundle file changed while it was copied.
        ModelConfigError: The generated config is invalid (a bug).
    """
    # The Predictor checks the whole bundle's structure, so the whole bundle goes along.
    model_dir = writer.python_model_dir(plan.name, role, [entry.path for entry in plan.manifest.files])
    config = python_config(plan, model_dir, max_batch=0, inputs=inputs, outputs=outputs,
                           parameters=model_parameters(plan, art))
    writer.save(model_dir, config, role=f"{role} (python backend, edgemm Predictor inside)", artifact=art.name,
                backend="python")
    return model_dir.name
