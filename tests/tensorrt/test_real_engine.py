"""Real TensorRT builds and runs. Marked ``trt``: skipped (with the reason) where TensorRT is not
installed — which is every machine of this project's CI so far; they have never run here."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgemm.runtime import Predictor
from tests.tensorrt.conftest import make_bundle

pytestmark = pytest.mark.trt


@pytest.fixture
def engine_bundle(tmp_path, cache):
    from edgemm.tensorrt.bundle_engines import EngineRequest, add_engines
    from edgemm.tensorrt.plan import BuildOptions

    bundle = make_bundle(tmp_path / "b")
    reports = add_engines(bundle, [EngineRequest("fp32", BuildOptions(), profiles=[
        {"name": "b1", "batch": 1}, {"name": "b8", "batch": [1, 2, 8]}])])
    assert reports[0]["outcome"] == "built"
    return bundle


def test_build_records_compat_and_runs_through_the_predictor(engine_bundle):
    predictor = Predictor.load(engine_bundle, device="tensorrt")
    assert predictor.artifact.kind == "tensorrt"
    record = predictor.artifact.requirements
    assert record["tensorrt"] and record["compute_capability"] and record["built_with"]["cache_key"]
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    reference = Predictor.load(engine_bundle, device="cpu").run({"x": x})["logits"]
    for _ in range(3):  # plain run, capture, graph replay
        np.testing.assert_allclose(predictor.run({"x": x})["logits"], reference, atol=1e-2)
    np.testing.assert_allclose(predictor.run({"x": x[:1]})["logits"], reference[:1], atol=1e-2)  # profile b1


def test_one_context_per_thread(engine_bundle):
    predictor = Predictor.load(engine_bundle, device="tensorrt")
    x = np.ones((2, 4), np.float32)
    expected = predictor.run({"x": x})["logits"]
    errors = []

    def work():
        try:
            for _ in range(5):
                np.testing.assert_allclose(predictor.run({"x": x})["logits"], expected, atol=1e-5)
        except Exception as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(predictor.backend._states) == 5


def test_rebuild_needs_to_be_asked_for(engine_bundle):
    from edgemm.errors import UsageError
    from edgemm.tensorrt.bundle_engines import EngineRequest, add_engines
    from edgemm.tensorrt.plan import BuildOptions

    same = [EngineRequest("fp32", BuildOptions(), profiles=[{"name": "b1", "batch": 1}, {"name": "b8", "batch": [1, 2, 8]}])]
    assert add_engines(engine_bundle, same)[0]["outcome"] == "up to date"
    with pytest.raises(UsageError, match="--rebuild"):
        add_engines(engine_bundle, [EngineRequest("fp32", BuildOptions(workspace_mb=256))])
    assert add_engines(engine_bundle, [EngineRequest("fp32", BuildOptions(workspace_mb=256))], rebuild=True)


def test_verify_runs_engine_golden_set(engine_bundle):
    from click.testing import CliRunner

    from edgemm.cli import cli

    result = CliRunner().invoke(cli, ["verify", str(engine_bundle), "--device", "tensorrt"])
    assert result.exit_code == 0, result.output


@pytest.mark.gpu
def test_ort_tensorrt_ep(tmp_path, cache):
    import onnxruntime

    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has no TensorrtExecutionProvider")
    bundle = make_bundle(tmp_path / "b")
    predictor = Predictor.load(bundle, device="tensorrt-ep")
    assert predictor.device == "tensorrt"
    assert predictor.run({"x": np.ones((2, 4), np.float32)})["logits"].shape == (2, 3)
