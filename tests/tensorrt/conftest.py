"""A torch-free tiny bundle (hand-built ONNX) with an optional TensorRT engine artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import Artifact, Manifest, TensorSpec
from edgemm.bundle.writer import write_manifest
from edgemm.runtime.trt_compat import HostInfo

ORIN_NANO = HostInfo(tensorrt="10.3.0", compute_capability="8.7", cuda="12.6", l4t="36.4.0", jetpack="6.1",
                     platform="linux-aarch64", dla_cores=0)
ORIN_AGX = HostInfo(tensorrt="10.3.0", compute_capability="8.7", cuda="12.6", l4t="36.4.0", jetpack="6.1",
                    platform="linux-aarch64", dla_cores=2)
DESKTOP = HostInfo(tensorrt="11.0.0", compute_capability="8.9", cuda="13.0", platform="linux-x86_64", gpu="RTX 4090")
NO_TRT = HostInfo(problems=("TensorRT is not installed", "no CUDA device is visible"), platform="linux-x86_64")


def engine_record(host: HostInfo = ORIN_NANO, **built_with: Any) -> dict[str, Any]:
    return {"tensorrt": host.tensorrt, "compute_capability": host.compute_capability, "cuda": host.cuda,
            "l4t": host.l4t, "jetpack": host.jetpack, "platform": host.platform, "gpu": host.gpu,
            "built_with": {"regime": "implicit", "source_artifact": "fp32", "profiles": [], "plugins": [],
                           "version_compatible": False, "hardware_compatibility": "none", **built_with}}


def _onnx_model(path: Path) -> np.ndarray:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"], name="/head/MatMul")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return weight


def make_bundle(root: Path, *, engines: list[tuple[str, dict[str, Any]]] = (), extra_onnx: bool = False) -> Path:
    """Write a verified tiny bundle: fp32 ONNX (+ fp16 / int8-qdq copies) and fake engine files."""
    weight = _onnx_model(root / "model/fp32.onnx")
    artifacts = [Artifact(name="fp32", path="model/fp32.onnx", kind="onnx", precision="fp32", files=["model/fp32.onnx"],
                          providers=["CPUExecutionProvider", "CUDAExecutionProvider"],
                          requirements={"graph_optimized": False})]
    if extra_onnx:
        for name, precision, quant in (("fp16", "fp16", None), ("int8-qdq", "int8", {"method": "int8-static-qdq"})):
            _onnx_model(root / f"model/{name}.onnx")
            artifacts.append(Artifact(name=name, path=f"model/{name}.onnx", kind="onnx", precision=precision,
                                      files=[f"model/{name}.onnx"], quantization=quant,
                                      providers=["CPUExecutionProvider", "TensorrtExecutionProvider"]))
    for name, record in engines:
        engine = root / f"engines/{name}.plan"
        engine.parent.mkdir(parents=True, exist_ok=True)
        engine.write_bytes(b"not a real engine: never deserialized in these tests")
        artifacts.append(Artifact(name=name, path=f"engines/{name}.plan", kind="tensorrt", precision="fp16",
                                  files=[f"engines/{name}.plan"], providers=[], requirements=record))
    feed = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)}
    expected = {"logits": feed["x"] @ weight}
    golden = GoldenSet(feed=feed, expected=expected, artifacts={a.name: expected for a in artifacts if a.kind == "onnx"})
    golden.save(root / "golden.npz")
    manifest = Manifest(
        name="tiny", task="classification", modalities={}, labels=["a", "b", "c"],
        inputs=[TensorSpec("x", "float32", ["batch", 4], {"batch": [1, 2, 8]})],
        outputs=[TensorSpec("logits", "float32", ["batch", 3])],
        preprocessing={}, postprocessing={"output": "logits", "type": "softmax"},
        artifacts=artifacts, golden="golden.npz",
        validation={"tolerance": {"atol": 1e-4, "rtol": 1e-3}},
    )
    write_manifest(root, manifest)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("EDGEMM_CACHE", str(path))
    return path
