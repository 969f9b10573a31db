"""Pieces of ``ModelConfig`` that several models of the repository share.

Each function returns a value in protobuf's JSON mapping of Triton's ``ModelConfig`` (see
:mod:`edgemm.triton.pbtxt`): tensors, instance groups, dynamic batching, parameters.
"""

from __future__ import annotations

from typing import Any

from edgemm.bundle.manifest import Manifest, TensorSpec
from edgemm.triton.plan import Plan
from edgemm.triton.python_models import LABEL, PREDICTION, RAW_INPUTS, SCORE

__all__ = ["TRITON_TYPE", "VERSION_POLICY", "dynamic_batching", "instance_group", "prediction_outputs",
           "raw_inputs", "string_parameters", "tensor", "typed_tensor"]

# Manifest dtype → Triton data type ("bytes": Triton's BYTES, TYPE_STRING in configs).
TRITON_TYPE = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
    "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "bytes": "TYPE_STRING",
}
_KIND = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# Serve the one version written.
VERSION_POLICY: dict[str, Any] = {"latest": {"num_versions": 1}}


def typed_tensor(name: str, dtype: str, dims: list[int], *, optional: bool = False) -> dict[str, Any]:
    """A ``ModelInput`` / ``ModelOutput`` entry.

    Args:
        name: The tensor's name.
        dtype: A manifest dtype (``float32`` …) or ``bytes``.
        dims: The dims after the batch axis (``-1``: variable).
        optional: The input may be left out of a request.

    Returns:
        The entry.
    """
    entry: dict[str, Any] = {"name": name, "data_type": TRITON_TYPE[dtype], "dims": dims}
    if optional:
        entry["optional"] = True
    return entry


def tensor(spec: TensorSpec, *, labels: bool = False) -> dict[str, Any]:
    """The entry of a graph input or output, its leading (batch) axis left to Triton.

    Args:
        spec: The manifest's tensor.
        labels: Attach ``labels.txt`` (Triton's classification extension).

    Returns:
        The entry.
    """
    dims = [d if isinstance(d, int) else -1 for d in spec.shape[1:]]
    entry = typed_tensor(spec.name, spec.dtype, dims or [1])
    if not dims:
        # A per-row scalar ([batch] in ONNX): Triton wants dims [1] reshaped to [].
        entry["reshape"] = {"shape": []}
    if labels:
        entry["label_filename"] = "labels.txt"
    return entry


def raw_inputs(manifest: Manifest) -> list[dict[str, Any]]:
    """The raw inputs of the preprocess model and the ensembles: one BYTES element per modality.

    Args:
        manifest: The bundle's manifest.

    Returns:
        The entries (optional modalities are optional inputs).
    """
    return [typed_tensor(RAW_INPUTS[modality], "bytes", [1], optional=not spec.required)
            for modality, spec in manifest.modality_specs().items()]


def prediction_outputs() -> list[dict[str, Any]]:
    """The outputs of the postprocess model (and the ensembles): PREDICTION, LABEL, SCORE.

    Returns:
        The entries.
    """
    return [typed_tensor(PREDICTION, "bytes", [1]), typed_tensor(LABEL, "bytes", [1]),
            typed_tensor(SCORE, "float32", [1])]


def instance_group(plan: Plan, device: str) -> list[dict[str, Any]]:
    """``instance_group``: ``--instances`` instances of kind ``device``.

    Args:
        plan: The repository plan.
        device: ``auto``, ``cpu`` or ``gpu``.

    Returns:
        The value.
    """
    return [{"count": plan.options.instances, "kind": _KIND[device]}]


def dynamic_batching(plan: Plan) -> dict[str, Any]:
    """``dynamic_batching`` of the models that run the graph: preferred sizes and queue delay.

    Args:
        plan: The repository plan.

    Returns:
        The value.
    """
    return {"preferred_batch_size": list(plan.preferred), "max_queue_delay_microseconds": plan.options.queue_delay_us}


def string_parameters(**values: str) -> dict[str, Any]:
    """``parameters``: string values by key (a Python model reads them at ``initialize``).

    Args:
        **values: The parameters.

    Returns:
        The value.
    """
    return {key: {"string_value": value} for key, value in values.items()}
