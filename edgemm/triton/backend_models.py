"""The models that run an artifact in one of Triton's own backends.

An ONNX artifact becomes an ``onnxruntime`` model (optionally with ONNX Runtime's TensorRT
execution provider, profiles from the manifest); a serialized TensorRT engine becomes a
``tensorrt`` model on the GPU it was built for. Both take the graph's feed and return its outputs,
batched by Triton's dynamic batcher, warmed up with the golden feed.
"""

from __future__ import annotations

from typing import Any

from edgemm.bundle.manifest import Artifact
from edgemm.triton.errors import UnsupportedArtifactError
from edgemm.triton.fields import (
    VERSION_POLICY,
    dynamic_batching,
    instance_group,
    string_parameters,
    tensor,
)
from edgemm.triton.naming import model_name
from edgemm.triton.plan import ONNX_KINDS, Plan
from edgemm.triton.warmup import tensor_warmup
from edgemm.triton.writer import ModelWriter

__all__ = ["write_backend_model"]

# Level 1 = basic + extended graph rewrites in Triton's onnxruntime backend (-1 basic, 2 off).
_ORT_GRAPH_LEVEL = 1
_TRT_PRECISION = {"fp16": "FP16", "int8": "INT8"}


def write_backend_model(plan: Plan, writer: ModelWriter, art: Artifact) -> str:
    """Write the ``onnxruntime`` or ``tensorrt`` model of ``art``.

    Args:
        plan: The repository plan.
        writer: The repository's writer.
        art: An ONNX or TensorRT artifact of the plan.

    Returns:
        The model's name (``N_<artifact>``).

    Raises:
        UnsupportedArtifactError: A file of the artifact lies outside the artifact's directory.
        UsageError: The model's name is unusable or taken.
        ModelConfigError: The generated config is invalid (a bug).
    """
    model_dir = writer.model_dir(model_name(plan.name, "backend_model", art.name))
    base = art.path.rsplit("/", 1)[0] if "/" in art.path else ""
    for rel in art.files:
        if base and not rel.startswith(base + "/"):
            raise UnsupportedArtifactError(f"Artifact {art.name!r} has a file outside its directory: {rel}.",
                                           hint="Export the bundle again with this edgemm version.")
        writer.copy(rel, model_dir / plan.version / rel[len(base) + 1 if base else 0:])
    filename = art.path.rsplit("/", 1)[-1]
    label_output = plan.label_output
    onnx = art.kind in ONNX_KINDS
    backend = "onnxruntime" if onnx else "tensorrt"
    config: dict[str, Any] = {
        "name": model_dir.name,
        "backend": backend,
        "platform": "onnxruntime_onnx" if onnx else "tensorrt_plan",
        "default_model_filename": filename,
        "max_batch_size": plan.max_batch,
        "input": [tensor(t) for t in plan.manifest.inputs],
        "output": [tensor(t, labels=t.name == label_output) for t in plan.manifest.outputs],
        "dynamic_batching": dynamic_batching(plan),
        # A TensorRT plan only runs on the GPU it was built for.
        "instance_group": instance_group(plan, plan.options.device if onnx else "gpu"),
        "version_policy": VERSION_POLICY,
        "model_warmup": tensor_warmup(plan, model_dir),
    }
    if onnx:
        config["optimization"] = _ort_optimization(plan, art)
        config["parameters"] = string_parameters(intra_op_thread_count=str(plan.options.threads),
                                                 inter_op_thread_count="1")
    else:
        # The manifest guarantees an engine's compatibility record names its compute capability.
        cc = art.requirements["compute_capability"]
        if cc:
            config["cc_model_filenames"] = {str(cc): filename}
    if label_output:
        writer.labels(model_dir)
    writer.save(model_dir, config, role=f"model ({backend} backend)", artifact=art.name, backend=backend)
    return model_dir.name


def _ort_optimization(plan: Plan, art: Artifact) -> dict[str, Any]:
    optimization: dict[str, Any] = {"graph": {"level": _ORT_GRAPH_LEVEL}}
    if plan.options.ort_ep == "tensorrt":
        params = {
            "precision_mode": _TRT_PRECISION.get(art.precision, "FP32"),
            "max_workspace_size_bytes": str(1 << 30),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": f"/tmp/edgemm-trt-cache/{model_name(plan.name, 'backend_model', art.name)}",
            **_trt_profile_shapes(plan),
        }
        optimization["execution_accelerators"] = {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": params}]}
    return optimization


def _trt_profile_shapes(plan: Plan) -> dict[str, str]:
    """ONNX Runtime TensorRT EP profiles from the manifest's min / opt / max (batch capped)."""
    shapes: dict[str, list[str]] = {"trt_profile_min_shapes": [], "trt_profile_opt_shapes": [],
                                    "trt_profile_max_shapes": []}
    for spec in plan.manifest.inputs:
        for i, key in enumerate(shapes):
            dims = []
            for d in spec.shape:
                if isinstance(d, int):
                    dims.append(d)
                elif d in spec.profile:
                    value = spec.profile[d][i]
                    dims.append(min(value, plan.max_batch) if d == plan.batch_axis else value)
                else:
                    return {}  # an axis without a profile: let the EP build profiles itself
            shapes[key].append(f"{spec.name}:{'x'.join(map(str, dims))}")
    return {k: ",".join(v) for k, v in shapes.items()}
