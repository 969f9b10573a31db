"""Mapping ONNX nodes to encoder branches, on dynamo and TorchScript exports and after fusion."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from edgemm.export.pipeline import ExportOptions, export_bundle
from edgemm.optimize.branches import node_branches
from edgemm.optimize.graph import optimize_graph
from edgemm.optimize.precision import cpu_has_vnni


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_every_branch_is_found(tiny_ckpt, tmp_path, exporter):
    bundle = export_bundle(tiny_ckpt, tmp_path / "b", options=ExportOptions(exporter=exporter)).bundle
    model = onnx.load(str(bundle / "model" / "fp32.onnx"))
    counts = Counter(node_branches(model).values())
    assert counts["text"] > 20 and counts["image"] > 5 and counts["head"] > 0, counts
    optimized = tmp_path / "opt.onnx"
    report = optimize_graph(bundle / "model" / "fp32.onnx", optimized,
                            {"text": {"architecture": "bert", "num_heads": 2, "hidden_size": 32}})
    after = Counter(node_branches(onnx.load(str(optimized))).values())
    assert after["text"] > 0 and after["image"] > 0
    assert report["passes"][0]["branch"] == "text"
    if exporter == "legacy":
        assert report["passes"][0]["fused"].get("Attention") == 2


def test_vnni_probe_is_a_bool():
    assert isinstance(cpu_has_vnni(), bool)


def test_an_artifact_the_cpu_cannot_run_fails_its_gate_cleanly(tmp_path):
    """A variant ONNX Runtime cannot load is a recorded gate failure, never a crash."""
    import numpy as np

    from edgemm.data.evalset import EvalSet
    from edgemm.optimize.variants import VariantContext, _attempt
    from edgemm.recipes import VariantSpec, load_recipe

    broken = tmp_path / "broken.onnx"
    ctx = VariantContext(staging=tmp_path, bases={"plain": broken}, base_info={}, output="logits",
                         evalset=EvalSet(feeds=[{}], labels=np.array([0]), source={}), fp32_outputs=np.zeros((1, 2)),
                         calibration_feeds=[], edge_feeds={}, recipe=load_recipe("jetson-orin-nano"),
                         parity_check=lambda path: {})
    report = {"attempts": []}
    spec = VariantSpec(name="x", precision="fp32-opt", base="plain")
    broken.write_bytes(b"not an onnx model")
    result, _ = _attempt(ctx, spec, "fp32-opt", tmp_path / "x.onnx", exclude=[], report=report, label="initial")
    assert not result.passed and "could not run it" in report["attempts"][0]["error"]


def test_vision_transformer_attention_fuses(tiny_ckpt, tmp_path):
    """ViT attention (transformers scales scores with Mul) fuses once rewritten as Div; outputs unchanged."""
    import numpy as np
    import onnxruntime as ort

    bundle = export_bundle(tiny_ckpt, tmp_path / "b", options=ExportOptions(exporter="legacy")).bundle
    optimized = tmp_path / "opt.onnx"
    report = optimize_graph(bundle / "model" / "fp32.onnx", optimized,
                            {"text": {"architecture": "bert", "num_heads": 2, "hidden_size": 32},
                             "image": {"architecture": "vit", "num_heads": 2, "hidden_size": 32}})
    passes = {p["branch"]: p["fused"] for p in report["passes"]}
    assert report["rewritten_attention_scaling"] == 2  # the ViT's two layers (BERT's scores carry a mask Add)
    assert passes["text"].get("Attention") == 2 and passes["image"].get("Attention") == 2, passes
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1, 1000, (3, 9)), "attention_mask": np.ones((3, 9), np.int64),
            "pixel_values": rng.standard_normal((3, 3, 32, 32)).astype(np.float32)}
    before = ort.InferenceSession(str(bundle / "model" / "fp32.onnx"), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(optimized), providers=["CPUExecutionProvider"])
    feed = {i.name: feed[i.name] for i in before.get_inputs()}
    np.testing.assert_allclose(after.run(None, feed)[0], before.run(None, feed)[0], atol=1e-4)
