"""SplitBackend: the text part per row through a bounded LRU answer cache, then the rest of the model.

Equality claims, and why:
- against the unsplit FP32 graph, per row: within 1e-5. The split computes each text row alone at
  its own (unpadded) length; the whole graph computes it inside a padded batch, so only the float
  accumulation order over the longer axis differs (measured ~1e-7).
- a cached row against the same row computed fresh: bit-exact (a row's branch output is a pure
  function of its trimmed bytes, whatever batch it arrives in).
- batch 1, unpadded, against the unsplit graph: bit-exact expected (same engine, same nodes);
  checked within 1e-6 in case ONNX Runtime fuses differently across the cut.
- a batch answered by the whole part against the unsplit graph: bit-exact (it is that graph).

Tests of the cache run the parts route; the routing tests use the bundle's recorded share
(``tests.splits.WHOLE_FRACTION``) of new rows from which the whole graph answers.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgemm.bundle.manifest import Artifact
from edgemm.bundle.verify import verify_bundle
from edgemm.errors import BundleError, UsageError
from edgemm.runtime.backends.split import SplitBackend, parse_requirements, unavailable_reason
from edgemm.runtime.sessions import create_session
from tests.splits import ANSWERS, WHOLE_FRACTION, feeds_for, split_bundle


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):
    root, _ = split_bundle(tiny_bundle, tmp_path_factory.mktemp("split") / "b", entries=4)
    return root, verify_bundle(root)


def _whole_rows(root, manifest, texts):
    """The unsplit FP32 graph's logits for each text alone (batch 1, no padding)."""
    session = create_session(root / "model/fp32.onnx")
    return np.concatenate([session.run(["logits"], feed)[0] for feed in feeds_for(root, manifest, [[t] for t in texts])])


def _backend(root, manifest, route="parts", **kwargs):
    backend = SplitBackend.from_artifact(root, manifest.artifact("fp32-split"), manifest.inputs, manifest.outputs,
                                         **kwargs)
    backend.set_route(route)
    return backend.activate()


def test_mixed_cached_and_fresh_rows_match_the_unsplit_graph(bundle):
    root, manifest = bundle
    backend = _backend(root, manifest, cache_entries=16)
    whole = create_session(root / "model/fp32.onnx")
    first = feeds_for(root, manifest, [ANSWERS[:3]])[0]
    out1 = backend.run(first)["logits"]
    np.testing.assert_allclose(out1, whole.run(["logits"], first)[0], atol=1e-5, rtol=0)
    assert backend.cache_stats()["misses"] == 3 and backend.cache_stats()["hits"] == 0
    # Two cached answers (now padded to another length, in other positions, with other images) and a new one.
    texts = [ANSWERS[3], ANSWERS[0], ANSWERS[1], ANSWERS[0]]
    feed = feeds_for(root, manifest, [texts])[0]
    assert feed["input_ids"].shape[1] != first["input_ids"].shape[1]
    out2 = backend.run(feed)["logits"]
    stats = backend.cache_stats()
    assert stats["hits"] == 3 and stats["misses"] == 4, stats  # ANSWERS[3] once, the repeat in-batch counts as a miss
    np.testing.assert_allclose(out2, whole.run(["logits"], feed)[0], atol=1e-5, rtol=0)
    # Cached rows are bit-identical to the same rows computed with no cache at all.
    fresh = _backend(root, manifest, cache_entries=0)
    assert np.array_equal(out2, fresh.run(feed)["logits"])
    assert fresh.cache_stats()["entries"] == 0


def test_batch_one_unpadded_equals_the_unsplit_graph(bundle):
    root, manifest = bundle
    backend = _backend(root, manifest)
    texts = ANSWERS[:3]
    rows = np.concatenate([backend.run(f)["logits"] for f in feeds_for(root, manifest, [[t] for t in texts])])
    np.testing.assert_allclose(rows, _whole_rows(root, manifest, texts), atol=1e-6, rtol=0)
    assert manifest.artifact("fp32-split").validation["parity"]["batch1_unpadded_max_abs_diff"] <= 1e-6


def test_cache_is_a_bounded_lru(bundle):
    root, manifest = bundle
    backend = _backend(root, manifest, cache_entries=2)
    single = {t: f for t, f in zip(ANSWERS, feeds_for(root, manifest, [[t] for t in ANSWERS]))}
    for text in ANSWERS[:3]:  # a, b, c: a leaves
        backend.run(single[text])
    stats = backend.cache_stats()
    assert stats["entries"] == 2 and stats["evictions"] == 1 and stats["capacity"] == 2
    backend.run(single[ANSWERS[2]])  # c: hit, now most recent
    backend.run(single[ANSWERS[0]])  # a: miss, b leaves
    backend.run(single[ANSWERS[2]])  # c: still there
    stats = backend.cache_stats()
    assert (stats["hits"], stats["misses"], stats["evictions"]) == (2, 4, 2), stats
    backend.clear_cache()
    assert backend.cache_stats()["entries"] == 0 and backend.cache_stats()["hits"] == 0


def test_default_cache_size_comes_from_the_manifest(bundle):
    root, manifest = bundle
    backend = SplitBackend.from_artifact(root, manifest.artifact("fp32-split"), manifest.inputs, manifest.outputs)
    assert backend.cache_stats()["capacity"] == 4
    with pytest.raises(UsageError):
        SplitBackend.from_artifact(root, manifest.artifact("fp32-split"), manifest.inputs, manifest.outputs, cache_entries=-1)


def test_threads_share_one_cache(bundle):
    root, manifest = bundle
    backend = _backend(root, manifest, cache_entries=8)
    feeds = feeds_for(root, manifest, [[ANSWERS[i % 3], ANSWERS[(i + 1) % 3]] for i in range(6)])
    expected = [_backend(root, manifest, cache_entries=0).run(f)["logits"] for f in feeds]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for rep in range(5):
                for i, feed in enumerate(feeds):
                    results[(worker, rep * 10 + i)] = (i, backend.run(feed)["logits"])
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, out in results.values():
        assert np.array_equal(out, expected[i])
    stats = backend.cache_stats()
    assert stats["hits"] + stats["misses"] == 4 * 5 * 6 * 2 and stats["entries"] == 3


def test_unavailable_reason_and_damaged_records(bundle):
    _, manifest = bundle
    art = manifest.artifact("fp32-split")
    assert unavailable_reason(art) is None
    parts, policy = parse_requirements(art)
    assert [p.name for p in parts] == ["text", "rest", "whole"] and policy.padding == "trim"
    broken = Artifact(name="x", path=art.path, kind="split", precision="fp32", files=[art.path],
                      requirements={**art.requirements})
    assert "not one of the artifact's files" in unavailable_reason(broken)
    ov_part = [{**parts[0].to_dict(), "engine": "openvino", "precision": "bf16"}, *(p.to_dict() for p in parts[1:])]
    ov = Artifact(name="y", path=art.path, kind="split", precision="fp32", files=art.files,
                  requirements={**art.requirements, "parts": ov_part})
    reason = unavailable_reason(ov)
    assert reason is None or "openvino" in reason.lower() or "bf16" in reason.lower()


def test_a_part_can_run_on_openvino(bundle):
    pytest.importorskip("openvino")
    root, manifest = bundle
    art = manifest.artifact("fp32-split")
    parts, _ = parse_requirements(art)
    on_ov = Artifact(name="ov", path=art.path, kind="split", precision="fp32", files=art.files,
                     requirements={**art.requirements,
                                   "parts": [parts[0].to_dict(), {**parts[1].to_dict(), "engine": "openvino"},
                                             parts[2].to_dict()]})
    assert unavailable_reason(on_ov) is None
    feed = feeds_for(root, manifest, [ANSWERS[:3]])[0]
    with SplitBackend(root, on_ov, manifest.inputs, manifest.outputs) as backend:
        got = backend.run(feed)["logits"]
    np.testing.assert_allclose(got, _backend(root, manifest).run(feed)["logits"], atol=1e-4, rtol=0)


def test_a_batch_of_many_new_answers_runs_the_whole_graph_and_warms_the_cache(bundle):
    root, manifest = bundle
    backend = _backend(root, manifest, route="auto", cache_entries=16)
    whole = create_session(root / "model/fp32.onnx")
    feed = feeds_for(root, manifest, [ANSWERS[:4]])[0]
    assert backend.new_rows(feed) == 4 >= WHOLE_FRACTION * 4
    out = backend.run(feed)["logits"]
    assert np.array_equal(out, whole.run(["logits"], feed)[0])  # it is the unsplit graph
    stats = backend.cache_stats()
    assert stats["whole_batches"] == 1 and stats["entries"] == 1  # one new row computed alone and kept
    # The kept row is the parts' own (computed alone): with it cached, a batch of one new answer
    # and one cached runs the parts and equals the reference form bit for bit.
    cached_text = next(t for t in ANSWERS[:4] if backend.new_rows(feeds_for(root, manifest, [[t]])[0]) == 0)
    mixed = feeds_for(root, manifest, [[ANSWERS[5], cached_text]])[0]
    got = backend.run(mixed)["logits"]
    assert backend.cache_stats()["whole_batches"] == 1
    assert np.array_equal(got, _backend(root, manifest, route="auto").run_reference(mixed)["logits"])


def test_few_new_answers_among_cached_ones_run_the_parts(bundle):
    root, manifest = bundle
    backend = _backend(root, manifest, route="auto", cache_entries=16)
    for text in ANSWERS[:6]:
        backend.run(feeds_for(root, manifest, [[text]])[0])  # one new row: always the parts
    assert backend.cache_stats()["whole_batches"] == 0 and backend.cache_stats()["entries"] == 6
    feed = feeds_for(root, manifest, [ANSWERS[:8]])[0]  # 2 new of 8: under the recorded share
    assert backend.new_rows(feed) == 2 < WHOLE_FRACTION * 8
    out = backend.run(feed)["logits"]
    assert backend.cache_stats()["whole_batches"] == 0
    assert np.array_equal(out, _backend(root, manifest, cache_entries=0).run(feed)["logits"])


def test_without_the_cache_new_answers_take_the_whole_graph_and_reference_runs_never_do(bundle):
    root, manifest = bundle
    feed = feeds_for(root, manifest, [ANSWERS[:4]])[0]
    off = _backend(root, manifest, route="auto")
    off.set_caching(False)
    off.run(feed)
    off.run(feed)
    assert off.cache_stats()["whole_batches"] == 2 and off.cache_stats()["entries"] == 0
    reference = _backend(root, manifest, route="auto", cache_entries=16)
    expected = _backend(root, manifest, cache_entries=0).run(feed)["logits"]  # the parts, row by row
    assert np.array_equal(reference.run_reference(feed)["logits"], expected)
    stats = reference.cache_stats()  # the cache neither read nor written, nothing counted
    assert (stats["whole_batches"], stats["entries"], stats["hits"], stats["misses"]) == (0, 0, 0, 0)
    forced = _backend(root, manifest, route="whole")
    assert forced.run(feeds_for(root, manifest, [ANSWERS[:1]])[0]) and forced.cache_stats()["whole_batches"] == 1
    with pytest.raises(UsageError):
        forced.set_route("fastest")


@pytest.mark.parametrize("change", ["part without record", "record without part", "fraction 0", "fraction 1.5",
                                    "fraction true", "whole as cache branch"])
def test_damaged_whole_records_are_bundle_errors(bundle, change):
    _, manifest = bundle
    art = manifest.artifact("fp32-split")
    req = {**art.requirements}
    if change == "part without record":
        req.pop("whole")
    elif change == "record without part":
        req["parts"] = [p for p in req["parts"] if p["name"] != "whole"]
    elif change == "whole as cache branch":
        req["cache"] = {**req["cache"], "branch": "whole"}
    else:
        req["whole"] = {"min_new_fraction": {"fraction 0": 0, "fraction 1.5": 1.5, "fraction true": True}[change]}
    damaged = Artifact(name="d", path=art.path, kind="split", precision="fp32", files=art.files, requirements=req)
    with pytest.raises(BundleError):
        parse_requirements(damaged)
    assert unavailable_reason(damaged)


def test_without_a_whole_part_every_batch_runs_the_parts(bundle):
    root, manifest = bundle
    art = manifest.artifact("fp32-split")
    req = {k: v for k, v in art.requirements.items() if k != "whole"}
    req["parts"] = [p for p in req["parts"] if p["name"] != "whole"]
    parts_only = Artifact(name="p", path=art.path, kind="split", precision="fp32",
                          files=[f for f in art.files if f != "model/fp32.onnx"], requirements=req)
    backend = SplitBackend(root, parts_only, manifest.inputs, manifest.outputs, cache_entries=0).activate()
    feed = feeds_for(root, manifest, [ANSWERS[:4]])[0]
    assert np.array_equal(backend.run(feed)["logits"], _backend(root, manifest, cache_entries=0).run(feed)["logits"])
    assert backend.cache_stats()["whole_batches"] == 0
    with pytest.raises(UsageError):
        backend.set_route("whole")


def test_the_whole_part_loads_only_when_a_batch_needs_it(bundle):
    root, manifest = bundle
    backend = _backend(root, manifest, route="auto", cache_entries=16)
    loaded = backend._loaded  # what activation opened (the whole graph is as large as both parts)
    assert set(loaded) == {"text", "rest"}
    backend.run(feeds_for(root, manifest, [ANSWERS[:1]])[0])
    assert set(backend._loaded) == {"text", "rest"}
    backend.run(feeds_for(root, manifest, [ANSWERS[:4]])[0])
    assert set(backend._loaded) == {"text", "rest", "whole"} and backend.cache_stats()["whole_batches"] == 1


def test_a_live_predictors_golden_canary_measures_the_parts_and_leaves_the_cache_alone(bundle):
    # A server checks the golden set through its live backend beside requests: the canary must
    # run the recorded form (the parts), not whichever route its batch of new rows would take.
    from edgemm.runtime.predictor import Predictor

    root, manifest = bundle
    with Predictor.load(root, artifact="fp32-split") as predictor:
        backend = predictor.backend
        backend.run(feeds_for(root, manifest, [ANSWERS[:2]])[0])
        before = backend.cache_stats()
        report = predictor.check_golden()
        assert report["passed"], report
        assert backend.cache_stats() == before


@pytest.mark.parametrize("part", ["rest", "whole"])
def test_a_part_that_does_not_return_the_models_outputs_is_a_bundle_error(bundle, part):
    root, manifest = bundle
    art = manifest.artifact("fp32-split")
    parts = [{**p, "outputs": []} if p["name"] == part else p for p in art.requirements["parts"]]
    damaged = Artifact(name="d", path=art.path, kind="split", precision="fp32", files=art.files,
                       requirements={**art.requirements, "parts": parts})
    with pytest.raises(BundleError, match=f"its {part} part does not return"):
        SplitBackend(root, damaged, manifest.inputs, manifest.outputs)


def test_every_onnx_runtime_part_stops_spinning_when_its_run_ends(bundle):
    # The parts run back to back on the same cores: a part whose idle workers kept spin-waiting
    # took the cores the next part needed (a split answer 1.7x slower at batch 1 on 2 cores).
    from edgemm.runtime.sessions import STOP_SPINNING_ENTRY

    root, manifest = bundle
    backend = _backend(root, manifest, route="whole", cache_entries=0, threads=2)
    backend.run(feeds_for(root, manifest, [ANSWERS[:2]])[0])
    assert set(backend._loaded) == {"text", "rest", "whole"}
    key, value = STOP_SPINNING_ENTRY
    for part in backend._loaded.values():
        sessions = [part._session.spinning] if hasattr(part._session, "spinning") else [part._session]
        for session in sessions:
            assert session.get_session_options().get_session_config_entry(key) == value


def _with_joint(root, manifest):
    """fp32-split with a joint part: the FP32 graph that also returns the text part's outputs.

    On the tiny FP32 model the joint part differs from the parts by float rounding (~2e-7), so the
    export does not record one (tests/optimize/test_split.py); these tests add it to check routing
    and caching, and compare answers within 1e-6.
    """
    import dataclasses

    import onnx

    art = manifest.artifact("fp32-split")
    parts = {p["name"]: p for p in art.requirements["parts"]}
    model = onnx.load(str(root / "model/fp32.onnx"))
    outputs = [o.name for o in model.graph.output]
    for name in parts["text"]["outputs"]:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    path = "model/fp32-split.joint.onnx"
    onnx.save(model, str(root / path))
    joint = {"name": "joint", "path": path, "inputs": [s.name for s in manifest.inputs],
             "outputs": [*outputs, *parts["text"]["outputs"]], "engine": "onnxruntime", "precision": "fp32"}
    return dataclasses.replace(art, files=[*art.files, path],
                               requirements={**art.requirements, "parts": [*art.requirements["parts"], joint]})


def test_a_new_answer_alone_runs_the_joint_part_and_fills_the_cache(bundle):
    root, manifest = bundle
    art = _with_joint(root, manifest)
    with SplitBackend(root, art, manifest.inputs, manifest.outputs, cache_entries=16) as backend:
        assert set(backend._loaded) == {"text", "rest", "joint"}
        one = feeds_for(root, manifest, [[ANSWERS[2]]])[0]
        first = backend.run(one)["logits"]
        stats = backend.cache_stats()
        assert stats["joint_answers"] == 1 and stats["entries"] == 1 and stats["misses"] == 1
        reference = backend.run_reference(one)["logits"]
        np.testing.assert_allclose(first, reference, atol=1e-6, rtol=0)
        assert max(backend.compare_joint(one).values()) <= 1e-6
        # Again: answered from the cache through the rest part, not the joint part.
        again = backend.run(one)["logits"]
        assert backend.cache_stats()["joint_answers"] == 1 and backend.cache_stats()["hits"] == 1
        np.testing.assert_allclose(again, reference, atol=1e-6, rtol=0)
        # A padded row (its batch neighbour was longer) and a batch of two go through the parts.
        padded = {k: v[:1] for k, v in feeds_for(root, manifest, [[ANSWERS[3], ANSWERS[2]]])[0].items()}
        assert padded["input_ids"].shape[1] > feeds_for(root, manifest, [[ANSWERS[3]]])[0]["input_ids"].shape[1]
        backend.run(padded)
        backend.run(feeds_for(root, manifest, [ANSWERS[6:8]])[0])
        assert backend.cache_stats()["joint_answers"] == 1
        with pytest.raises(UsageError, match="one row without padding"):
            backend.compare_joint(padded)
        backend.set_route("parts")
        backend.run(feeds_for(root, manifest, [[ANSWERS[7] + "!"]])[0])
        assert backend.cache_stats()["joint_answers"] == 1
    # Without the cache (bench's every-answer-new workload) a new answer alone still takes one call.
    with SplitBackend(root, art, manifest.inputs, manifest.outputs, cache_entries=0) as backend:
        backend.run(one)
        assert backend.cache_stats()["joint_answers"] == 1 and backend.cache_stats()["entries"] == 0


def test_a_joint_part_that_does_not_return_the_text_rows_is_a_bundle_error(bundle):
    import dataclasses

    root, manifest = bundle
    art = _with_joint(root, manifest)
    parts = [{**p, "outputs": ["logits"]} if p["name"] == "joint" else p for p in art.requirements["parts"]]
    damaged = dataclasses.replace(art, requirements={**art.requirements, "parts": parts})
    with pytest.raises(BundleError, match="its joint part does not return"):
        SplitBackend(root, damaged, manifest.inputs, manifest.outputs)
    two = [*art.requirements["parts"], {**art.requirements["parts"][-1]}]
    with pytest.raises(BundleError, match="at most one"):
        SplitBackend(root, dataclasses.replace(art, requirements={**art.requirements, "parts": two}),
                     manifest.inputs, manifest.outputs)
    with pytest.raises(UsageError, match="has no 'joint' part"):
        SplitBackend(root, manifest.artifact("fp32-split"), manifest.inputs, manifest.outputs).compare_joint({})
