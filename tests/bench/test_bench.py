"""``edgemm bench`` on real bundles: statistics, peers side by side, cold start, reports, errors."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from edgemm.bench.bench import BenchConfig, run_bench
from edgemm.bench.runner import TimingOptions
from edgemm.cli import cli
from tests.conftest import run_edge

QUICK = ["--iterations", "6", "--rounds", "2", "--warmup", "1"]


def test_bench_with_peers_writes_every_report(tiny_bundle, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["bench", str(tiny_bundle), "--batch-sizes", "1,2", "--seq-lens", "8", *QUICK,
                                      "--peers", "torch-eager,torch-compile,optimum", "--cold-runs", "1", "-o", str(out), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "edgemm.bench/1" and doc["machine"]["cpu"]["usable_cores"] >= 1
    assert {"python", "onnxruntime", "numpy"} <= set(doc["machine"]["versions"])
    names = {c["name"] for c in doc["contenders"]}
    assert names == {"edgemm:fp32", "torch-eager", "torch-compile", "optimum"}
    cells = {(r["contender"], r["mode"], r["batch"], r["seq"]) for r in doc["latency"]}
    for name in names:
        for batch in (1, 2):
            assert (name, "e2e", batch, None) in cells and (name, "model", batch, None) in cells
            assert (name, "model", batch, 8) in cells  # the extra sequence length is model-only
    row = next(r for r in doc["latency"] if r["contender"] == "edgemm:fp32" and r["mode"] == "e2e" and r["batch"] == 1)
    assert row["n"] == 6 and row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["throughput_per_s"] > 0 and row["std_ms"] >= 0
    # Accuracy drift on the golden set (no labelled data for this bundle): everyone agrees with FP32.
    accuracy = {r["contender"]: r for r in doc["accuracy"]["rows"]}
    assert accuracy["torch-eager"]["top1_agreement"] == 1.0 and accuracy["optimum"]["max_abs_diff"] < 1e-3
    # Cold start in fresh processes, edgemm and the torch + transformers pipeline.
    cold = {r["contender"]: r for r in doc["cold_start"]}
    assert cold["edgemm:fp32"]["total_s"] > 0 and cold["edgemm:fp32"]["peak_rss_mb"] > 10
    assert cold["torch-eager"]["peak_rss_mb"] > cold["edgemm:fp32"]["peak_rss_mb"]
    assert {r["peer"] for r in doc["ratios"]["speedup"]} == {"torch-eager", "torch-compile", "optimum"}
    assert "rss_fraction" in doc["ratios"]["cold_start"]
    assert {f.name for f in out.iterdir()} == {"bench.json", "bench.csv", "latency.png", "pareto.png", "bench.html"}
    with open(out / "bench.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(doc["latency"]) and rows[0]["p50_ms"]


def test_targets_are_reported_met_or_missed(tiny_bundle):
    report = run_bench(BenchConfig(bundle=tiny_bundle, timing=TimingOptions(iterations=4, rounds=2, warmup=1),
                                   peers=("torch-eager",), cold_start=False,
                                   targets={"speedup_vs_torch_eager": 0.01, "cold_start_s": 1.0, "bogus": 1.0}))
    targets = {t["target"]: t for t in report.document["targets"]}
    assert targets["speedup_vs_torch_eager"]["status"] == "met"
    assert targets["cold_start_s"]["status"] == "not measured"
    assert targets["bogus"]["status"] == "unknown target"


def test_bench_is_torch_free_without_peers(tiny_bundle, tmp_path):
    code, out, err, guard = run_edge("bench", str(tiny_bundle), *QUICK, "--no-cold-start", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [c["name"] for c in doc["contenders"]] == ["edgemm:fp32"]
    assert any("peers skipped" in note for note in doc["notes"])
    assert guard == {"modules": [], "sockets": 0}


def test_latency_budget_exit_4(tiny_bundle):
    code, _, err, _ = run_edge("bench", str(tiny_bundle), *QUICK, "--no-cold-start", "--peers", "none",
                                 "--max-p99-ms", "0.001")
    assert code == 4 and "Latency budget exceeded" in err and "Hint:" in err


@pytest.mark.parametrize("args, code, needle", [
    (["--batch-sizes", "65"], 2, "outside the artifacts' profile"),
    (["--batch-sizes", "one"], 2, "comma-separated integers"),
    (["--seq-lens", "500"], 2, "outside the profile"),
    (["--artifact", "int8"], 2, "no artifact 'int8'"),
    (["--peers", "tensorflow"], 2, "Unknown peer"),
    (["--device", "cuda"], 3, "CUDA"),
])
def test_bad_bench_requests(tiny_bundle, args, code, needle):
    result = CliRunner().invoke(cli, ["bench", str(tiny_bundle), *QUICK, "--no-cold-start", *args])
    assert result.exit_code == code, result.output
    assert needle in result.stderr


def test_missing_bundle():
    result = CliRunner().invoke(cli, ["bench", "/nonexistent/bundle"])
    assert result.exit_code == 2 and "does not exist" in result.stderr


@pytest.mark.gpu
def test_cuda_io_binding_and_graphs(tiny_bundle):
    report = run_bench(BenchConfig(bundle=tiny_bundle, device="cuda", timing=TimingOptions(iterations=20),
                                   peers=("torch-eager", "torch-compile"), cold_start=False))
    doc = report.document
    ours = next(c for c in doc["contenders"] if c["kind"] == "edgemm")
    assert ours["io_binding"] and ours["cuda_graphs"] and ours["name"].endswith("+cudagraph"), ours
    agreement = {r["contender"]: r.get("top1_agreement") for r in doc["accuracy"]["rows"]}
    assert agreement[ours["name"]] == 1.0 and agreement["torch-eager"] == 1.0
    model = next(r for r in doc["latency"] if r["contender"] == ours["name"] and r["mode"] == "model")
    assert model["n"] == 20 and (doc["config"]["telemetry"] is None or model["energy_per_item_mj"] > 0)
