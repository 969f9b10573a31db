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
