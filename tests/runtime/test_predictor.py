"""Artifact choice: which artifact the Predictor runs on each device, and why the others were skipped.

The bundles are hand-built (one tiny MatMul graph copied under every artifact name) so that the
manifest facts that drive the choice — precision, fused graph, quantization method, providers,
gate verdict, engines — can be set one by one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import Artifact, Manifest, TensorSpec
from edgemm.bundle.verify import verify_bundle
from edgemm.bundle.writer import write_manifest
from edgemm.errors import BackendUnavailableError, BundleError
from edgemm.runtime import Predictor
from edgemm.runtime.predictor import choose_artifact
from tests.tensorrt.conftest import _onnx_model, engine_record

CPU_GPU = ["CPUExecutionProvider", "CUDAExecutionProvider"]
TRT_EP = ["CPUExecutionProvider", "TensorrtExecutionProvider"]


def _artifact(name: str, precision: str, *, fused: bool = False, method: str | None = None,
              providers: list[str] | None = None, gate: bool | None = None) -> dict[str, Any]:
    return {"name": name, "precision": precision, "fused": fused, "method": method,
            "providers": providers or ["CPUExecutionProvider"], "gate": gate}


def _bundle(root: Path, artifacts: list[dict[str, Any]], engines: list[tuple[str, dict[str, Any]]] = ()) -> Path:
    built = []
    weight = None
    for a in artifacts:
        rel = f"model/{a['name']}.onnx"
        weight = _onnx_model(root / rel)
        validation = {} if a["gate"] is None else {"gate": {"passed": a["gate"], "metric": "accuracy"}}
        built.append(Artifact(name=a["name"], path=rel, kind="onnx", precision=a["precision"], files=[rel],
                              providers=a["providers"], requirements={"graph_optimized": a["fused"]},
                              quantization={"method": a["method"]} if a["method"] else None, validation=validation))
    for name, record in engines:
        rel = f"engines/{name}.plan"
        (root / "engines").mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"never deserialized here")
        built.append(Artifact(name=name, path=rel, kind="tensorrt", precision="fp16", files=[rel], providers=[],
                              requirements=record))
    feed = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)}
    expected = {"logits": feed["x"] @ weight}
    GoldenSet(feed=feed, expected=expected,
              artifacts={a.name: expected for a in built if a.kind == "onnx"}).save(root / "golden.npz")
    write_manifest(root, Manifest(
        name="choice", task="classification", modalities={}, labels=["a", "b", "c"],
        inputs=[TensorSpec("x", "float32", ["batch", 4], {"batch": [1, 2, 8]})],
        outputs=[TensorSpec("logits", "float32", ["batch", 3])],
        preprocessing={}, postprocessing={"output": "logits", "type": "softmax"},
        artifacts=built, golden="golden.npz", validation={"tolerance": {"atol": 1e-4, "rtol": 1e-3}}))
    return root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The static rules, without measuring (tests/runtime/test_ranking.py measures); any cache
    stays out of the user's."""
    monkeypatch.setenv("EDGEMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEMM_RANKING", "static")


KIOSK = [
    _artifact("fp32", "fp32", providers=CPU_GPU),
    _artifact("fp32-opt", "fp32", fused=True, providers=CPU_GPU),
    _artifact("int8", "int8", fused=True, method="int8-dynamic", gate=True),
    _artifact("int8-qdq", "int8", method="int8-static-qdq", providers=TRT_EP, gate=True),
    _artifact("int8-text", "mixed", fused=True, method="int8-dynamic", gate=True),
    _artifact("fp16", "fp16", providers=["CUDAExecutionProvider"], gate=True),
]


def _choice(tmp_path: Path, artifacts: list[dict[str, Any]], device: str, **kwargs: Any) -> tuple[str, list[str]]:
    manifest = verify_bundle(_bundle(tmp_path / "b", artifacts))
    chosen, skipped = choose_artifact(manifest, device, **kwargs)
    return chosen.name, skipped


def test_cpu_prefers_gated_dynamic_int8_then_mixed_then_fused_fp32(tmp_path: Path):
    name, skipped = _choice(tmp_path, KIOSK, "cpu")
    assert name == "int8"
    assert "int8-qdq: ranked below int8 on cpu" in skipped  # dynamic INT8 before Q/DQ (slow S8S8 without VNNI)
    assert "fp16: not built for cpu" in skipped
    ranked = [s.split(":")[0] for s in skipped if "ranked below" in s]
    assert ranked == ["int8-qdq", "int8-text", "fp32-opt", "fp32"]


def test_an_artifact_that_failed_its_gate_is_never_chosen(tmp_path: Path):
    artifacts = [_artifact("fp32", "fp32"), _artifact("int8", "int8", fused=True, method="int8-dynamic", gate=False),
                 _artifact("int8-text", "mixed", fused=True, gate=True)]
    name, skipped = _choice(tmp_path, artifacts, "cpu")
    assert name == "int8-text"
    assert "int8: failed its accuracy gate" in skipped


def test_same_precision_prefers_the_fused_graph(tmp_path: Path):
    name, _ = _choice(tmp_path, [_artifact("fp32", "fp32"), _artifact("fp32-opt", "fp32", fused=True)], "cpu")
    assert name == "fp32-opt"


def test_cuda_prefers_fp16_and_never_runs_dynamic_int8(tmp_path: Path):
    name, skipped = _choice(tmp_path, KIOSK, "cuda")
    assert name == "fp16"
    assert "int8: not built for cuda" in skipped
    cuda_int8 = [_artifact("fp32", "fp32", providers=CPU_GPU),
                 _artifact("int8", "int8", method="int8-dynamic", providers=CPU_GPU, gate=True)]
    name, skipped = _choice(tmp_path / "2", cuda_int8, "cuda")
    assert name == "fp32" and "int8: precision int8 is not used on cuda" in skipped


def test_tensorrt_ep_takes_qdq_int8_and_plain_fp32_but_not_fused_graphs(tmp_path: Path):
    name, skipped = _choice(tmp_path, KIOSK, "tensorrt-ep")
    assert name == "int8-qdq"
    assert "fp32-opt: not built for tensorrt-ep" in skipped  # ORT contrib ops: TensorRT cannot parse them
    assert "fp32: ranked below int8-qdq on tensorrt-ep" in skipped


def test_engines_are_not_onnx_graphs(tmp_path: Path):
    manifest = verify_bundle(_bundle(tmp_path / "b", [_artifact("fp32", "fp32")], engines=[("trt-fp16", engine_record())]))
    chosen, skipped = choose_artifact(manifest, "cpu")
    assert chosen.name == "fp32" and "trt-fp16: TensorRT engine, not an ONNX graph for cpu" in skipped


def test_a_requested_artifact_is_checked(tmp_path: Path):
    manifest = verify_bundle(_bundle(tmp_path / "b", KIOSK))
    assert choose_artifact(manifest, "cpu", requested="fp32")[0].name == "fp32"
    with pytest.raises(BackendUnavailableError, match="'fp16' cannot run on cpu"):
        choose_artifact(manifest, "cpu", requested="fp16")
    with pytest.raises(BundleError, match="no artifact 'int4'") as info:
        choose_artifact(manifest, "cpu", requested="int4")
    assert "int8-text" in info.value.hint


def test_nothing_runnable_is_an_error_with_every_reason(tmp_path: Path):
    with pytest.raises(BackendUnavailableError, match="No artifact of this bundle can run on cpu") as info:
        _choice(tmp_path, [_artifact("fp16", "fp16", providers=["CUDAExecutionProvider"], gate=True)], "cpu")
    assert "fp16: not built for cpu" in info.value.message


def test_predictor_load_runs_the_chosen_artifact_and_keeps_the_reasons(tmp_path: Path):
    bundle = _bundle(tmp_path / "b", KIOSK)
    with Predictor.load(bundle, device="auto") as predictor:
        assert predictor.artifact.name == "int8" and predictor.device == "cpu"
        assert "cuda: ONNX Runtime here has no CUDA provider" in predictor.skipped
        assert any(s.startswith("fp32: ranked below fp32-opt") for s in predictor.skipped)  # fused twin
        assert any(s.startswith("fp32-opt: ranked below int8") for s in predictor.skipped)
        assert predictor.check_golden()["passed"]
        out = predictor.run({"x": np.ones((3, 4), np.float32)})
        assert out["logits"].shape == (3, 3)
    with Predictor.load(bundle, device="cpu", artifact="fp32-opt") as forced:
        assert forced.artifact.name == "fp32-opt" and forced.skipped == []
