"""Profiles, precision plans for TensorRT 10 (implicit) and 11 (strongly typed), cache keys, trtexec, log gate."""

from __future__ import annotations

import pytest

from edgemm.bundle.manifest import Artifact, TensorSpec
from edgemm.errors import CheckFailedError, UsageError
from edgemm.tensorrt.buildlog import BuildLog, Fp16RangeError, gate
from edgemm.tensorrt.plan import BuildOptions, is_layernorm_layer, make_plan, source_precision
from edgemm.tensorrt.profiles import build_profiles, parse_profile_option, pick_profile
from edgemm.tensorrt.trtexec import trtexec_command

INPUTS = [
    TensorSpec("input_ids", "int64", ["batch", "seq"], {"batch": [1, 1, 8], "seq": [2, 32, 64]}),
    TensorSpec("attention_mask", "int64", ["batch", "seq"], {"batch": [1, 1, 8], "seq": [2, 32, 64]}),
    TensorSpec("pixel_values", "float32", ["batch", 3, 32, 32], {"batch": [1, 1, 8]}),
]
FP32 = Artifact("fp32", "model/fp32.onnx", "onnx", "fp32", ["model/fp32.onnx"], requirements={"graph_optimized": False})
FP16 = Artifact("fp16", "model/fp16.onnx", "onnx", "fp16", ["model/fp16.onnx"])
QDQ = Artifact("int8-qdq", "model/int8-qdq.onnx", "onnx", "int8", ["model/int8-qdq.onnx"],
               quantization={"method": "int8-static-qdq"})
DYNAMIC = Artifact("int8", "model/int8.onnx", "onnx", "int8", ["model/int8.onnx"], quantization={"method": "int8-dynamic"})
FUSED = Artifact("fp32-opt", "model/fp32-opt.onnx", "onnx", "fp32", ["m"], requirements={"graph_optimized": True})


# -- profiles ---------------------------------------------------------------------------------


def test_manifest_profile_gives_min_opt_max_shapes():
    (profile,) = build_profiles(INPUTS)
    assert profile.shapes["input_ids"] == ((1, 2), (1, 32), (8, 64))
    assert profile.shapes["pixel_values"] == ((1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 32, 32))
    assert not profile.static


def test_several_profiles_from_the_recipe():
    profiles = build_profiles(INPUTS, [{"name": "interactive", "batch": [1, 1, 1], "seq": 64},
                                       {"name": "batch", "batch": [1, 4, 8]}])
    assert [p.name for p in profiles] == ["interactive", "batch"]
    assert profiles[0].static and profiles[0].shapes["attention_mask"] == ((1, 64),) * 3
    assert profiles[1].shapes["input_ids"][2] == (8, 64)
    assert pick_profile(profiles, {"input_ids": (1, 64), "attention_mask": (1, 64), "pixel_values": (1, 3, 32, 32)}) == 0
    assert pick_profile(profiles, {"input_ids": (5, 20), "attention_mask": (5, 20), "pixel_values": (5, 3, 32, 32)}) == 1
    assert pick_profile(profiles, {"input_ids": (9, 20)}) is None


@pytest.mark.parametrize("table, match", [
    ({"batch": [1, 1, 16]}, "leaves the verified range"),
    ({"batch": [4, 2, 8]}, "min <= opt <= max"),
    ({"frames": [1, 1, 1]}, "unknown axis 'frames'"),
    ({"seq": "long"}, "must be an int"),
])
def test_bad_profiles_are_refused_with_the_reason(table, match):
    with pytest.raises(UsageError, match=match) as info:
        build_profiles(INPUTS, [table])
    if "frames" in table:
        assert "batch, seq" in info.value.hint


def test_profile_option_parsing():
    assert parse_profile_option("name=b1;batch=1,1,1;seq=64") == {"name": "b1", "batch": [1, 1, 1], "seq": 64}
    with pytest.raises(UsageError, match="min,opt,max"):
        parse_profile_option("batch=1,2")
    with pytest.raises(UsageError):
        parse_profile_option("batch")


# -- precision plans --------------------------------------------------------------------------


def test_trt10_fp16_from_fp32_graph_uses_flag_and_layernorm_constraints():
    plan = make_plan(FP32, "10.3.0", build_profiles(INPUTS), BuildOptions(precision="fp16"), jetson=True)
    assert plan.regime == "implicit" and plan.network_flags == ()
    assert plan.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert plan.layernorm_fp32 == "constraints"
    assert plan.workspace_mb == 1024  # Jetson: bounded shared-memory pool by default


def test_trt10_int8_from_qdq_graph():
    plan = make_plan(QDQ, "10.3.0", build_profiles(INPUTS))
    assert plan.precision == "int8" and set(plan.builder_flags) >= {"INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"}
    assert any("Q/DQ" in n for n in plan.notes)


def test_trt10_fp32_plain_has_no_precision_flags():
    plan = make_plan(FP32, "10.3.0", build_profiles(INPUTS), BuildOptions(workspace_mb=512))
    assert plan.builder_flags == () and plan.layernorm_fp32 == "off" and plan.workspace_bytes == 512 * 2**20


def test_trt11_is_strongly_typed_with_precision_from_the_graph():
    fp16 = make_plan(FP16, "11.0.0", build_profiles(INPUTS))
    assert fp16.regime == "strongly_typed" and fp16.network_flags == ("STRONGLY_TYPED",)
    assert "FP16" not in fp16.builder_flags and "INT8" not in fp16.builder_flags
    assert fp16.layernorm_fp32 == "in-graph"
    qdq = make_plan(QDQ, "11.2.0", build_profiles(INPUTS))
    assert qdq.precision == "int8" and qdq.builder_flags == ()


def test_trt11_refuses_fp16_flag_on_fp32_graph():
    with pytest.raises(UsageError, match="strongly typed") as info:
        make_plan(FP32, "11.0.0", build_profiles(INPUTS), BuildOptions(precision="fp16"))
    assert "fp16" in info.value.hint


def test_trt10_fp16_graph_is_built_strongly_typed():
    assert make_plan(FP16, "10.3.0", build_profiles(INPUTS)).regime == "strongly_typed"


@pytest.mark.parametrize("artifact, match", [(DYNAMIC, "integer operators"), (FUSED, "contrib operators")])
def test_graphs_tensorrt_cannot_parse_are_refused(artifact, match):
    with pytest.raises(UsageError, match=match):
        source_precision(artifact)


def test_int8_from_fp32_graph_is_refused():
    with pytest.raises(UsageError, match="Q/DQ"):
        make_plan(FP32, "10.3.0", build_profiles(INPUTS), BuildOptions(precision="int8"))


def test_dla_rules():
    plan = make_plan(FP32, "10.3.0", build_profiles(INPUTS), BuildOptions(precision="fp16", dla_core=0), jetson=True)
    assert plan.dla_core == 0 and "GPU_FALLBACK" in plan.builder_flags
    with pytest.raises(UsageError, match="Jetson"):
        make_plan(FP32, "10.3.0", build_profiles(INPUTS), BuildOptions(precision="fp16", dla_core=0))
    with pytest.raises(UsageError, match="FP16 or INT8"):
        make_plan(FP32, "10.3.0", build_profiles(INPUTS), BuildOptions(dla_core=0), jetson=True)
    with pytest.raises(UsageError, match="TensorRT 10"):
        make_plan(FP16, "11.0.0", build_profiles(INPUTS), BuildOptions(dla_core=0), jetson=True)


def test_compatibility_options():
    plan = make_plan(FP16, "11.0.0", build_profiles(INPUTS),
                     BuildOptions(version_compatible=True, exclude_lean_runtime=True, hardware_compatibility="ampere_plus"))
    assert {"VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"} <= set(plan.builder_flags)
    with pytest.raises(UsageError, match="Jetson"):
        make_plan(FP16, "10.3.0", build_profiles(INPUTS), BuildOptions(hardware_compatibility="ampere_plus"), jetson=True)
    with pytest.raises(UsageError, match="too old"):
        make_plan(FP16, "8.6.2", build_profiles(INPUTS))


def test_layernorm_layer_selection():
    assert is_layernorm_layer("NORMALIZATION", "anything")
    assert is_layernorm_layer("REDUCE", "/text/encoder/layer.0/output/LayerNorm/ReduceMean")
    assert not is_layernorm_layer("SHAPE", "/text/LayerNorm/Shape")
    assert not is_layernorm_layer("MATRIX_MULTIPLY", "/head/MatMul")


# -- cache keys -------------------------------------------------------------------------------


def test_cache_key_changes_with_everything_that_changes_the_engine():
    profiles = build_profiles(INPUTS)
    base = make_plan(FP32, "10.3.0", profiles, BuildOptions(precision="fp16"))
    key = base.cache_key("a" * 64, "8.7")
    assert key == make_plan(FP32, "10.3.0", profiles, BuildOptions(precision="fp16")).cache_key("a" * 64, "8.7")
    others = {
        base.cache_key("b" * 64, "8.7"),
        base.cache_key("a" * 64, "8.9"),
        make_plan(FP32, "10.7.0", profiles, BuildOptions(precision="fp16")).cache_key("a" * 64, "8.7"),
        make_plan(FP32, "10.3.0", profiles, BuildOptions(precision="fp16", workspace_mb=256)).cache_key("a" * 64, "8.7"),
        make_plan(FP32, "10.3.0", build_profiles(INPUTS, [{"batch": [1, 1, 1]}]),
                  BuildOptions(precision="fp16")).cache_key("a" * 64, "8.7"),
    }
    assert key not in others and len(others) == 5


# -- trtexec ----------------------------------------------------------------------------------


def test_trtexec_command_for_trt10_fp16():
    profiles = build_profiles(INPUTS, [{"name": "b1", "batch": 1}, {"name": "b8", "batch": [1, 4, 8]}])
    plan = make_plan(FP32, "10.3.0", profiles, BuildOptions(precision="fp16", workspace_mb=1024))
    cmd = trtexec_command(plan, "b/model/fp32.onnx", "b.plan", timing_cache="t.cache",
                          layernorm_layers=["/ln/LayerNormalization"])
    assert "--onnx=b/model/fp32.onnx" in cmd and "--saveEngine=b.plan" in cmd
    assert cmd.count("--minShapes=") == 2 and "--maxShapes=input_ids:8x64,attention_mask:8x64,pixel_values:8x3x32x32" in cmd
    assert "--fp16" in cmd and "--precisionConstraints=obey" in cmd
    assert "--layerPrecisions=/ln/LayerNormalization:fp32" in cmd
    assert "--memPoolSize=workspace:1024M" in cmd and "--timingCacheFile=t.cache" in cmd
    assert "--stronglyTyped" not in cmd


def test_trtexec_command_for_trt11_has_no_precision_flags():
    cmd = trtexec_command(make_plan(QDQ, "11.0.0", build_profiles(INPUTS)), "m.onnx", "e.plan")
    assert "--stronglyTyped" in cmd and "--fp16" not in cmd and "--int8" not in cmd


def test_trtexec_dla_and_missing_layer_names():
    plan = make_plan(FP32, "10.3.0", build_profiles(INPUTS), BuildOptions(precision="fp16", dla_core=1), jetson=True)
    cmd = trtexec_command(plan, "m.onnx", "e.plan")
    assert "--useDLACore=1" in cmd and "--allowGPUFallback" in cmd
    assert "# add --layerPrecisions" in cmd


# -- the build-log gate -----------------------------------------------------------------------

TRT_LOG = """\
[I] [TRT] Loaded engine size: 12 MiB
[W] [TRT] Weights [name=/text/encoder/layer.1/attention/Mul_output_0] had the following issues when converted to FP16:
[W] [TRT]  - Subnormal FP16 values detected.
[W] [TRT] Running layernorm after self-attention in FP16 may cause overflow. Forcing layernorm layers to run in FP32 precision can help with preserving accuracy.
[W] [TRT] Weights of /head/Gemm are outside of fp16 range. A possible fix is to retrain the model with regularization.
[W] [TRT] Unused Input: token_type_ids
[E] [TRT] something else went wrong
"""


def test_gate_fails_on_fp16_findings_and_lists_them():
    log = BuildLog.parse(TRT_LOG)
    categories = [f.category for f in log.findings()]
    assert categories == ["fp16_subnormal", "fp16_overflow", "fp16_overflow"]
    with pytest.raises(Fp16RangeError, match="3 FP16 range problem") as info:
        gate(log)
    assert isinstance(info.value, CheckFailedError) and info.value.exit_code == 4
    assert "--waive-fp16-overflow" in info.value.hint
    assert len(info.value.details["findings"]) == 3


def test_gate_waiver_records_findings():
    result = gate(BuildLog.parse(TRT_LOG), waive=True)
    assert result["waived"] and len(result["findings"]) == 3


def test_clean_log_passes():
    log = BuildLog()
    log.add("WARNING", "Unused Input: token_type_ids")
    log.add("INFO", "Total Activation Memory: 1234")
    assert gate(log) == {"findings": [], "waived": False}
