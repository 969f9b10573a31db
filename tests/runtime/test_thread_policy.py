"""The CPU thread policy (issue 16): sessions that cannot adapt block instead of spinning."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgemm.bundle.manifest import TensorSpec
from edgemm.runtime.backends.onnxruntime import OrtBackend
from edgemm.runtime.sessions import CPU_SESSION_CONFIG, openvino_cpu_properties, session_options
from tests.tensorrt.conftest import _onnx_model


def _entries(options) -> dict[str, str]:
    return {key: options.get_session_config_entry(key) for key in CPU_SESSION_CONFIG}


def _has_entry(options) -> bool:
    try:
        options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # ONNX Runtime: "does not have configuration with key"
        return False
    return True


def test_sessions_block_instead_of_spinning(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("EDGEMM_SPIN", raising=False)
    assert _entries(session_options(threads=2)) == {"session.intra_op.allow_spinning": "0",
                                                     "session.inter_op.allow_spinning": "0"}
    assert not _has_entry(session_options(thread_policy=False))  # ONNX Runtime's default: spin


def test_the_backend_session_carries_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # EDGEMM_SPIN=0: one blocking session (the default, auto, adapts: test_adaptive_sessions.py).
    monkeypatch.setenv("EDGEMM_SPIN", "0")
    _onnx_model(tmp_path / "m.onnx")
    backend = OrtBackend(tmp_path / "m.onnx", [TensorSpec("x", "float32", ["batch", 4], {"batch": [1, 2, 8]})],
                         [TensorSpec("logits", "float32", ["batch", 3])], threads=2)
    with backend:
        live = backend._session.get_session_options()
        assert _entries(live) == dict(CPU_SESSION_CONFIG)
        assert live.intra_op_num_threads == 2


def test_spinning_can_be_restored_for_comparisons(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EDGEMM_SPIN", "1")
    assert not _has_entry(session_options(threads=2))


def test_openvino_gets_the_same_kiosk_policy():
    props = openvino_cpu_properties(threads=2)
    assert props == {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2",
                     "ENABLE_CPU_PINNING": "NO"}
