"""One ranking of CPU artifacts: measured on this machine, cached per machine and bundle, explained.

Bundles are hand-built (one tiny MatMul graph under every artifact name, as in test_predictor),
so timings tie and the static order must decide; cost-model details are tested on numbers.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import Artifact
from edgemm.bundle.verify import verify_bundle
from edgemm.bundle.writer import write_manifest
from edgemm.errors import BackendUnavailableError
from edgemm.runtime import Predictor, ranking
from edgemm.runtime.backends.onnxruntime import OrtBackend
from edgemm.runtime.predictor import choose_artifact
from edgemm.runtime.ranking import Ranking, Timing, cache_path, order_by_cost
from edgemm.runtime.sessions import default_threads
from tests.runtime.test_predictor import KIOSK, _artifact, _bundle


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEMM_CACHE", str(cache))
    monkeypatch.delenv(ranking.RANKING_ENV, raising=False)
    # The graphs here run in microseconds: a load hiccup on a busy machine must not break the tie.
    monkeypatch.setattr(ranking, "TIE_ABSOLUTE_MS", 1.0)
    return cache


def _load(bundle: Path, **kwargs) -> Predictor:
    return Predictor.load(bundle, device="cpu", **kwargs)


def test_the_ranking_is_measured_once_then_read_from_the_cache(tmp_path: Path):
    bundle = _bundle(tmp_path / "b", KIOSK)
    with _load(bundle) as first:
        assert first.ranking is not None and first.ranking.source == "measured"
        assert set(first.ranking.timings) == {"int8", "int8-qdq", "int8-text", "fp32-opt"}  # fp32: fused twin
        assert all(t.p50_ms > 0 and t.load_ms > 0 for t in first.ranking.timings.values())
        assert cache_path(bundle).is_file()
    with _load(bundle) as second:
        # a run on a very busy machine is measured once more (see the next tests)
        assert second.ranking.source == ("measured" if first.ranking.noisy else "cache")
        assert second.artifact.name == first.artifact.name == "int8"  # identical graphs: a tie
    if first.ranking.noisy:
        return
    assert second.ranking.order == first.ranking.order
    # bench asks choose_artifact: the same answer, from the same cache
    chosen, skipped = choose_artifact(verify_bundle(bundle), "cpu", bundle=bundle)
    assert chosen.name == first.artifact.name
    assert any("on this machine (" in s and "at batch 1" in s for s in skipped)


def test_predict_serve_and_bench_follow_one_cached_ranking(tmp_path: Path):
    """A ranking unlike the static order (int8-text measured fastest) is what every caller gets."""
    bundle = _bundle(tmp_path / "b", KIOSK)
    names = ["int8", "int8-qdq", "int8-text", "fp32-opt"]
    timings = {n: Timing(n, 20.0, 1.0 if n == "int8-text" else 5.0, 32) for n in names}
    board = Ranking(order_by_cost(names, timings), timings, source="measured")
    assert ranking.write_cache(bundle, board, names, ranking.machine_fingerprint(default_threads())) is not None
    manifest = verify_bundle(bundle)
    assert choose_artifact(manifest, "cpu")[0].name == "int8-text"  # bench without the directory
    chosen, skipped = choose_artifact(manifest, "cpu", bundle=bundle)
    assert chosen.name == "int8-text"
    assert "int8: ranked below int8-text on this machine (5 ms vs 1 ms at batch 1)" in skipped
    with _load(bundle) as predictor:  # predict and serve
        assert predictor.artifact.name == "int8-text" and predictor.ranking.source == "cache"


def test_large_bundles_are_measured_one_candidate_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ranking, "INTERLEAVE_MAX_BYTES", 1)
    from edgemm.runtime import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "INTERLEAVE_MAX_BYTES", 1)
    alive: list[int] = []
    real = OrtBackend._activate_impl

    def counting(self):
        real(self)
        alive.append(sum(1 for b in made if b._session is not None))

    made: list[OrtBackend] = []
    monkeypatch.setattr(OrtBackend, "_activate_impl", lambda self: (made.append(self), counting(self))[1])
    with _load(_bundle(tmp_path / "b", KIOSK)) as predictor:
        assert predictor.ranking.source == "measured" and len(predictor.ranking.timings) == 4
        assert predictor.artifact.name == "int8"
    assert max(alive) <= 2  # the cheapest so far and the one being timed


def test_a_ranking_measured_on_a_busy_machine_is_measured_again(tmp_path: Path):
    bundle = _bundle(tmp_path / "b", KIOSK)
    names = ["int8", "int8-qdq", "int8-text", "fp32-opt"]
    machine = ranking.machine_fingerprint(default_threads())
    busy = {n: Timing(n, 20.0, 1.0 if n == "int8-text" else 5.0, 32, iqr_ms=3.0) for n in names}
    ranking.write_cache(bundle, Ranking(order_by_cost(names, busy), busy, source="measured"), names, machine)
    with _load(bundle) as again:
        assert again.ranking.source == "measured" and again.ranking.measurements == 2
    kept = Ranking(order_by_cost(names, busy), busy, source="measured", measurements=ranking.NOISY_MEASUREMENTS)
    ranking.write_cache(bundle, kept, names, machine)
    with _load(bundle) as settled:  # a machine that is always busy: the last measurement stands
        assert settled.ranking.source == "cache" and settled.artifact.name == "int8-text"


def test_identical_timings_tie_and_the_static_order_decides(tmp_path: Path):
    with _load(_bundle(tmp_path / "b", KIOSK)) as predictor:
        assert predictor.artifact.name == "int8"  # same graph everywhere: ties → static order
        assert "fp16: not built for cpu" in predictor.skipped
        assert any(s.startswith("fp32: ranked below fp32-opt") for s in predictor.skipped)
        assert any(s.startswith("int8-qdq: ranked below int8 on this machine") and "tie" in s
                   for s in predictor.skipped)


def test_the_cache_is_invalid_for_another_manifest_or_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bundle = _bundle(tmp_path / "b", KIOSK)
    _load(bundle).close()
    cached = cache_path(bundle)
    with _load(bundle, threads=1) as fewer_threads:  # threads are part of the machine's fingerprint
        assert fewer_threads.ranking.source == "measured"
    monkeypatch.setattr(ranking, "_cpu_info", lambda: ("Another CPU", "sse2"))
    with _load(bundle) as other_cpu:
        assert other_cpu.ranking.source == "measured"
    monkeypatch.undo()
    monkeypatch.setenv("EDGEMM_CACHE", str(cached.parents[2]))
    # A re-exported bundle (another manifest) never reads the old record, even if it is copied over.
    old = cached.read_bytes()
    manifest = verify_bundle(bundle, check_hashes=False)
    manifest.name = "choice-2"
    write_manifest(bundle, manifest)
    assert cache_path(bundle) != cached
    cache_path(bundle).parent.mkdir(parents=True, exist_ok=True)
    cache_path(bundle).write_bytes(old)
    with _load(bundle) as re_exported:
        assert re_exported.ranking.source == "measured"
    assert json.loads(cache_path(bundle).read_text())["manifest_sha256"] == ranking.manifest_sha256(bundle)


@pytest.mark.parametrize("damage", [b"{not json", b"", b'{"schema": "edgemm.ranking/1", "timings": 3}', b"\xff\xfe"])
def test_a_damaged_cache_file_is_ignored_and_replaced(tmp_path: Path, damage: bytes):
    bundle = _bundle(tmp_path / "b", KIOSK)
    path = cache_path(bundle)
    path.parent.mkdir(parents=True)
    path.write_bytes(damage)
    with _load(bundle) as predictor:
        assert predictor.ranking.source == "measured" and predictor.artifact.name == "int8"
    assert json.loads(path.read_text())["schema"] == ranking.CACHE_SCHEMA


def test_an_unwritable_cache_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("EDGEMM_CACHE", str(blocker))
    with _load(_bundle(tmp_path / "b", KIOSK)) as predictor:
        assert predictor.artifact.name == "int8" and predictor.ranking.source == "measured"


def test_the_requested_artifact_wins_and_nothing_is_measured(tmp_path: Path):
    bundle = _bundle(tmp_path / "b", KIOSK)
    with _load(bundle, artifact="fp32") as predictor:
        assert predictor.artifact.name == "fp32" and predictor.ranking is None and predictor.skipped == []
    assert not cache_path(bundle).exists()
    assert choose_artifact(verify_bundle(bundle), "cpu", "int8-text", bundle=bundle)[0].name == "int8-text"


def test_static_mode_measures_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(ranking.RANKING_ENV, "static")
    bundle = _bundle(tmp_path / "b", KIOSK)
    with _load(bundle) as predictor:
        assert predictor.artifact.name == "int8" and predictor.ranking.source == "static"
        assert any("static order" in s for s in predictor.skipped)
    assert not cache_path(bundle).exists()
    # without the bundle directory choose_artifact has nothing to measure: static order
    assert choose_artifact(verify_bundle(bundle), "cpu")[0].name == "int8"


def test_gate_failed_artifacts_are_skipped_with_the_reason(tmp_path: Path):
    artifacts = [_artifact("fp32", "fp32"), _artifact("int8", "int8", fused=True, method="int8-dynamic", gate=False),
                 _artifact("int8-text", "mixed", fused=True, gate=True)]
    with _load(_bundle(tmp_path / "b", artifacts)) as predictor:
        assert predictor.artifact.name == "int8-text"
        assert "int8: failed its accuracy gate" in predictor.skipped
        assert "int8" not in predictor.ranking.timings


# -- OpenVINO / split dispatch (a stand-in module: the real backends have their own tests) -------


def _with_optional_artifacts(root: Path) -> Path:
    """The KIOSK bundle plus an OpenVINO artifact ("ov", a copy of the int8 graph) and a bf16 one."""
    bundle = _bundle(root, KIOSK)
    manifest = verify_bundle(bundle, check_hashes=False)
    for name, precision in (("ov", "int8"), ("ov-bf16", "bf16")):
        rel = f"model/{name}.xml"
        (bundle / rel).write_bytes((bundle / "model/int8.onnx").read_bytes())
        manifest.artifacts.append(Artifact(name=name, path=rel, kind="openvino", precision=precision, files=[rel],
                                           providers=["OpenVINO:CPU"], validation={"gate": {"passed": True}}))
    golden = GoldenSet.load(bundle / "golden.npz")
    golden.artifacts["ov"] = golden.artifacts["int8"]
    golden.save(bundle / "golden.npz")
    write_manifest(bundle, manifest)
    return bundle


class _FakeOpenVino(OrtBackend):
    """Stands in for OpenVinoBackend: a real ONNX Runtime session over the same tiny graph."""

    made: ClassVar[list[str]] = []

    @classmethod
    def from_artifact(cls, root, artifact, inputs, outputs, *, threads=None, compile_cache=True):
        cls.made.append(artifact.name)
        return cls(root / artifact.path, inputs, outputs, threads=threads)


@pytest.fixture
def fake_openvino(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("edgemm.runtime.backends.openvino")
    module.OpenVinoBackend = _FakeOpenVino
    module.unavailable_reason = lambda art: "the CPU lacks avx512_bf16 / amx_bf16" if art.precision == "bf16" else None
    monkeypatch.setitem(sys.modules, "edgemm.runtime.backends.openvino", module)
    _FakeOpenVino.made = []
    return module


def test_openvino_artifacts_are_dispatched_and_ranked_with_the_others(tmp_path: Path, fake_openvino,
                                                                        monkeypatch: pytest.MonkeyPatch):
    bundle = _with_optional_artifacts(tmp_path / "b")
    with _load(bundle, artifact="ov") as named:
        assert isinstance(named.backend, _FakeOpenVino) and named.check_golden()["passed"]
    monkeypatch.setenv(ranking.RANKING_ENV, "static")
    with _load(bundle) as predictor:
        # same precision: ONNX Runtime (a session in tenths of a second) before OpenVINO (a compile)
        assert predictor.artifact.name == "int8"
        assert "ov-bf16: the CPU lacks avx512_bf16 / amx_bf16" in predictor.skipped
        assert any(s.startswith("ov: ranked below int8 (static order") for s in predictor.skipped)
    assert _FakeOpenVino.made == ["ov"]
    monkeypatch.setenv(ranking.RANKING_ENV, "measure")
    with _load(bundle) as measured:
        assert "ov" in measured.ranking.timings and measured.artifact.name == "int8"  # a tie: static order
    assert _FakeOpenVino.made == ["ov", "ov"]


def test_a_missing_backend_module_is_a_logged_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture):
    bundle = _with_optional_artifacts(tmp_path / "b")
    monkeypatch.setitem(sys.modules, "edgemm.runtime.backends.openvino", None)  # import fails
    monkeypatch.setenv(ranking.RANKING_ENV, "static")
    with caplog.at_level("INFO", logger="edgemm.runtime"), _load(bundle) as predictor:
        assert predictor.artifact.name == "int8"
        assert any(s.startswith("ov: ") and "openvino" in s for s in predictor.skipped)
    assert any(r.levelname == "INFO" and r.getMessage().startswith("skipped ov: ") for r in caplog.records)
    with pytest.raises(BackendUnavailableError, match="'ov' cannot run on cpu"):
        _load(bundle, artifact="ov")


def test_an_optional_backend_that_fails_to_load_gives_way(tmp_path: Path, fake_openvino,
                                                          monkeypatch: pytest.MonkeyPatch):
    from edgemm.errors import RuntimeFailure

    class Broken(_FakeOpenVino):
        def _activate_impl(self):
            raise RuntimeFailure("OpenVINO could not compile the model")

    fake_openvino.OpenVinoBackend = Broken
    monkeypatch.setattr(ranking, "KIND_ORDER", ("openvino", "split", "onnx"))  # OpenVINO first, as on some CPU
    monkeypatch.setenv(ranking.RANKING_ENV, "static")
    with _load(_with_optional_artifacts(tmp_path / "b")) as predictor:
        assert predictor.artifact.name == "int8"
        assert "ov: could not be loaded here: OpenVINO could not compile the model" in predictor.skipped
    monkeypatch.setenv(ranking.RANKING_ENV, "measure")
    with _load(_with_optional_artifacts(tmp_path / "c")) as measured:
        assert measured.artifact.name == "int8" and "ov" in measured.ranking.failed
        assert any(s.startswith("ov: could not be measured here") for s in measured.skipped)
        assert not cache_path(tmp_path / "c").exists()  # measured again once it is fixed


# -- the cost model ------------------------------------------------------------------------------


def test_cost_orders_by_latency_and_accounts_for_load_time(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ranking, "TIE_ABSOLUTE_MS", 0.05)
    timings = {"int8": Timing("int8", 50, 1.9, 20), "ov-int8": Timing("ov-int8", 60, 1.4, 20)}
    board = Ranking(order_by_cost(["int8", "ov-int8"], timings), timings, source="measured")
    assert board.order == ["ov-int8", "int8"]
    assert board.reasons() == ["int8: ranked below ov-int8 on this machine (1.9 ms vs 1.4 ms at batch 1)"]
    # 1.4 ms but 2 s to load: 1.4 + 2000/1000 > 1.9 + 0.05 → the faster-loading one wins, and says why
    slow_load = {"int8": Timing("int8", 50, 1.9, 20), "ov-int8": Timing("ov-int8", 2000, 1.4, 20)}
    board = Ranking(order_by_cost(["int8", "ov-int8"], slow_load), slow_load, source="measured")
    assert board.order == ["int8", "ov-int8"]
    assert "load 2.00 s vs 0.05 s" in board.reasons()[0]


def test_an_answer_cache_is_costed_on_new_and_cached_answers(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ranking, "TIE_ABSOLUTE_MS", 0.05)
    # Measured shapes on the reference model: a new answer through the split is slower than
    # ORT int8, a cached one three times faster; at REPEAT_SHARE cached the split is ahead.
    split = Timing("int8-split", 140, 1.87, 20, hit_p50_ms=0.6)
    assert split.answer_ms == pytest.approx((1 - ranking.REPEAT_SHARE) * 1.87 + ranking.REPEAT_SHARE * 0.6)
    timings = {"int8-split": split, "int8": Timing("int8", 100, 1.53, 20)}
    board = Ranking(order_by_cost(["int8-split", "int8"], timings), timings, source="measured")
    assert board.order == ["int8-split", "int8"]
    assert board.reasons() == ["int8: ranked below int8-split on this machine (1.53 ms vs 1.24 ms "
                               "(1.87 ms new, 0.6 ms cached answers) at batch 1)"]
    # A cache that barely helps does not buy a slow path for new answers.
    slow = {"int8-split": Timing("int8-split", 140, 4.0, 20, hit_p50_ms=3.5), "int8": Timing("int8", 100, 1.53, 20)}
    assert order_by_cost(["int8-split", "int8"], slow) == ["int8", "int8-split"]
    # The cache file keeps both medians; a timing without a cache has none.
    assert Timing.from_dict(split.to_dict()) == split
    assert "hit_p50_ms" not in timings["int8"].to_dict() and Timing.from_dict(timings["int8"].to_dict()).hit_p50_ms is None


def test_timing_runs_of_a_cached_backend_time_new_and_cached_answers_after_an_untimed_run():
    class Cached:
        def __init__(self):
            self.cache, self.calls = set(), []

        def clear_cache(self):
            self.cache.clear()

        def run(self, feed):
            self.calls.append("hit" if "row" in self.cache else "new")
            self.cache.add("row")

    backend, new, hits = Cached(), [], []
    ranking._time_runs(backend, {}, 3, new, hits)
    # One untimed run opens each block (the previous candidate's spinning workers are not ours).
    assert backend.calls == ["new"] + ["new", "hit"] * 3 and len(new) == len(hits) == 3
    plain, new, hits = types.SimpleNamespace(run=lambda feed: None), [], []
    ranking._time_runs(plain, {}, 3, new, hits)
    assert len(new) == 3 and hits == []


def test_a_cache_written_by_the_previous_schema_is_measured_again(tmp_path: Path):
    path = tmp_path / "ranking.json"
    machine = {"cpu": "x"}
    doc = {"schema": "edgemm.ranking/1", "manifest_sha256": "s", "machine": machine, "candidates": ["a", "b"],
           "timings": [Timing("a", 1, 1.0, 5).to_dict(), Timing("b", 1, 2.0, 5).to_dict()]}
    path.write_text(json.dumps(doc))
    assert ranking.read_cache(path, "s", ["a", "b"], machine) is None
    path.write_text(json.dumps({**doc, "schema": ranking.CACHE_SCHEMA}))
    assert ranking.read_cache(path, "s", ["a", "b"], machine).order == ["a", "b"]


def test_near_ties_go_to_the_static_order(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ranking, "TIE_ABSOLUTE_MS", 0.05)
    timings = {"a": Timing("a", 10, 2.04, 20), "b": Timing("b", 10, 2.0, 20), "c": Timing("c", 10, 1.0, 20)}
    assert order_by_cost(["a", "b", "c"], timings) == ["c", "a", "b"]
    assert order_by_cost(["b", "a", "c"], timings) == ["c", "b", "a"]


def test_an_artifact_built_for_this_cpus_features_comes_before_its_twin():
    """``ov-int8-bf16`` (a candidate only where the CPU has BF16) wins the tie with ``ov-int8``."""
    def ov(name: str, inference: str, flags: list[str]) -> Artifact:
        return Artifact(name=name, path="model/ov-int8.xml", kind="openvino", precision="int8",
                        files=["model/ov-int8.xml", "model/ov-int8.bin"], providers=["OpenVINO:CPU"],
                        requirements={"engine": "openvino", "inference_precision": inference, "cpu_flags_any": flags})

    plain, bf16 = ov("ov-int8", "f32", []), ov("ov-int8-bf16", "bf16", ["avx512_bf16", "amx_bf16"])
    ort_int8 = Artifact(name="int8", path="model/int8.onnx", kind="onnx", precision="int8", files=["model/int8.onnx"])
    assert [a.name for a in ranking.static_order([plain, bf16, ort_int8])] == ["int8", "ov-int8-bf16", "ov-int8"]


def test_batch_one_takes_the_first_row_of_dynamic_inputs_only():
    feed = {"x": np.arange(8).reshape(4, 2), "fixed": np.zeros((3, 2))}
    one = ranking.batch_one(feed, {"x"})
    assert one["x"].shape == (1, 2) and one["fixed"].shape == (3, 2)


def test_batch_one_is_the_first_text_as_the_preprocessor_makes_it_alone(tiny_bundle):
    # The golden batch pads a short text to its longest neighbour; a kiosk's request alone has no
    # padding, and timing the padded row would favour the split (it trims) over every other artifact.
    from edgemm.bundle.verify import verify_bundle
    from tests.splits import feeds_for

    manifest = verify_bundle(tiny_bundle)
    text = manifest.preprocessing["text"]
    short, long = "seven", "maybe a nine or an eight, not sure at all"
    batch, alone = feeds_for(tiny_bundle, manifest, [[short, long], [short]])
    dynamic = {s.name for s in manifest.inputs}
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1]
    one = ranking.batch_one(batch, dynamic, text)
    for name in ("input_ids", "attention_mask"):
        assert np.array_equal(one[name], alone[name]), name
    assert one["pixel_values"].shape[0] == 1
    # Left padding keeps the last positions; a text config without "longest" padding keeps all.
    left = ranking.batch_one({"input_ids": np.array([[0, 0, 5, 6], [1, 2, 3, 4]]),
                              "attention_mask": np.array([[0, 0, 1, 1], [1, 1, 1, 1]])}, {"input_ids", "attention_mask"},
                             {**text, "padding_side": "left", "min_length": 1})
    assert left["input_ids"].tolist() == [[5, 6]] and left["attention_mask"].tolist() == [[1, 1]]
    fixed = ranking.batch_one(batch, dynamic, {**text, "padding": "max_length"})
    assert fixed["input_ids"].shape[1] == batch["input_ids"].shape[1]
