"""SplitBackend: the text part per row through a bounded LRU answer cache, then the rest of the model.

Equality claims, and why:
- against the unsplit FP32 graph, per row: within 1e-5. The split computes each text row alone at
  its own (unpadded) length; the whole graph computes it inside a padded batch, so only the float
  accumulation order over the longer axis differs (measured ~1e-7).
- a cached row against the same row computed fresh: bit-exact (a row's branch output is a pure
  function of its trimmed bytes, whatever batch it arrives in).
- batch 1, unpadded, against the unsplit graph: bit-exact expected (same engine, same nodes);
  checked within 1e-6 in case ONNX Runtime fuses differently across the cut.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgemm.bundle.manifest import Artifact
from edgemm.bundle.verify import verify_bundle
from edgemm.errors import UsageError
from edgemm.runtime.backends.split import SplitBackend, parse_requirements, unavailable_reason
from edgemm.runtime.sessions import create_session
from tests.splits import ANSWERS, feeds_for, split_bundle


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):
    root, _ = split_bundle(tiny_bundle, tmp_path_factory.mktemp("split") / "b", entries=4)
    return root, verify_bundle(root)


def _whole_rows(root, manifest, texts):
    """The unsplit FP32 graph's logits for each text alone (batch 1, no padding)."""
    session = create_session(root / "model/fp32.onnx")
    return np.concatenate([session.run(["logits"], feed)[0] for feed in feeds_for(root, manifest, [[t] for t in texts])])


def _backend(root, manifest, **kwargs):
    return SplitBackend.from_artifact(root, manifest, manifest.artifact("fp32-split"), **kwargs).activate()


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
    backend = SplitBackend.from_artifact(root, manifest, manifest.artifact("fp32-split"))
    assert backend.cache_stats()["capacity"] == 4
    with pytest.raises(UsageError):
        SplitBackend.from_artifact(root, manifest, manifest.artifact("fp32-split"), cache_entries=-1)


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
    assert [p.name for p in parts] == ["text", "rest"] and policy.padding == "trim"
    broken = Artifact(name="x", path=art.path, kind="split", precision="fp32", files=[art.path],
                      requirements={**art.requirements})
    assert "not one of the artifact's files" in unavailable_reason(broken)
    ov_part = [{**parts[0].to_dict(), "engine": "openvino", "precision": "bf16"}, parts[1].to_dict()]
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
                                   "parts": [parts[0].to_dict(), {**parts[1].to_dict(), "engine": "openvino"}]})
    assert unavailable_reason(on_ov) is None
    feed = feeds_for(root, manifest, [ANSWERS[:3]])[0]
    with SplitBackend(root, on_ov, manifest.inputs, manifest.outputs) as backend:
        got = backend.run(feed)["logits"]
    np.testing.assert_allclose(got, _backend(root, manifest).run(feed)["logits"], atol=1e-4, rtol=0)
