"""The ONNX Runtime backend: feed validation, provider checks, device fallback reporting."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

from edgemm.bundle.verify import verify_bundle
from edgemm.errors import (
    BackendUnavailableError,
    DeviceFallbackError,
    InvalidInputError,
    UsageError,
)
from edgemm.runtime import Predictor
from edgemm.runtime.backends.onnxruntime import OrtBackend
from edgemm.runtime.sessions import default_threads


def _backend(bundle, **kwargs):
    manifest = verify_bundle(bundle)
    return OrtBackend(bundle / manifest.artifacts[0].path, manifest.inputs, manifest.outputs, **kwargs), manifest


def _feed(batch=1, seq=5):
    return {
        "input_ids": np.ones((batch, seq), dtype=np.int64),
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "pixel_values": np.zeros((batch, 3, 32, 32), dtype=np.float32),
    }


def test_run_validates_feed(tiny_bundle):
    backend, _ = _backend(tiny_bundle)
    with backend:
        assert backend.run(_feed())["logits"].shape == (1, 3)
        bad = _feed()
        bad["input_ids"] = bad["input_ids"].astype(np.int32)
        with pytest.raises(InvalidInputError, match="dtype"):
            backend.run(bad)
        bad = _feed()
        del bad["pixel_values"]
        with pytest.raises(InvalidInputError, match="missing"):
            backend.run(bad)
        bad = _feed()
        bad["pixel_values"] = np.zeros((1, 3, 31, 32), dtype=np.float32)
        with pytest.raises(InvalidInputError, match="shape"):
            backend.run(bad)
        bad = _feed()
        bad["attention_mask"] = np.ones((1, 6), dtype=np.int64)
        with pytest.raises(InvalidInputError, match="Axis 'seq'"):
            backend.run(bad)
        with pytest.raises(InvalidInputError, match=r"batch is too large: 65 items; this model takes at most 64") as info:
            backend.run(_feed(batch=65))
        assert "Split the batch" in info.value.hint
        with pytest.raises(InvalidInputError, match=r"text is too long: 41 tokens; this model takes at most 40"):
            backend.run(_feed(seq=41))


def test_options_are_validated(tiny_bundle):
    with pytest.raises(UsageError, match="optimization"):
        _backend(tiny_bundle, optimization="max")
    with pytest.raises(UsageError, match="device"):
        _backend(tiny_bundle, device="tpu")
    backend, _ = _backend(tiny_bundle, threads=1, optimization="basic")
    with backend:
        assert backend.providers == ["CPUExecutionProvider"] and backend.device == "cpu"
    assert 1 <= default_threads() <= 4


def test_cuda_requested_without_cuda_provider(tiny_bundle):
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        Predictor.load(tiny_bundle, device="cuda")
    backend, _ = _backend(tiny_bundle, device="cuda")
    with pytest.raises(BackendUnavailableError, match="no CUDAExecutionProvider") as info:
        backend.activate()
    assert "onnxruntime-gpu" in info.value.hint
    predictor = Predictor.load(tiny_bundle, device="auto")
    assert predictor.device == "cpu" and predictor.degraded is None


def test_silent_cpu_fallback_is_an_error_or_reported(tiny_bundle, monkeypatch):
    """ONNX Runtime asked for CUDA where it cannot run it places the session on the CPU without
    raising; the backend must notice. (Only the availability probe is patched: the session is
    real and really falls back.)"""
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    real = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    strict, _ = _backend(tiny_bundle, device="cuda")
    with pytest.raises(DeviceFallbackError, match="using CPUExecutionProvider"):
        strict.activate()
    lenient, _ = _backend(tiny_bundle, device="cuda", allow_cpu_fallback=True)
    with lenient:
        assert lenient.degraded and "CPUExecutionProvider" in lenient.degraded
        assert lenient.device == "cpu"
        assert lenient.run(_feed())["logits"].shape == (1, 3)


@pytest.mark.gpu
def test_cuda_backend_matches_cpu(tiny_bundle):
    cpu, _ = _backend(tiny_bundle, device="cpu")
    gpu, _ = _backend(tiny_bundle, device="cuda")
    with cpu, gpu:
        assert gpu.device == "cuda"
        np.testing.assert_allclose(gpu.run(_feed())["logits"], cpu.run(_feed())["logits"], atol=1e-4)
