"""``edgemm bench`` against OpenVINO (plain and NNCF INT8), under contention, on the repeated-answer
workload, with the runtime's own choice as the headline (issues 16 and 17)."""

from __future__ import annotations

import json
import os
import sys
from typing import ClassVar

import pytest
from click.testing import CliRunner

from edgemm.bench import runner as runner_module
from edgemm.bench.bench import BenchConfig, _raw_rows, _repeated_requests, ratios, run_bench
from edgemm.bench.contenders import EdgemmContender
from edgemm.bench.runner import BackgroundLoad, TimingOptions, run_interleaved
from edgemm.bundle.verify import verify_bundle
from edgemm.cli import cli
from edgemm.runtime.predictor import choose_artifact

pytest.importorskip("openvino")
pytest.importorskip("nncf")

QUICK = TimingOptions(batch_sizes=(1, 2), warmup=1, iterations=4, rounds=2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class _Spy(BackgroundLoad):
    """A real BackgroundLoad that remembers every process it started."""

    started: ClassVar[list[int]] = []

    def start(self) -> None:
        super().start()
        assert self.proc is not None
        _Spy.started.append(self.proc.pid)


@pytest.fixture
def spy(monkeypatch):
    _Spy.started = []
    monkeypatch.setattr(runner_module, "BackgroundLoad", _Spy)
    return _Spy


@pytest.fixture(scope="module")
def ov_doc(tiny_bundle, tiny_ckpt):
    """One bench of the tiny bundle: both OpenVINO peers, contention, both workloads, cold start."""
    report = run_bench(BenchConfig(bundle=tiny_bundle, checkpoint=tiny_ckpt, timing=QUICK,
                                   peers=("openvino", "openvino-int8"), contention=True,
                                   workloads=("standard", "repeated"), repeated_batch_sizes=(1,), cold_runs=1))
    return report.document


def test_openvino_peers_run_end_to_end_and_report_accuracy(ov_doc):
    peers = {c["name"]: c for c in ov_doc["contenders"] if c["kind"] == "peer"}
    assert set(peers) == {"openvino", "openvino-int8"}
    assert peers["openvino"]["runtime"].startswith("openvino") and peers["openvino"]["inference_precision"]
    assert "nncf" in peers["openvino-int8"]["quantization"] and peers["openvino-int8"]["calibration"]
    assert peers["openvino-int8"]["quantize_s"] > 0
    cells = {(r["contender"], r["mode"], r["batch"], r["load"], r["workload"]) for r in ov_doc["latency"] if r["n"]}
    for name in peers:
        for batch in (1, 2):
            assert (name, "e2e", batch, "quiet", "standard") in cells and (name, "model", batch, "quiet", "standard") in cells
    accuracy = {r["contender"]: r for r in ov_doc["accuracy"]["rows"]}
    for name in peers:  # golden set: labels are FP32's predictions, so agreement is what is measured
        assert "drop_points" in accuracy[name] and accuracy[name]["samples"] > 0
    assert accuracy["openvino"]["top1_agreement"] == 1.0
    assert {r["peer"] for r in ov_doc["ratios"]["speedup"]} == {"openvino", "openvino-int8"}
    # Cold start: the runtime's choice (marked) and the plain OpenVINO peer, each in a fresh process.
    cold = {r["contender"]: r for r in ov_doc["cold_start"]}
    assert cold["openvino"]["total_s"] > 0 and "openvino_s" in ov_doc["ratios"]["cold_start"]


def test_contention_rows_and_ratios(ov_doc):
    contended = [r for r in ov_doc["latency"] if r["load"] == "contended"]
    names = {c["name"] for c in ov_doc["contenders"]}
    assert {r["contender"] for r in contended} == names
    assert {r["workload"] for r in contended} == {"standard", "repeated"} and all(r["n"] > 0 for r in contended)
    assert ov_doc["config"]["contention"]["core"] in os.sched_getaffinity(0)
    slowdowns = ov_doc["ratios"]["contention"]
    assert {(r["contender"], r["mode"], r["batch"], r["workload"]) for r in slowdowns} == \
        {(r["contender"], r["mode"], r["batch"], r["workload"]) for r in contended}
    assert all(r["slowdown"] > 0 for r in slowdowns)
    assert {r["peer"] for r in ov_doc["ratios"]["contended_speedup"]} == {"openvino", "openvino-int8"}
    assert all(r["load"] == "contended" for r in ov_doc["ratios"]["contended_speedup"])


def test_headline_is_the_runtime_choice(ov_doc, tiny_bundle):
    chosen, _ = choose_artifact(verify_bundle(tiny_bundle), "cpu")
    assert ov_doc["headline"] == {"artifact": chosen.name, "contender": f"edgemm:{chosen.name}",
                                  "source": "choose_artifact"}
    assert {r["edgemm"] for r in ov_doc["ratios"]["speedup"]} == {f"edgemm:{chosen.name}"}
    first = ov_doc["cold_start"][0]
    assert first["contender"] == f"edgemm:{chosen.name}" and first["chosen"] is True


def test_headline_is_not_the_fastest_when_the_runtime_chooses_otherwise():
    def row(name, p50):
        return {"contender": name, "mode": "model", "batch": 1, "seq": None, "load": "quiet", "workload": "standard",
                "n": 3, "p50_ms": p50}

    doc = {"headline": {"artifact": "int8", "contender": "edgemm:int8", "source": "choose_artifact"},
           "contenders": [{"name": n, "kind": k} for n, k in
                          (("edgemm:int8", "edgemm"), ("edgemm:int8-text", "edgemm"), ("openvino-int8", "peer"))],
           "latency": [row("edgemm:int8", 2.0), row("edgemm:int8-text", 1.0), row("openvino-int8", 3.0)],
           "accuracy": {"rows": []}, "cold_start": []}
    (speedup,) = ratios(doc)["speedup"]
    assert speedup["edgemm"] == "edgemm:int8" and speedup["ratio"] == pytest.approx(1.5)
    assert speedup["fastest_edgemm"] == "edgemm:int8-text" and speedup["fastest_ratio"] == pytest.approx(3.0)


def test_repeated_workload_repeats_texts_and_varies_images(ov_doc, tiny_bundle):
    manifest = verify_bundle(tiny_bundle)
    rows = _raw_rows(tiny_bundle, manifest, None)
    make, described = _repeated_requests(manifest, rows, answers=2, calls=8)
    requests = make(2)
    texts = [t for r in requests for t in r["text"]]
    assert set(texts) <= set(described["answers"]) and len(described["answers"]) == 2
    assert len(set(texts)) == 2 and len(texts) == 16
    images = [r["image"][0] for r in requests]
    assert any(not _same(images[0], other) for other in images[1:])  # the pictures change
    repeated = [r for r in ov_doc["latency"] if r["workload"] == "repeated"]
    assert {(r["mode"], r["batch"], r["load"]) for r in repeated} == {("e2e", 1, "quiet"), ("e2e", 1, "contended")}
    assert {r["contender"] for r in repeated} == {c["name"] for c in ov_doc["contenders"]}
    assert ov_doc["workload"]["repeated"] and ov_doc["repeated_workload"]["answers"]
    assert {r["peer"] for r in ov_doc["ratios"]["repeated_speedup"]} == {"openvino", "openvino-int8"}


def _same(a, b) -> bool:
    import numpy as np

    if isinstance(a, (str, bytes, os.PathLike)) or isinstance(b, (str, bytes, os.PathLike)):
        return a == b
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def test_background_load_is_pinned_and_gone_after_a_run(tiny_bundle, spy):
    contender = EdgemmContender(tiny_bundle, "fp32")
    seen: list[set[int]] = []
    original = contender.model

    def model(native):
        for pid in spy.started:
            if _alive(pid) and hasattr(os, "sched_getaffinity"):
                seen.append(os.sched_getaffinity(pid))
        return original(native)

    contender.model = model
    try:
        manifest = verify_bundle(tiny_bundle)
        rows = _raw_rows(tiny_bundle, manifest, None)
        from edgemm.bench.bench import _input_maker

        results = run_interleaved([contender], _input_maker(tiny_bundle, manifest, rows),
                                  TimingOptions(warmup=0, iterations=2, rounds=2, contention=True))
    finally:
        contender.close()
    assert {m.load for m in results} == {"quiet", "contended"}
    assert len(spy.started) == 2  # one contended pass per round
    assert seen and all(cores == {runner_module.load_core()} for cores in seen)
    assert not any(_alive(pid) for pid in spy.started)


def test_background_load_is_stopped_when_the_bench_is_interrupted(tiny_bundle, spy):
    contender = EdgemmContender(tiny_bundle, "fp32")
    original = contender.model

    def model(native):
        if spy.started:  # inside a contended pass: the user presses Ctrl-C
            raise KeyboardInterrupt
        return original(native)

    contender.model = model
    manifest = verify_bundle(tiny_bundle)
    from edgemm.bench.bench import _input_maker

    try:
        with pytest.raises(KeyboardInterrupt):
            run_interleaved([contender], _input_maker(tiny_bundle, manifest, _raw_rows(tiny_bundle, manifest, None)),
                            TimingOptions(warmup=0, iterations=2, rounds=2, modes=("model",), contention=True))
    finally:
        contender.close()
    assert spy.started and not any(_alive(pid) for pid in spy.started)


def test_cli_contention_and_repeated_workload(tiny_bundle):
    result = CliRunner().invoke(cli, ["bench", str(tiny_bundle), "--iterations", "2", "--rounds", "2", "--warmup", "0",
                                      "--peers", "none", "--no-cold-start", "--contention", "--workload", "repeated",
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["config"]["workloads"] == ["repeated"] and doc["config"]["contention"]
    assert {(r["mode"], r["load"], r["workload"]) for r in doc["latency"]} == {("e2e", "quiet", "repeated"),
                                                                              ("e2e", "contended", "repeated")}
    bad = CliRunner().invoke(cli, ["bench", str(tiny_bundle), "--workload", "kiosk", "--peers", "none"])
    assert bad.exit_code == 2 and "kiosk" in bad.output


def test_missing_openvino_is_a_note_not_a_crash(tiny_bundle, tiny_ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino → ImportError
    report = run_bench(BenchConfig(bundle=tiny_bundle, checkpoint=tiny_ckpt, timing=TimingOptions(iterations=2, rounds=1),
                                   peers=("openvino",), cold_start=False, accuracy=False))
    doc = report.document
    assert [c["name"] for c in doc["contenders"]] == ["edgemm:fp32"]
    assert "peer openvino not run: pip install 'edgemm[openvino]'" in doc["notes"]


def test_the_standard_workloads_note_names_the_graph_that_answered_batches_of_new_answers():
    from types import SimpleNamespace

    from edgemm.bench.bench import _snapshot_caches

    def contender(whole_unavailable=None):
        backend = SimpleNamespace(cache_stats=lambda: {"hits": 0, "whole_batches": 3},
                                  artifact=SimpleNamespace(requirements={"whole": {"artifact": "ov-int8"}}),
                                  whole_unavailable=whole_unavailable)
        return SimpleNamespace(name="edgemm:int8-split", info={}, predictor=SimpleNamespace(backend=backend))

    notes: list[str] = []
    _snapshot_caches([contender()], "standard", notes)
    assert "3 batches of many new answers went through the split's whole part, the ov-int8 artifact's graph" in notes[0]
    notes = []
    _snapshot_caches([contender("OpenVINO is not installed")], "standard", notes)
    assert "cannot run here (OpenVINO is not installed), so none did" in notes[0]


def test_openvino_artifacts_are_timed_on_the_static_compiles_their_warm_up_started(work, tiny_ckpt, edgemm_cache,
                                                                                    monkeypatch):
    from tests.optimize.test_openvino_variants import export_ov_bundle

    monkeypatch.setenv("EDGEMM_RANKING", "static")  # the headline is not what this test is about
    bundle = export_ov_bundle(work, tiny_ckpt)
    timing = TimingOptions(batch_sizes=(2,), warmup=2, iterations=6, rounds=2)
    report = run_bench(BenchConfig(bundle=bundle, artifacts=("ov-int8",), checkpoint=tiny_ckpt, timing=timing,
                                   peers=(), cold_start=False, accuracy=False))
    doc = report.document
    (contender,) = doc["contenders"]
    stats = contender["static_shapes"]["standard"]
    # The warm-up (2 × e2e + model) saw the cell's one shape often enough; the bench waited for the
    # compile and warmed up again, so the check was made before timing and every timed call ran it.
    assert stats["compiled"] == 1 and stats["adopted"] == 1 and stats["refused"] == 0
    assert stats["static_runs"] >= 2 * timing.iterations
    note = next(n for n in doc["notes"] if n.startswith("edgemm:ov-int8: OpenVINO compiled 1 static-shape graph"))
    assert "EDGEMM_OPENVINO_SHAPES=0 times only that" in note
