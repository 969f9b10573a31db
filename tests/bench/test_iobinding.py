"""The fixed-shape IO-binding contender (the CUDA benchmark path) exercised on the CPU provider.

On the GPU the same code adds CUDA graphs; what runs here is everything else: free-dimension
overrides, one session per shape, device tensors bound once and refreshed in place, and the
model-only / logits split the timing loop relies on.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgemm.bench.bench import _input_maker, _raw_rows
from edgemm.bench.iobinding import IOBindingContender
from edgemm.bench.runner import TimingOptions, run_interleaved
from edgemm.bundle.verify import verify_bundle
from edgemm.errors import BackendUnavailableError
from edgemm.runtime.golden import load_golden
from edgemm.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def bound(tiny_bundle):
    contender = IOBindingContender(tiny_bundle, verify_bundle(tiny_bundle), "fp32", device="cpu")
    yield contender
    contender.close()


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    with Predictor.load(tiny_bundle, device="cpu", artifact="fp32") as p:
        yield p


def test_probe_session_is_created_with_the_golden_shape(bound):
    assert bound.name == "edgemm:fp32+iobinding"
    assert bound.info["io_binding"] is True and bound.info["cuda_graphs"] is False
    assert bound.info["fixed_shape_sessions"] == 1


def test_logits_match_the_predictor_and_follow_new_values(bound, predictor, tiny_bundle):
    feed = load_golden(tiny_bundle, verify_bundle(tiny_bundle)).feed
    expected = predictor.run(feed)[bound.output]
    np.testing.assert_allclose(bound.logits(bound.native(feed)), expected, atol=1e-5)
    # Same shape, other values: the bound device tensors are refreshed in place, no new session.
    other = {k: (np.ascontiguousarray(v[::-1]) if v.ndim else v) for k, v in feed.items()}
    np.testing.assert_allclose(bound.logits(bound.native(other)), predictor.run(other)[bound.output], atol=1e-5)
    assert bound.info["fixed_shape_sessions"] == 1


def test_each_shape_gets_its_own_fixed_session(bound, predictor, tiny_bundle):
    manifest = verify_bundle(tiny_bundle)
    make = _input_maker(tiny_bundle, manifest, _raw_rows(tiny_bundle, manifest, None))
    _, feed = make(3, 12)
    handle = bound.native(feed)
    np.testing.assert_allclose(bound.logits(handle), predictor.run(feed)[bound.output], atol=1e-5)
    assert bound.info["fixed_shape_sessions"] == 2
    # The overrides really fix the shape: the session refuses another batch size.
    _, wider = make(2, 12)
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        handle.session.run(None, wider)


def test_model_only_timing_runs_on_bound_handles(bound, tiny_bundle):
    manifest = verify_bundle(tiny_bundle)
    results = run_interleaved([bound], _input_maker(tiny_bundle, manifest, _raw_rows(tiny_bundle, manifest, None)),
                              TimingOptions(batch_sizes=(1, 2), iterations=4, rounds=2, warmup=1))
    assert {(m.mode, m.batch) for m in results} == {("e2e", 1), ("model", 1), ("e2e", 2), ("model", 2)}
    assert all(m.error is None and m.stats["n"] == 4 for m in results)


def test_cuda_needs_the_cuda_provider(tiny_bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        IOBindingContender(tiny_bundle, verify_bundle(tiny_bundle), "fp32", device="cuda")
