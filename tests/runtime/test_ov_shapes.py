"""Static-shape OpenVINO compiles: made in the background for shapes seen often, checked against the
dynamic model before use, refused where they answer otherwise, bounded, and never what the gate sees."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edgemm.bundle.compare import Tolerance
from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.verify import verify_bundle
from edgemm.errors import UsageError
from edgemm.runtime.backends import ov_shapes
from edgemm.runtime.backends.openvino import (
    OpenVinoBackend,
    ThreadRequests,
    compile_model,
    static_compiler,
)
from edgemm.runtime.backends.ov_shapes import ShapeSpecializer, agree, configured_entries, signature
from tests.optimize.test_openvino_variants import export_ov_bundle

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def ov_bundle(work, tiny_ckpt, edgemm_cache):
    return export_ov_bundle(work, tiny_ckpt)


@pytest.fixture(scope="module")
def golden(ov_bundle) -> GoldenSet:
    return GoldenSet.load(ov_bundle / "golden.npz")


def _backend(bundle, name="ov-int8", **kwargs) -> OpenVinoBackend:
    manifest = verify_bundle(bundle)
    return OpenVinoBackend.from_artifact(bundle, manifest.artifact(name), manifest.inputs, manifest.outputs, **kwargs)


def _settle(backend, feed) -> None:
    """Run until a compile has started, wait for it, and run once more (its check)."""
    for _ in range(ov_shapes.DEFAULT_AFTER):
        backend.run(feed)
    assert backend.wait_for_compiles()
    backend.run(feed)


def test_a_shape_seen_often_is_compiled_checked_and_then_answers(ov_bundle, golden):
    with _backend(ov_bundle) as backend:
        dynamic = backend.run_reference(golden.feed)["logits"]
        for _ in range(ov_shapes.DEFAULT_AFTER - 1):
            backend.run(golden.feed)
        assert backend.shape_stats()["compiled"] == 0  # not yet seen often enough
        _settle(backend, golden.feed)
        stats = backend.shape_stats()
        assert stats["compiled"] == 1 and stats["adopted"] == 1 and stats["shapes"] == 1 and stats["refused"] == 0
        static = backend.run(golden.feed)["logits"]
        assert backend.shape_stats()["static_runs"] == stats["static_runs"] + 1
        # Within the artifact precision's tolerance of the dynamic model, and the same classes.
        assert agree({"logits": static}, {"logits": dynamic}, Tolerance.for_precision("int8"))
        np.testing.assert_allclose(static, dynamic, atol=1e-4)
        # Golden sets and the gate measure the dynamic model, never a static compile.
        runs = backend.shape_stats()["static_runs"]
        np.testing.assert_array_equal(backend.run_reference(golden.feed)["logits"], dynamic)
        assert backend.shape_stats()["static_runs"] == runs
        # Another shape runs the dynamic model until it, too, has been seen often enough.
        one = {k: np.ascontiguousarray(v[:1]) for k, v in golden.feed.items()}
        np.testing.assert_allclose(backend.run(one)["logits"], dynamic[:1], atol=1e-4)
        assert backend.shape_stats()["static_runs"] == runs


def test_a_static_compile_that_answers_otherwise_is_refused_for_good(ov_bundle, golden, caplog):
    manifest = verify_bundle(ov_bundle)
    dynamic = compile_model(ov_bundle / "model" / "ov-int8.xml")
    # The static compiles are made from the FP32 IR: they answer differently from the INT8 model.
    other = ov_bundle / manifest.artifact("ov-fp32").path
    specializer = ShapeSpecializer(static_compiler(other), Tolerance(atol=0.0, rtol=0.0), after=1)
    requests = ThreadRequests(dynamic, specializer)
    expected = requests.infer(golden.feed, ["logits"], specialize=False)["logits"]
    requests.infer(golden.feed, ["logits"])
    assert specializer.wait()
    with caplog.at_level(logging.WARNING, logger="edgemm.runtime"):
        got = requests.infer(golden.feed, ["logits"])["logits"]  # the check: refused, the dynamic answer stands
    np.testing.assert_array_equal(got, expected)
    assert "does not answer as the dynamic graph does" in caplog.text
    for _ in range(3):
        np.testing.assert_array_equal(requests.infer(golden.feed, ["logits"])["logits"], expected)
    assert not specializer.wait()  # never compiled again
    assert specializer.stats() == {"compiled": 1, "adopted": 0, "refused": 1, "failed": 0, "evicted": 0,
                                   "static_runs": 0, "short_of_memory": 0, "shapes": 0}
    requests.close()


def test_shapes_kept_and_compiles_are_bounded(ov_bundle, golden):
    xml = ov_bundle / "model" / "ov-int8.xml"
    specializer = ShapeSpecializer(static_compiler(xml), Tolerance.for_precision("int8"), entries=1, after=1,
                                   budget=2)
    requests = ThreadRequests(compile_model(xml), specializer)
    feeds = [{k: np.ascontiguousarray(v[:rows]) for k, v in golden.feed.items()} for rows in (1, 2, 3)]
    for feed in feeds:
        requests.infer(feed, ["logits"])
        specializer.wait()
        requests.infer(feed, ["logits"])  # checked and adopted (the first evicts nothing)
    stats = specializer.stats()
    # One shape kept (the second evicted the first); the budget of two compiles left the third dynamic.
    assert stats["compiled"] == 2 and stats["adopted"] == 2 and stats["evicted"] == 1 and stats["shapes"] == 1
    assert specializer.held(signature(feeds[1])) and not specializer.held(signature(feeds[0]))
    requests.infer(feeds[2], ["logits"])
    assert not specializer.wait()
    # A closed specializer drops its compiles; a compile in flight is discarded when it ends.
    requests.infer(feeds[0], ["logits"])
    requests.close()
    specializer.wait()
    assert specializer.stats()["shapes"] == 0 and not specializer.held(signature(feeds[1]))


def test_the_setting_and_which_models_get_static_compiles(ov_bundle, monkeypatch):
    monkeypatch.delenv(ov_shapes.ENV, raising=False)
    assert configured_entries() is None  # the memory budget decides
    monkeypatch.setenv(ov_shapes.ENV, "2")
    assert configured_entries() == 2
    for bad in ("many", "-1"):
        monkeypatch.setenv(ov_shapes.ENV, bad)
        with pytest.raises(UsageError, match="is not a count of shapes") as info:
            configured_entries()
        assert "Use 0" in info.value.hint
    monkeypatch.setenv(ov_shapes.ENV, "0")
    with _backend(ov_bundle) as backend:
        assert backend.shape_stats() is None and not backend.wait_for_compiles()
    monkeypatch.delenv(ov_shapes.ENV)
    xml = ov_bundle / "model" / "ov-int8.xml"
    weights = xml.with_suffix(".bin").stat().st_size
    with _backend(ov_bundle) as backend:
        assert backend.shape_stats() is not None
        assert backend._requests.specializer.entries == ov_shapes.DEFAULT_ENTRIES  # a tiny IR: the most
    # As many shapes as the memory budget holds at the estimated cost of one; none: no specializer.
    monkeypatch.setattr(ov_shapes, "MEMORY_BUDGET_BYTES", int(2.5 * ov_shapes.COST_PER_WEIGHT_BYTE * weights))
    assert ov_shapes.specializer_for(xml, static_compiler(xml), "int8").entries == 2
    monkeypatch.setattr(ov_shapes, "MEMORY_BUDGET_BYTES", weights)
    with _backend(ov_bundle) as backend:
        assert backend.shape_stats() is None
    monkeypatch.setenv(ov_shapes.ENV, "3")  # set explicitly: kept whatever the estimate says
    assert ov_shapes.specializer_for(xml, static_compiler(xml), "int8").entries == 3


def test_no_compile_starts_while_memory_is_short(ov_bundle, golden, monkeypatch):
    xml = ov_bundle / "model" / "ov-int8.xml"
    specializer = ShapeSpecializer(static_compiler(xml), Tolerance.for_precision("int8"), after=1, cost=2**30)
    monkeypatch.setattr(ov_shapes, "available_memory", lambda: 2**30)  # free: half of what is wanted
    assert specializer.lookup(signature(golden.feed)) == ("dynamic", None)
    assert not specializer.wait() and specializer.stats()["short_of_memory"] == 1
    monkeypatch.setattr(ov_shapes, "available_memory", lambda: 2**31)
    specializer.lookup(signature(golden.feed))
    assert specializer.wait() and specializer.stats()["compiled"] == 1
    specializer.close()


def test_ranking_times_the_dynamic_model_and_the_kept_backend_specializes(ov_bundle, golden):
    from edgemm.runtime.ranking import measure

    manifest = verify_bundle(ov_bundle)
    arts = [manifest.artifact("ov-int8"), manifest.artifact("ov-fp32")]

    def open_backend(art):
        return _backend(ov_bundle, art.name).activate()

    for sequential in (False, True):
        timings, live, _ = measure(arts, open_backend, golden.feed, budget_s=0.2, sequential=sequential)
        assert set(timings) == {a.name for a in arts} and all(t.runs > ov_shapes.DEFAULT_AFTER for t in timings.values())
        for backend in live.values():
            # Many runs of one shape while timed, and no compile started by them…
            assert backend.shape_stats()["compiled"] == 0 and not backend.wait_for_compiles()
            # …but the backend the predictor keeps compiles for the shapes it keeps seeing.
            _settle(backend, golden.feed)
            assert backend.shape_stats()["adopted"] == 1
            backend.deactivate()


class _Broken:
    """A compiled model whose requests fail as OpenVINO does (a bare RuntimeError)."""

    def create_infer_request(self):
        return self

    def infer(self, *args, **kwargs):
        raise RuntimeError("Exception from src/plugins/intel_cpu: simulated")


def test_a_static_compile_that_fails_at_run_time_gives_way_to_the_dynamic_model(ov_bundle, golden, caplog):
    xml = ov_bundle / "model" / "ov-int8.xml"
    specializer = ShapeSpecializer(static_compiler(xml), Tolerance.for_precision("int8"))
    requests = ThreadRequests(compile_model(xml), specializer)
    expected = requests.infer(golden.feed, ["logits"], specialize=False)
    sig = signature(golden.feed)
    specializer.settle(sig, _Broken(), expected, expected)  # adopted, then it breaks
    assert specializer.held(sig)
    with caplog.at_level(logging.WARNING, logger="edgemm.runtime"):
        got = requests.infer(golden.feed, ["logits"])
    np.testing.assert_array_equal(got["logits"], expected["logits"])  # answered all the same
    assert "failed to run; that shape keeps the dynamic graph" in caplog.text
    assert not specializer.held(sig) and specializer.stats()["refused"] == 1
    # A check whose static run fails refuses the shape too; one that could not compare keeps it pending.
    other = {k: np.ascontiguousarray(v[:1]) for k, v in golden.feed.items()}
    one = signature(other)
    specializer.settle(one, _Broken(), None, requests.infer(other, ["logits"], specialize=False))
    assert specializer.lookup(one) == ("dynamic", None) and specializer.stats()["refused"] == 2
    two = (("x", (2,)),)
    specializer.settle(two, "compiled", None, None)
    assert specializer.lookup(two) == ("check", "compiled")
    # While one caller checks a compile, the shape is neither compiled again nor checked twice.
    for _ in range(5):
        assert specializer.lookup(two) == ("dynamic", None)
    assert not specializer.wait()
    requests.close()


def test_a_bundle_changed_on_disk_after_loading_gets_no_static_compile(ov_bundle, golden, tmp_path, caplog):
    import shutil

    root = tmp_path / "bundle"
    shutil.copytree(ov_bundle, root)
    with _backend(root) as backend:
        expected = backend.run_reference(golden.feed)["logits"]
        # Another model's IR renamed over the loaded one, as a swap or an edit under a running kiosk would.
        for suffix in (".xml", ".bin"):
            (root / "model" / f"ov-fp32{suffix}").replace(root / "model" / f"ov-int8{suffix}")
        with caplog.at_level(logging.WARNING, logger="edgemm.runtime"):
            for _ in range(ov_shapes.DEFAULT_AFTER):
                backend.run(golden.feed)
            backend.wait_for_compiles()  # the refusal is quick: it may be over before this waits
        assert "changed on disk since it was loaded" in caplog.text
        stats = backend.shape_stats()
        assert stats["failed"] == 1 and stats["compiled"] == 0 and stats["shapes"] == 0
        for _ in range(3):  # the model that was loaded and checked keeps answering
            np.testing.assert_array_equal(backend.run(golden.feed)["logits"], expected)
        assert not backend.wait_for_compiles()


def test_a_client_sending_ever_new_shapes_costs_bounded_memory_and_compiles(ov_bundle, golden):
    xml = ov_bundle / "model" / "ov-int8.xml"
    specializer = ShapeSpecializer(static_compiler(xml), Tolerance.for_precision("int8"), after=2)
    first = signature(golden.feed)
    specializer.lookup(first)
    for length in range(ov_shapes._SEEN_LIMIT):  # each a new shape, seen once
        specializer.lookup((("input_ids", (1, 1000 + length)),))
    # The first shape's sighting was forgotten with the oldest: seen again, it counts from one.
    specializer.lookup(first)
    assert not specializer.wait() and specializer.stats()["compiled"] == 0
    specializer.lookup(first)
    assert specializer.wait()
    specializer.close()


def test_static_and_dynamic_answers_agree_only_when_they_are_the_same_answers():
    tol = Tolerance.for_precision("int8")
    logits = np.array([[1.0, 0.99], [0.2, -0.3]], np.float32)
    assert agree({"logits": logits + 0.01}, {"logits": logits}, tol)
    # Within the elementwise tolerance, but the near-tie of row 0 flipped: refused.
    assert not agree({"logits": np.array([[0.99, 1.0], [0.2, -0.3]], np.float32)}, {"logits": logits}, tol)
    assert not agree({"logits": logits + 0.5}, {"logits": logits}, tol)  # out of tolerance
    assert not agree({"logits": logits.astype(np.float64)}, {"logits": logits}, tol)  # another dtype
    assert not agree({}, {"logits": logits}, tol)
    nan = logits.copy()
    nan[1, 1] = np.nan
    assert agree({"logits": nan.copy()}, {"logits": nan}, tol)  # non-finite where, and only where, it was
    assert not agree({"logits": logits}, {"logits": nan}, tol)
    assert not agree({"logits": nan}, {"logits": logits}, tol)
    ids = np.array([3, 20])
    assert agree({"ids": ids.copy()}, {"ids": ids}, tol) and not agree({"ids": ids + 1}, {"ids": ids}, tol)
