"""Precision variants on graphs that are not FusionModels: Hugging Face classifiers exported as they are."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers as tf
from onnx import TensorProto, helper, numpy_helper

from edgemm.optimize.branches import node_branches
from edgemm.optimize.precision import to_fp16


def test_fp16_of_a_graph_sharing_one_initializer_between_blocked_nodes_loads(tmp_path):
    # Two LayerNorms and an Add read one bias initializer (the dynamo exporter shares identical
    # zero biases): it becomes FP16, and the converter casts it back to FP32 once per blocked
    # consumer, each time under the same name.
    scale = numpy_helper.from_array(np.ones(4, np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "bias")
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "weight")
    nodes = [helper.make_node("MatMul", ["x", "weight"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "bias"], ["h"], name="add_bias"),  # an FP16 consumer of the bias
             helper.make_node("LayerNormalization", ["h", "scale", "bias"], ["a"], name="ln_a", axis=-1),
             helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["b"], name="ln_b", axis=-1),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [scale, bias, weight])
    src = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), src)

    to_fp16(src, tmp_path / "fp16.onnx")

    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(want - got).max() < 1e-2


def test_a_transformers_classifier_is_its_modalitys_encoder_plus_a_head(tmp_path):
    config = tf.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=20, max_position_embeddings=16, num_labels=3)
    model = tf.BertForSequenceClassification(config).eval()
    ids = torch.ones(1, 8, dtype=torch.long)
    path = tmp_path / "bert.onnx"
    torch.onnx.export(model, (ids,), str(path), input_names=["input_ids"], dynamo=False, opset_version=18)
    graph = onnx.load(str(path))

    assert set(node_branches(graph).values()) == {"fusion"}  # no FusionModel paths: all glue
    branches = node_branches(graph, single_modality="text")
    head = {name for name, branch in branches.items() if branch == "head"}
    assert head and all("/classifier/" in name for name in head)
    assert {branch for name, branch in branches.items() if name not in head} == {"text"}
