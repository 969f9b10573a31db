"""Adaptive spin policy (issue 16): spinning sessions while idle, blocking ones under contention."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import UsageError
from edgemm.runtime import sessions
from edgemm.runtime.backends.onnxruntime import OrtBackend
from edgemm.runtime.sessions import AdaptiveSession, ContentionDetector, create_session
from tests.tensorrt.conftest import _onnx_model

BUSY = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"


class _Machine:
    """Synthetic /proc readings and clock: ``advance(seconds, others=cores, own=cores)``."""

    def __init__(self) -> None:
        self.now, self.busy, self.own = 100.0, 5000.0, 10.0

    def read(self) -> tuple[float, float] | None:
        return self.busy, self.own

    def clock(self) -> float:
        return self.now

    def advance(self, seconds: float, *, others: float, own: float = 0.0) -> None:
        self.now += seconds
        self.own += own * seconds
        self.busy += (others + own) * seconds


def _spin_entry(session) -> str | None:
    try:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # ONNX Runtime: no such entry, i.e. its default (spinning)
        return None


@pytest.fixture()
def machine(monkeypatch: pytest.MonkeyPatch) -> tuple[_Machine, ContentionDetector]:
    monkeypatch.delenv("EDGEMM_SPIN", raising=False)
    fake = _Machine()
    detector = ContentionDetector(fake.read, clock=fake.clock)
    monkeypatch.setattr(sessions, "contention_detector", lambda: detector)
    return fake, detector


def test_detector_counts_only_other_processes_with_hysteresis(machine):
    fake, detector = machine
    fake.advance(0.2, others=0.1, own=2.0)  # our own spinning workers are not contention
    assert detector.check() is False
    fake.advance(0.05, others=2.0)  # sampled at most every 100 ms: the old answer stands
    assert detector.check() is False
    fake.advance(0.1, others=0.6)
    assert detector.check() is True
    fake.advance(0.2, others=0.4)  # between leave (0.3) and enter (0.5): stays contended
    assert detector.check() is True
    fake.advance(0.2, others=0.2)
    assert detector.check() is False
    fake.advance(0.2, others=0.4)  # below enter: stays quiet
    assert detector.check() is False
    assert detector.other_cores == pytest.approx(0.4)


def test_unreadable_proc_means_no_adaptation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("EDGEMM_SPIN", raising=False)
    detector = ContentionDetector(lambda: None)
    assert not detector.available and detector.check() is False
    monkeypatch.setattr(sessions, "contention_detector", lambda: detector)
    _onnx_model(tmp_path / "m.onnx")
    session = create_session(tmp_path / "m.onnx", threads=2)
    assert not isinstance(session, AdaptiveSession)
    assert _spin_entry(session) == "0"  # the steady blocking policy stays


def test_second_session_is_made_on_contention_only_and_answers_the_same(tmp_path: Path, machine):
    fake, _ = machine
    expected_w = _onnx_model(tmp_path / "m.onnx")
    session = create_session(tmp_path / "m.onnx", threads=2)
    assert isinstance(session, AdaptiveSession)
    assert [i.name for i in session.get_inputs()] == ["x"] and session.get_providers() == ["CPUExecutionProvider"]
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    quiet = []
    for _ in range(3):
        fake.advance(0.2, others=0.1, own=1.9)
        quiet.append(session.run(["logits"], {"x": x})[0])
        assert session.last_mode == "spin"
    assert session.blocking is None
    fake.advance(0.2, others=1.0)
    busy = session.run(["logits"], {"x": x})[0]
    assert session.last_mode == "block" and session.blocking is not None
    assert _spin_entry(session.spinning) is None and _spin_entry(session.blocking) == "0"
    np.testing.assert_array_equal(busy, quiet[0])
    np.testing.assert_allclose(busy, x @ expected_w, rtol=1e-5)
    blocking = session.blocking
    fake.advance(0.2, others=0.0)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], quiet[0])
    assert session.last_mode == "spin" and session.blocking is blocking  # kept, not remade


def test_the_backend_adapts(tmp_path: Path, machine):
    fake, _ = machine
    _onnx_model(tmp_path / "m.onnx")
    backend = OrtBackend(tmp_path / "m.onnx", [TensorSpec("x", "float32", ["batch", 4], {"batch": [1, 2, 8]})],
                         [TensorSpec("logits", "float32", ["batch", 3])], threads=2)
    with backend:
        assert isinstance(backend._session, AdaptiveSession) and backend.providers == ["CPUExecutionProvider"]
        fake.advance(0.2, others=1.5)
        backend.run({"x": np.ones((2, 4), np.float32)})
        assert backend._session.last_mode == "block"


def test_one_row_under_contention_runs_single_threaded(tmp_path: Path, machine):
    fake, _ = machine
    expected_w = _onnx_model(tmp_path / "m.onnx")
    session = create_session(tmp_path / "m.onnx", threads=2)
    one = np.ones((1, 4), np.float32)
    session.run(["logits"], {"x": one})
    assert session.last_mode == "spin" and session.single is None  # quiet: one row spins like a batch
    fake.advance(0.2, others=1.5)
    np.testing.assert_allclose(session.run(["logits"], {"x": one})[0], one @ expected_w, rtol=1e-5)
    assert session.last_mode == "one-thread" and session.blocking is None  # only what was needed is made
    assert session.single.get_session_options().intra_op_num_threads == 1
    session.run(["logits"], {"x": np.ones((2, 4), np.float32)})
    assert session.last_mode == "block" and session.blocking.get_session_options().intra_op_num_threads == 2
    single = session.single
    session.run(["logits"], {"x": one})
    assert session.last_mode == "one-thread" and session.single is single  # kept, not remade


@pytest.mark.parametrize(("value", "entry"), [("1", None), ("0", "0")])
def test_env_forces_one_policy(tmp_path: Path, machine, monkeypatch: pytest.MonkeyPatch, value, entry):
    monkeypatch.setenv("EDGEMM_SPIN", value)
    _onnx_model(tmp_path / "m.onnx")
    session = create_session(tmp_path / "m.onnx", threads=2)
    assert not isinstance(session, AdaptiveSession)
    assert _spin_entry(session) == entry


def test_single_threaded_and_unknown_env(tmp_path: Path, machine, monkeypatch: pytest.MonkeyPatch):
    _onnx_model(tmp_path / "m.onnx")
    assert not isinstance(create_session(tmp_path / "m.onnx", threads=1), AdaptiveSession)  # nothing spins
    monkeypatch.setenv("EDGEMM_SPIN", "sometimes")
    with pytest.raises(UsageError, match="EDGEMM_SPIN"):
        create_session(tmp_path / "m.onnx", threads=2)


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs /proc and two usable cores")
def test_a_real_busy_core_is_detected():
    detector = ContentionDetector()
    assert detector.available
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    seen = []
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(seen):
            time.sleep(0.15)
            seen.append(detector.check())
    finally:
        busy.kill()
        busy.wait()
    # Only "detected" is asserted: other processes on a shared test machine may add contention,
    # never remove it.
    assert any(seen), detector.other_cores


def test_feed_rows_reads_the_first_inputs_leading_axis_and_refuses_what_has_none():
    assert sessions.feed_rows({"x": np.zeros((3, 4)), "y": np.zeros((5,))}) == 3
    for feed in ({}, {"x": np.float32(1.0)}, {"x": [1, 2]}):
        with pytest.raises(ValueError):
            sessions.feed_rows(feed)
