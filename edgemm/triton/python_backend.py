"""The Python-backend models of an ensemble: preprocessing, postprocessing and the model on ONNX Runtime.

Each carries the bundle files it reads under ``V/bundle/`` and a ``model.py`` shim that binds a
role of :mod:`edgemm.triton.python_models` (the code that runs inside Triton). Their instances
are CPU instances (the Python stub); ONNX Runtime inside the model variant picks CUDA itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgemm.bundle.manifest import Artifact
from edgemm.triton.fields import (
    VERSION_POLICY,
    dynamic_batching,
    instance_group,
    prediction_outputs,
    raw_inputs,
    string_parameters,
    tensor,
)
from edgemm.triton.naming import model_name
from edgemm.triton.plan import Plan
from edgemm.triton.warmup import raw_warmup, tensor_warmup
from edgemm.triton.writer import ModelWriter

__all__ = ["model_parameters", "python_config", "write_postprocess", "write_preprocess", "write_python_model"]

# Pre- and postprocessing answer each request as it comes: waiting for a batch buys them nothing.
_NO_QUEUE: dict[str, Any] = {"max_queue_delay_microseconds": 0}


def python_config(plan: Plan, model_dir: Path, *, max_batch: int, inputs: list[dict[str, Any]],
                  outputs: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """The ``ModelConfig`` of a Python-backend model: ``--instances`` CPU instances of ``model_dir``.

    Args:
        plan: The repository plan.
        model_dir: The model's directory (its name is the model's name).
        max_batch: ``max_batch_size`` (0: unbatched).
        inputs: The ``input`` entries.
        outputs: The ``output`` entries.
        **fields: More ``ModelConfig`` fields (``dynamic_batching``, ``parameters``, ``model_warmup`` …).

    Returns:
        The config in protobuf's JSON mapping of ``ModelConfig``.
    """
    return {"name": model_dir.name, "backend": "python", "max_batch_size": max_batch, "input": inputs,
            "output": outputs, "instance_group": instance_group(plan, "cpu"), "version_policy": VERSION_POLICY,
            **fields}


def model_parameters(plan: Plan, art: Artifact) -> dict[str, Any]:
    """``parameters`` of a Python model that runs ``art``: artifact, device and threads.

    Args:
        plan: The repository plan.
        art: The artifact it runs.

    Returns:
        The value.
    """
    return string_parameters(artifact=art.name, device=plan.python_device,
                             threads=str(plan.options.threads or ""))


def write_preprocess(plan: Plan, writer: ModelWriter) -> str:
    """Write the preprocess model: raw TEXT / IMAGE / AUDIO bytes → the graph's feed.

    Args:
        plan: The repository plan.
        writer: The repository's writer.

    Returns:
        The model's name (``N_preprocess``).

    Raises:
        UsageError: The model's name is unusable or taken.
        BundleError: A preprocessing asset changed while it was copied.
        ModelConfigError: The generated config is invalid (a bug).
    """
    model_dir = writer.python_model_dir(model_name(plan.name, "preprocess"), "preprocess",
                                        plan.manifest.asset_paths())
    config = python_config(plan, model_dir, max_batch=plan.max_batch, inputs=raw_inputs(plan.manifest),
                           outputs=[tensor(t) for t in plan.manifest.inputs], dynamic_batching=_NO_QUEUE,
                           parameters=string_parameters(text_pad_to=plan.text_pad_to),
                           model_warmup=raw_warmup(plan, model_dir))
    writer.save(model_dir, config, role="preprocess (python backend)", backend="python",
                text_padding=plan.options.text_padding)
    return model_dir.name


def write_postprocess(plan: Plan, writer: ModelWriter) -> str:
    """Write the postprocess model: the graph's outputs → PREDICTION, LABEL, SCORE.

    Args:
        plan: The repository plan.
        writer: The repository's writer.

    Returns:
        The model's name (``N_postprocess``).

    Raises:
        UsageError: The model's name is unusable or taken.
        ModelConfigError: The generated config is invalid (a bug).
    """
    model_dir = writer.python_model_dir(model_name(plan.name, "postprocess"), "postprocess", [])
    config = python_config(plan, model_dir, max_batch=plan.max_batch,
                           inputs=[tensor(t) for t in plan.manifest.outputs], outputs=prediction_outputs(),
                           dynamic_batching=_NO_QUEUE, model_warmup=tensor_warmup(plan, model_dir, outputs=True))
    writer.save(model_dir, config, role="postprocess (python backend)", backend="python")
    return model_dir.name


def write_python_model(plan: Plan, writer: ModelWriter, art: Artifact) -> str:
    """Write the Python-backend variant of the model: ``art`` on ONNX Runtime inside the Python backend.

    For Triton builds without the onnxruntime backend; same inputs and outputs as the
    ``onnxruntime`` model of ``art``.

    Args:
        plan: The repository plan.
        writer: The repository's writer.
        art: An ONNX artifact of the plan.

    Returns:
        The model's name (``N_<artifact>_python``).

    Raises:
        UsageError: The model's name is unusable or taken.
        BundleError: An artifact file changed while it was copied.
        ModelConfigError: The generated config is invalid (a bug).
    """
    model_dir = writer.python_model_dir(model_name(plan.name, "python_model", art.name), "model", list(art.files))
    label_output = plan.label_output
    # ONNX Runtime inside picks CUDA itself (device "auto"); the Python stub stays on the CPU.
    config = python_config(plan, model_dir, max_batch=plan.max_batch,
                           inputs=[tensor(t) for t in plan.manifest.inputs],
                           outputs=[tensor(t, labels=t.name == label_output) for t in plan.manifest.outputs],
                           dynamic_batching=dynamic_batching(plan), parameters=model_parameters(plan, art),
                           model_warmup=tensor_warmup(plan, model_dir))
    if label_output:
        writer.labels(model_dir)
    writer.save(model_dir, config, role="model (python backend, ONNX Runtime inside)", artifact=art.name,
                backend="python")
    return model_dir.name
