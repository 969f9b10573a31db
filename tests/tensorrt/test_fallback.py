"""The fallback chain TensorRT → ORT CUDA → ORT CPU: every skip logged with its reason, never a rebuild."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edgemm.bundle.verify import verify_bundle
from edgemm.errors import BackendUnavailableError
from edgemm.runtime import Predictor
from edgemm.runtime.backends.onnxruntime import tensorrt_ep_options
from edgemm.runtime.predictor import choose_engine
from edgemm.runtime.trt_compat import bundle_cache_dir
from tests.tensorrt.conftest import DESKTOP, NO_TRT, ORIN_NANO, engine_record, make_bundle


@pytest.fixture
def no_deserialize(monkeypatch):
    """Fail the test if anything tries to deserialize an engine."""
    import edgemm.runtime.backends.tensorrt as trt_backend

    def forbidden(self):
        raise AssertionError("an engine was deserialized")

    monkeypatch.setattr(trt_backend.TensorRTBackend, "_activate_impl", forbidden)


def test_mismatched_engine_falls_back_to_ort_cpu_with_reason(tmp_path, caplog, no_deserialize):
    bundle = make_bundle(tmp_path / "b", engines=[("trt-fp16", engine_record(ORIN_NANO))])
    with caplog.at_level(logging.INFO, logger="edgemm.runtime"):
        predictor = Predictor.load(bundle, device="auto", host=DESKTOP)
    assert predictor.artifact.name == "fp32" and predictor.device == "cpu"
    first = predictor.skipped[0]
    assert first.startswith("trt-fp16: TensorRT engine mismatch") and "compute capability 8.7" in first
    assert "edgemm build-engine" in first and "--rebuild" in first
    assert any("trt-fp16" in r.getMessage() and "mismatch" in r.getMessage() for r in caplog.records)
    out = predictor.run({"x": np.ones((2, 4), np.float32)})
    assert out["logits"].shape == (2, 3)


def test_fallback_order_is_engine_then_cuda_then_cpu(tmp_path, no_deserialize):
    bundle = make_bundle(tmp_path / "b", engines=[("trt-fp16", engine_record(ORIN_NANO))])
    predictor = Predictor.load(bundle, device="auto", host=NO_TRT)
    steps = [s.split(":")[0] for s in predictor.skipped]
    assert steps[:2] == ["trt-fp16", "cuda"]  # engine skipped first, then ORT CUDA (absent here), then CPU runs
    assert "TensorRT engine unavailable" in predictor.skipped[0]


def test_stale_engine_is_reported_not_rebuilt(tmp_path, monkeypatch, no_deserialize):
    import edgemm.tensorrt.build as build

    monkeypatch.setattr(build, "engine_from_onnx", lambda *a, **k: pytest.fail("a rebuild happened during load"))
    bundle = make_bundle(tmp_path / "b", engines=[("trt-fp16", engine_record(ORIN_NANO))])
    newer = ORIN_NANO.__class__(**{**ORIN_NANO.to_dict(), "tensorrt": "10.7.0"})
    predictor = Predictor.load(bundle, host=newer)
    assert "stale" in predictor.skipped[0] and "10.7.0" in predictor.skipped[0]


def test_device_tensorrt_raises_instead_of_falling_back(tmp_path, no_deserialize):
    bundle = make_bundle(tmp_path / "b", engines=[("trt-fp16", engine_record(ORIN_NANO))])
    with pytest.raises(BackendUnavailableError, match="No TensorRT engine") as info:
        Predictor.load(bundle, device="tensorrt", host=DESKTOP)
    assert "build-engine" in info.value.hint
    plain = make_bundle(tmp_path / "plain")
    with pytest.raises(BackendUnavailableError, match="no TensorRT engine"):
        Predictor.load(plain, device="tensorrt", host=DESKTOP)


def test_policy_refused_engine_is_skipped_even_on_a_matching_host(tmp_path, no_deserialize):
    bundle = make_bundle(tmp_path / "b", engines=[("trt-vc", engine_record(ORIN_NANO, version_compatible=True))])
    predictor = Predictor.load(bundle, host=ORIN_NANO)
    assert "refused" in predictor.skipped[0] and "lean TensorRT runtime" in predictor.skipped[0]


def test_choose_engine_ranks_compatible_engines(tmp_path):
    bundle = make_bundle(tmp_path / "b", engines=[("trt-a", engine_record(ORIN_NANO)), ("trt-b", engine_record(DESKTOP))])
    usable, skipped = choose_engine(verify_bundle(bundle), ORIN_NANO)
    assert [a.name for a in usable] == ["trt-a"] and skipped[0].startswith("trt-b: TensorRT engine mismatch")


def test_compatible_engine_is_hash_checked_before_deserialization(tmp_path, monkeypatch):
    """A matching record leads to TensorRTBackend.from_bundle, which hashes the engine first."""
    import edgemm.runtime.backends.tensorrt as trt_backend
    from edgemm.errors import BundleError

    bundle = make_bundle(tmp_path / "b", engines=[("trt-fp16", engine_record(ORIN_NANO))])
    engine = bundle / "engines/trt-fp16.plan"
    engine.write_bytes(engine.read_bytes()[::-1])  # same size, other bytes
    monkeypatch.setattr(trt_backend.TensorRTBackend, "_activate_impl",
                        lambda self: pytest.fail("deserialized an unverified engine"))
    manifest = verify_bundle(bundle, check_hashes=False)
    with pytest.raises(BundleError, match="sha256"):
        trt_backend.TensorRTBackend.from_bundle(bundle, manifest, manifest.artifact("trt-fp16"), host=ORIN_NANO)


def test_engine_that_fails_to_load_falls_back(tmp_path, monkeypatch):
    import edgemm.runtime.backends.tensorrt as trt_backend
    from edgemm.errors import MissingDependencyError

    def missing(self):
        raise MissingDependencyError("tensorrt is required for running TensorRT engines but cannot be imported.")

    monkeypatch.setattr(trt_backend.TensorRTBackend, "_activate_impl", missing)
    bundle = make_bundle(tmp_path / "b", engines=[("trt-fp16", engine_record(ORIN_NANO))])
    predictor = Predictor.load(bundle, host=ORIN_NANO)
    assert predictor.artifact.name == "fp32"
    assert "TensorRT could not load the engine" in predictor.skipped[0]


def test_tensorrt_ep_options(tmp_path, cache):
    bundle = make_bundle(tmp_path / "b")
    manifest = verify_bundle(bundle)
    cache_dir = bundle_cache_dir(bundle)
    assert cache_dir.is_relative_to(cache) and not cache_dir.is_relative_to(bundle)
    opts = tensorrt_ep_options(manifest.inputs, cache_dir, fp16=True, workspace_mb=512,
                               profiles=[{"batch": [1, 1, 1]}, {}], ep_context=str(cache_dir / "ctx.onnx"))
    assert opts["trt_fp16_enable"] == "True" and opts["trt_int8_enable"] == "False"
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_engine_cache_path"].startswith(str(cache_dir))
    assert opts["trt_timing_cache_path"].startswith(str(cache_dir))
    assert opts["trt_profile_min_shapes"] == "x:1x4,x:1x4"
    assert opts["trt_profile_opt_shapes"] == "x:1x4,x:2x4"
    assert opts["trt_profile_max_shapes"] == "x:1x4,x:8x4"
    assert opts["trt_max_workspace_size"] == str(512 * 2**20)
    assert opts["trt_dump_ep_context_model"] == "True" and opts["trt_ep_context_file_path"].endswith("ctx.onnx")


def test_tensorrt_ep_without_the_provider_is_a_clear_error(tmp_path, cache):
    bundle = make_bundle(tmp_path / "b", extra_onnx=True)
    with pytest.raises(BackendUnavailableError, match="TensorrtExecutionProvider"):
        Predictor.load(bundle, device="tensorrt-ep")
