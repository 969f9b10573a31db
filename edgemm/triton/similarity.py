"""The one model of an image–text similarity repository.

Each request scores one image against its own candidate texts, which have an axis of their own:
there is no shared batch axis for Triton's batcher, so one unbatched Python-backend model runs
edgemm's Predictor on the whole bundle: IMAGE (BYTES [1]) + TEXTS (BYTES [n]) → SCORES (FP32 [n]),
LABEL, PREDICTION.
"""

from __future__ import annotations

from edgemm.bundle.manifest import Artifact
from edgemm.triton.fields import typed_tensor
from edgemm.triton.plan import Plan
from edgemm.triton.python_backend import model_parameters, python_config
from edgemm.triton.python_models import CANDIDATES, LABEL, PREDICTION, RAW_INPUTS, SCORES
from edgemm.triton.writer import ModelWriter

__all__ = ["write_similarity_model"]


def write_similarity_model(plan: Plan, writer: ModelWriter, art: Artifact) -> str:
    """Write the similarity model ``N``: IMAGE + TEXTS → SCORES, LABEL, PREDICTION through the Predictor.

    Args:
        plan: The repository plan (of a similarity bundle).
        writer: The repository's writer.
        art: The ONNX artifact the Predictor runs.

    Returns:
        The model's name (the base name ``N``).

    Raises:
        UsageError: The model's name is unusable.
        BundleError: A bundle file changed while it was copied.
        ModelConfigError: The generated config is invalid (a bug).
    """
    # The Predictor checks the whole bundle's structure, so the whole bundle goes along.
    model_dir = writer.python_model_dir(plan.name, "similarity", [entry.path for entry in plan.manifest.files])
    config = python_config(
        plan, model_dir, max_batch=0,
        inputs=[typed_tensor(RAW_INPUTS["image"], "bytes", [1]), typed_tensor(CANDIDATES, "bytes", [-1])],
        outputs=[typed_tensor(SCORES, "float32", [-1]), typed_tensor(LABEL, "bytes", [1]),
                 typed_tensor(PREDICTION, "bytes", [1])],
        parameters=model_parameters(plan, art))
    writer.save(model_dir, config, role="similarity (python backend, edgemm Predictor inside)", artifact=art.name,
                backend="python")
    return model_dir.name
