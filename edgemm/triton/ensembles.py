"""The ensembles: raw TEXT / IMAGE / AUDIO bytes → preprocess → model → postprocess → PREDICTION,
LABEL, SCORE and the graph's raw outputs, in one request."""

from __future__ import annotations

from typing import Any

from edgemm.triton.errors import ModelConfigError
from edgemm.triton.fields import prediction_outputs, raw_inputs, tensor
from edgemm.triton.plan import Plan
from edgemm.triton.python_models import LABEL, PREDICTION, RAW_INPUTS, SCORE
from edgemm.triton.writer import ModelWriter

__all__ = ["check_ensembles", "write_ensemble"]


def write_ensemble(plan: Plan, writer: ModelWriter, name: str, pre: str, model: str, post: str) -> str:
    """Write ensemble ``name`` chaining the models ``pre`` → ``model`` → ``post``.

    Args:
        plan: The repository plan.
        writer: The repository's writer.
        name: The ensemble's name.
        pre: The preprocess model.
        model: The model that runs the graph (any backend).
        post: The postprocess model.

    Returns:
        ``name``.

    Raises:
        UsageError: The name is unusable or taken.
        ModelConfigError: The generated config is invalid (a bug).
    """
    manifest = plan.manifest
    model_dir = writer.model_dir(name)
    raw = [RAW_INPUTS[m] for m in manifest.modalities]
    feed = [t.name for t in manifest.inputs]
    outs = [t.name for t in manifest.outputs]
    config = {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": plan.max_batch,
        "input": raw_inputs(manifest),
        "output": [*prediction_outputs(), *[tensor(t) for t in manifest.outputs]],
        "ensemble_scheduling": {"step": [
            _step(pre, raw, feed),
            _step(model, feed, outs),
            _step(post, outs, [PREDICTION, LABEL, SCORE]),
        ]},
    }
    writer.save(model_dir, config, role="ensemble", steps=[pre, model, post])
    return name


def _step(model: str, inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    """One ensemble step; each tensor keeps its name between the ensemble and the step's model."""
    return {"model_name": model, "model_version": -1, "input_map": {n: n for n in inputs},
            "output_map": {n: n for n in outputs}}


def check_ensembles(configs: dict[str, Any]) -> None:
    """Check that every ensemble step names a written model and only tensors that model has.

    Args:
        configs: Every written ``ModelConfig`` message, by model name.

    Raises:
        ModelConfigError: An ensemble names a missing model or tensor (a bug in edgemm).
    """
    for name, config in configs.items():
        if config.platform != "ensemble":
            continue
        for step in config.ensemble_scheduling.step:
            target = configs.get(step.model_name)
            if target is None:
                raise ModelConfigError(f"Ensemble {name} names a missing model {step.model_name}.",
                                       hint="This is a bug in edgemm.")
            inputs = {t.name for t in target.input}
            outputs = {t.name for t in target.output}
            missing = [key for key in step.input_map if key not in inputs]
            missing += [key for key in step.output_map if key not in outputs]
            if missing:
                raise ModelConfigError(f"Ensemble {name}: {step.model_name} has no tensors {missing}.",
                                       hint="This is a bug in edgemm.")
