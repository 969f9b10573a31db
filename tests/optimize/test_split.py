"""Cutting a shipped artifact at its text branch: the recorded split artifact, verify, tampering,
and the models it does not apply to."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgemm.bundle.manifest import ModalitySpec
from edgemm.bundle.verify import verify_bundle
from edgemm.cli import cli
from edgemm.errors import BundleError, RecipeError
from edgemm.optimize.split import NotSplittable, SplitRequest, build_split, plan_cut, split_variant
from edgemm.recipes import load_recipe, parse_recipe
from tests.splits import split_bundle


@pytest.fixture(scope="module")
def split(tiny_bundle, tmp_path_factory):
    return split_bundle(tiny_bundle, tmp_path_factory.mktemp("split-opt") / "b", entries=8)


def test_split_artifact_is_recorded_gated_and_hashed(split):
    root, report = split
    manifest = verify_bundle(root)
    art = manifest.artifact("fp32-split")
    assert art.kind == "split" and art.precision == "fp32" and art.providers == ["CPUExecutionProvider"]
    parts = {p["name"]: p for p in art.requirements["parts"]}
    assert set(parts) == {"text", "rest", "whole"} and all(p["engine"] == "onnxruntime" for p in parts.values())
    assert parts["text"]["inputs"] == ["input_ids", "attention_mask"]
    assert parts["text"]["outputs"] == [i for i in parts["rest"]["inputs"] if i != "pixel_values"]
    # The whole part is the source artifact's own file, not a copy.
    assert parts["whole"]["path"] == manifest.artifact("fp32").path
    assert parts["whole"]["inputs"] == [s.name for s in manifest.inputs]
    assert set(art.files) == {parts["text"]["path"], parts["rest"]["path"], parts["whole"]["path"]}
    # Where the whole graph pays was measured on the held-out feeds (the record the export kept
    # or dropped by it; tests.splits then fixes the share so that tests do not time anything).
    whole = report["whole"]
    assert whole["rows"] == 4 and whole["distinct_rows"] == 4 and whole["break_even_rows"] >= 2
    assert whole["parts_new_ms"] > 0 and whole["parts_cached_ms"] > 0 and whole["whole_ms"] > 0
    assert ("outcome" in whole) == (whole["break_even_rows"] > whole["rows"])
    hashed = {f.path for f in manifest.files}
    assert set(art.files) <= hashed
    # Trimming padding was verified on the FP32 branch before the cache may key rows without it.
    assert art.requirements["cache"] == {"branch": "text", "entries": 8, "padding": "trim",
                                         "mask": "attention_mask", "min_length": 2}
    assert report["padding"]["padding"] == "trim" and report["padding"]["rows_checked"] > 0
    gate = art.validation["gate"]
    assert gate["passed"] and gate["top1_agreement"] == 1.0 and gate["nonfinite"] == 0
    assert gate["evaluated_on"].startswith("edgemm SplitBackend")
    parity = art.validation["parity"]
    assert parity["against"] == "fp32" and parity["max_abs_diff"] <= 1e-5 and parity["top1_agreement"] == 1.0
    # Each part is a valid ONNX graph on its own.
    for rel in art.files:
        onnx.checker.check_model(onnx.load(str(root / rel)))


def test_verify_passes_and_a_tampered_part_fails(split, tmp_path):
    root, _ = split
    result = CliRunner().invoke(cli, ["verify", str(root), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert any(r["artifact"] == "fp32-split" and r["passed"] for r in doc["artifacts"])
    copy = tmp_path / "tampered"
    shutil.copytree(root, copy)
    text_part = copy / verify_bundle(copy).artifact("fp32-split").files[0]
    data = bytearray(text_part.read_bytes())
    data[-10] ^= 0xFF
    text_part.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["verify", str(copy)])
    assert result.exit_code == 4, result.output


def _graph(nodes, inputs, outputs, name="g"):
    return helper.make_model(helper.make_graph(nodes, name, inputs, outputs),
                             opset_imports=[helper.make_opsetid("", 17)])


def _inputs():
    return [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 4])]


MODALITIES = {"text": ModalitySpec(inputs=("input_ids",)), "image": ModalitySpec(inputs=("pixel_values",))}


def test_single_transformer_over_both_modalities_is_not_splittable():
    # ViLT-like: one encoder reads text and image together, nothing is a separate text branch.
    cast = helper.make_node("Cast", ["input_ids"], ["ids_f"], name="/inner/fusion/Cast", to=TensorProto.FLOAT)
    mean = helper.make_node("ReduceMean", ["ids_f"], ["t"], name="/inner/fusion/ReduceMean", keepdims=1)
    add = helper.make_node("Add", ["pixel_values", "t"], ["logits"], name="/inner/fusion/Add")
    model = _graph([cast, mean, add], _inputs(), [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
    with pytest.raises(NotSplittable, match="separate text or audio encoder"):
        plan_cut(model, MODALITIES)
    # A "text" branch that reads the image is not a separate encoder either.
    mix = helper.make_node("Add", ["ids_f", "pixel_values"], ["mixed"], name="/inner/text/model/Add")
    cast.name = "/inner/text/Cast"
    out = helper.make_node("Identity", ["mixed"], ["logits"], name="/inner/head/Identity")
    model = _graph([cast, mix, out], _inputs(), [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
    with pytest.raises(NotSplittable, match="depends on other modalities"):
        plan_cut(model, MODALITIES)


def test_fusion_reading_raw_text_inputs_is_not_splittable():
    cast = helper.make_node("Cast", ["input_ids"], ["ids_f"], name="/inner/text/Cast", to=TensorProto.FLOAT)
    mean = helper.make_node("ReduceMean", ["ids_f"], ["t"], name="/inner/text/ReduceMean", keepdims=1)
    raw = helper.make_node("Cast", ["input_ids"], ["raw_f"], name="/inner/fusion/Cast", to=TensorProto.FLOAT)
    add = helper.make_node("Add", ["pixel_values", "t"], ["a"], name="/inner/fusion/Add")
    mul = helper.make_node("Mul", ["a", "raw_f"], ["logits"], name="/inner/fusion/Mul")
    model = _graph([cast, mean, raw, add, mul], _inputs(),
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
    with pytest.raises(NotSplittable, match="raw inputs"):
        plan_cut(model, MODALITIES)
    # The same graph without the raw read cuts at the text branch's pooled output.
    model = _graph([cast, mean, add], _inputs(), [helper.make_tensor_value_info("a", TensorProto.FLOAT, None)])
    cut = plan_cut(model, MODALITIES)
    assert cut.branch == "text" and cut.boundary == ("t",) and cut.rest_inputs == ("pixel_values",)


def test_single_modality_model_records_not_applicable(split, tmp_path):
    root, _ = split
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    manifest = verify_bundle(copy)
    feeds = [{k: np.zeros((1, 4), np.int64) for k in ("input_ids", "attention_mask")}]
    request = SplitRequest(staging=copy, source=manifest.artifact("fp32"), name="again", entries=4,
                           inputs=manifest.inputs, outputs=manifest.outputs, modalities=manifest.modality_specs(),
                           fp32_path=copy / "model/fp32.onnx", feeds=feeds, labels=np.zeros(1, int),
                           fp32_outputs=np.zeros((1, 2)), output="logits", single_modality="text")
    artifact, report = build_split(request)
    assert artifact is None and report["outcome"].startswith("not applicable: the model has one modality")
    assert not list((copy / "model").glob("again*"))
    # The export step records a split whose source variant did not ship, and goes on.
    ctx = SimpleNamespace(recipe=SimpleNamespace(split=SimpleNamespace(source="int8", artifact_name="int8-split")))
    validation: dict = {}
    assert split_variant(ctx, [manifest.artifact("fp32")], None, validation) == []
    assert validation["split"]["outcome"] == "not built: variant 'int8' did not ship"


def test_recipe_split_section(tmp_path):
    recipe = load_recipe("cpu-kiosk")
    assert recipe.split is not None and recipe.split.source == "int8" and recipe.split.artifact_name == "int8-split"
    base = {"variants": [{"name": "int8", "precision": "int8-dynamic"}], "optimize": {"graph": True}}
    parsed = parse_recipe({**base, "split": {"source": "int8", "cache": 16, "name": "cached"}}, tmp_path / "r.toml")
    assert (parsed.split.cache, parsed.split.artifact_name) == (16, "cached")
    assert parse_recipe(base, tmp_path / "r.toml").split is None
    for bad in ({"source": "fp16"}, {"cache": 4}, {"source": "int8", "cache": -1}, {"source": "int8", "name": "int8"},
                {"source": "int8", "from": "int8"}):
        with pytest.raises(RecipeError):
            parse_recipe({**base, "split": bad}, tmp_path / "r.toml")


def test_int8_dynamic_source_rows_are_computed_alone(split, tmp_path):
    # Dynamic INT8 scales activations per tensor, so a row's output depends on its batch: the
    # split computes each text row alone. Batch 1 unpadded is bit-exact with the source; a cached
    # row is bit-exact with the same row computed fresh in any batch.
    from edgemm.optimize.gate import run_artifact
    from edgemm.optimize.precision import quantize_int8_dynamic
    from edgemm.runtime.backends.split import SplitBackend
    from tests.splits import ANSWERS, feeds_for

    root, _ = split
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    manifest = verify_bundle(copy)
    info = quantize_int8_dynamic(copy / "model/fp32.onnx", copy / "model/int8.onnx")
    source = dataclasses.replace(manifest.artifact("fp32"), name="int8", path="model/int8.onnx",
                                 files=["model/int8.onnx"], precision="int8", quantization=info)
    feeds = feeds_for(copy, manifest, [ANSWERS[:4], ANSWERS[4:]])
    fp32 = run_artifact(copy / "model/fp32.onnx", feeds, "logits")
    request = SplitRequest(staging=copy, source=source, name="int8-split", entries=8, inputs=manifest.inputs,
                           outputs=manifest.outputs, modalities=manifest.modality_specs(),
                           fp32_path=copy / "model/fp32.onnx", feeds=feeds, labels=fp32.argmax(-1),
                           fp32_outputs=fp32, output="logits", budget_points=100.0)
    artifact, report = build_split(request)
    assert artifact is not None, report
    # Same nodes, same engine, one row: equal up to the float order of ONNX Runtime's kernels.
    assert artifact.validation["parity"]["batch1_unpadded_max_abs_diff"] <= 1e-6
    assert artifact.quantization["method"] == info["method"]
    cached = SplitBackend(copy, artifact, manifest.inputs, manifest.outputs)
    cached.set_route("parts")  # the cache's property; batches of new rows may take the whole graph
    cached.activate()
    fresh = SplitBackend(copy, artifact, manifest.inputs, manifest.outputs).activate()
    cached.run(feeds[0])
    mixed = feeds_for(copy, manifest, [[ANSWERS[1], ANSWERS[6], ANSWERS[3]]])[0]
    assert np.array_equal(cached.run(mixed)["logits"], fresh.run_reference(mixed)["logits"])
    assert cached.cache_stats()["hits"] == 2
    # The whole route is the source INT8 graph itself, batch neighbours and all.
    if "whole" in artifact.requirements:
        fresh.set_route("whole")
        from edgemm.runtime.sessions import create_session

        expected = create_session(copy / "model/int8.onnx").run(["logits"], mixed)[0]
        assert np.array_equal(fresh.run(mixed)["logits"], expected)


def test_inspect_says_what_is_cached_and_when_the_whole_graph_answers(split):
    root, _ = split
    result = CliRunner().invoke(cli, ["inspect", str(root)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert ("text part cached (8 answers, padding trim), rest part on the batch; batches with ≥ 50 % new answers "
            "run the whole graph (model/fp32.onnx, the fp32 artifact's file, on ONNX Runtime)") in result.output


@pytest.fixture(scope="module")
def ov_split(work, tiny_ckpt, edgemm_cache, tmp_path_factory):
    """The OpenVINO test bundle (fp32, ov-int8, ov-fp32, ov-bf16 where the CPU has it) with the FP32
    graph split and every shipped OpenVINO IR offered as the whole part."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from edgemm.optimize.gate import run_artifact
    from tests.optimize.test_openvino_variants import export_ov_bundle
    from tests.splits import ANSWERS, feeds_for

    root = tmp_path_factory.mktemp("ov-split") / "b"
    shutil.copytree(export_ov_bundle(work, tiny_ckpt), root)
    manifest = verify_bundle(root)
    feeds = feeds_for(root, manifest, [ANSWERS[:4], ANSWERS[4:], ANSWERS[:1]])
    fp32 = run_artifact(root / "model/fp32.onnx", feeds, manifest.primary_output)
    request = SplitRequest(staging=root, source=manifest.artifact("fp32"), name="fp32-split", entries=8,
                           inputs=manifest.inputs, outputs=manifest.outputs, modalities=manifest.modality_specs(),
                           fp32_path=root / "model/fp32.onnx", feeds=feeds, labels=fp32.argmax(-1),
                           fp32_outputs=fp32, output=manifest.primary_output, budget_points=0.0,
                           whole_candidates=list(manifest.artifacts))
    artifact, report = build_split(request)
    assert artifact is not None, report
    return root, manifest, request, artifact, report


def test_the_whole_part_is_the_fastest_portable_whole_graph(ov_split):
    _, manifest, _, artifact, report = ov_split
    timed = report["whole"]["whole_candidates_ms"]
    # The source and each OpenVINO IR that needs no CPU flags (a BF16 IR would not run on every kiosk).
    assert set(timed) == {"fp32", "ov-int8", "ov-fp32"}
    fastest = min(timed, key=timed.get)
    assert report["whole"]["whole_ms"] == timed[fastest]
    parts = {p["name"]: p for p in artifact.requirements["parts"]}
    if "whole" not in artifact.requirements:  # the parts were faster than every whole graph
        assert "whole" not in parts and set(artifact.files) == {parts["text"]["path"], parts["rest"]["path"]}
        return
    assert artifact.requirements["whole"]["artifact"] == fastest
    owner = manifest.artifact(fastest)
    assert parts["whole"]["path"] == owner.path
    assert parts["whole"]["engine"] == ("openvino" if owner.kind == "openvino" else "onnxruntime")
    assert set(owner.files) <= set(artifact.files)  # an IR's .bin travels with its .xml


def test_an_openvino_whole_part_answers_as_its_artifact_and_is_optional(ov_split, monkeypatch):
    from edgemm.optimize.split import _with_whole_part
    from edgemm.runtime.backends import split as split_backend
    from edgemm.runtime.backends.openvino import OpenVinoBackend
    from edgemm.runtime.backends.split import SplitBackend, unavailable_reason
    from tests.splits import ANSWERS, feeds_for

    root, manifest, request, artifact, _ = ov_split
    # The kept requests' answers are compared bit for bit: the dynamic model only (static-shape
    # compiles are tested in test_the_whole_part_compiles_for_a_batch_shape_it_keeps_seeing).
    monkeypatch.setenv("EDGEMM_OPENVINO_SHAPES", "0")
    source = manifest.artifact("ov-fp32")
    on_ov = _with_whole_part(artifact, source, request)
    on_ov = dataclasses.replace(on_ov, requirements={**on_ov.requirements, "whole": {"min_new_fraction": 0.5}})
    feed, other = feeds_for(root, manifest, [ANSWERS[:4], ANSWERS[4:]])
    with OpenVinoBackend.from_artifact(root, source, manifest.inputs, manifest.outputs) as ov:
        expected, expected_other = ov.run(feed)["logits"], ov.run(other)["logits"]
    with SplitBackend(root, on_ov, manifest.inputs, manifest.outputs, cache_entries=8) as backend:
        got = backend.run(feed)["logits"]
        assert backend.cache_stats()["whole_batches"] == 1
        reference = backend.run_reference(feed)["logits"]
        # The kept infer request takes the next batch's other shape and answers it as the artifact does.
        assert other["input_ids"].shape != feed["input_ids"].shape
        np.testing.assert_allclose(backend.run(other)["logits"], expected_other, atol=1e-6, rtol=0)
        assert backend.cache_stats()["whole_batches"] == 2
        # Threads share the compiled whole part, each through its own kept infer request.
        backend.set_caching(False)  # every row new: every call through the whole part
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: backend.run(feed)["logits"], range(16)))
        assert backend.cache_stats()["whole_batches"] == 18
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert all(np.array_equal(answer, got) for answer in answers)
    # The IR's weights are read beside its .xml: a record that does not list them (so their hash
    # would go unchecked at load) is refused.
    unlisted = dataclasses.replace(on_ov, files=[f for f in on_ov.files if not f.endswith(".bin")])
    with pytest.raises(BundleError, match=r"weights 'model/ov-fp32\.bin' are not one of the artifact's files"):
        SplitBackend(root, unlisted, manifest.inputs, manifest.outputs)
    # A kiosk without OpenVINO still runs the split: every batch through the parts.
    monkeypatch.setattr(split_backend, "part_unavailable_reason",
                        lambda part: "OpenVINO is not installed" if part.engine == "openvino" else None)
    assert unavailable_reason(on_ov) is None
    with SplitBackend(root, on_ov, manifest.inputs, manifest.outputs, cache_entries=8) as backend:
        assert backend.whole_unavailable == "OpenVINO is not installed"
        assert np.array_equal(backend.run(feed)["logits"], reference)
        assert backend.cache_stats()["whole_batches"] == 0


def test_the_whole_part_compiles_for_a_batch_shape_it_keeps_seeing(ov_split):
    from edgemm.optimize.split import _with_whole_part
    from edgemm.runtime.backends.openvino import OpenVinoBackend
    from edgemm.runtime.backends.ov_shapes import DEFAULT_AFTER
    from edgemm.runtime.backends.split import SplitBackend
    from tests.splits import ANSWERS, feeds_for

    root, manifest, request, artifact, _ = ov_split
    source = manifest.artifact("ov-fp32")
    on_ov = _with_whole_part(artifact, source, request)
    on_ov = dataclasses.replace(on_ov, requirements={**on_ov.requirements, "whole": {"min_new_fraction": 0.5}})
    (feed,) = feeds_for(root, manifest, [ANSWERS[:4]])
    with OpenVinoBackend.from_artifact(root, source, manifest.inputs, manifest.outputs) as ov:
        expected = ov.run_reference(feed)["logits"]
    with SplitBackend(root, on_ov, manifest.inputs, manifest.outputs, cache_entries=8) as backend:
        assert backend.shape_stats() is None  # the whole part loads with the first batch
        backend.set_caching(False)  # every row new: every call through the whole part
        for _ in range(DEFAULT_AFTER):
            np.testing.assert_allclose(backend.run(feed)["logits"], expected, atol=1e-6, rtol=0)
        assert backend.wait_for_compiles()
        backend.run(feed)  # the check against the dynamic model
        stats = backend.shape_stats()
        assert stats["adopted"] == 1 and stats["refused"] == 0
        np.testing.assert_allclose(backend.run(feed)["logits"], expected, atol=1e-4, rtol=0)
        assert backend.shape_stats()["static_runs"] == stats["static_runs"] + 1
        # Off (as the ranking times it): the dynamic whole part, bit for bit the artifact.
        backend.set_shape_specialization(False)
        np.testing.assert_array_equal(backend.run(feed)["logits"], expected)
        assert backend.shape_stats()["static_runs"] == stats["static_runs"] + 1
        assert backend.cache_stats()["whole_batches"] == DEFAULT_AFTER + 3
    assert backend.shape_stats() is None  # closed with the backend


def test_a_joint_part_is_recorded_only_where_it_equals_the_parts_bit_for_bit(split, tmp_path, monkeypatch):
    from edgemm.runtime.backends.split import SplitBackend

    root, report = split
    # The tiny FP32 graph: the joint part differs from the parts by float rounding, so none is kept.
    joint = report["joint"]
    assert joint["rows"] > 0 and joint["parts_ms"] > 0 and joint["joint_ms"] > 0
    assert 0 < joint["max_abs_diff"] < 1e-5 and joint["outcome"].startswith("not recorded")
    parts = verify_bundle(root).artifact("fp32-split").requirements["parts"]
    assert "joint" not in {p["name"] for p in parts} and not (root / "model/fp32-split.joint.onnx").exists()
    # Where every row matched (as on the reference INT8 model), the part and its file are recorded.
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    manifest = verify_bundle(copy)
    monkeypatch.setattr(SplitBackend, "compare_joint", lambda self, feed: {"logits": 0.0})
    from edgemm.optimize.gate import run_artifact
    from tests.splits import ANSWERS, feeds_for

    feeds = feeds_for(copy, manifest, [ANSWERS[:4], ANSWERS[4:]])
    fp32 = run_artifact(copy / "model/fp32.onnx", feeds, manifest.primary_output)
    request = SplitRequest(staging=copy, source=manifest.artifact("fp32"), name="again", entries=4,
                           inputs=manifest.inputs, outputs=manifest.outputs, modalities=manifest.modality_specs(),
                           fp32_path=copy / "model/fp32.onnx", feeds=feeds, labels=fp32.argmax(-1),
                           fp32_outputs=fp32, output=manifest.primary_output, budget_points=0.0)
    artifact, again = build_split(request)
    parts = {p["name"]: p for p in artifact.requirements["parts"]}
    assert parts["joint"]["path"] == "model/again.joint.onnx" and "model/again.joint.onnx" in artifact.files
    assert parts["joint"]["outputs"] == ["logits", *parts["text"]["outputs"]]
    assert again["joint"]["max_abs_diff"] == 0.0 and "outcome" not in again["joint"]
    assert (copy / "model/again.joint.onnx").exists()
