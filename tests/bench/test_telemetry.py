"""Power / energy / memory telemetry: the tegrastats reader against a stand-in process, NVML errors."""

from __future__ import annotations

import stat
import sys
import time

import pytest

from edgemm.bench.telemetry import NvmlTelemetry, TegrastatsTelemetry, parse_tegrastats
from edgemm.errors import BackendUnavailableError

ORIN = ("RAM 2790/7620MB (lfb 1x4MB) SWAP 0/3810MB CPU [2%@729,1%@729] GR3D_FREQ 0% cpu@46.5C "
        "VDD_IN 4796mW/4796mW VDD_CPU_GPU_CV 479mW/479mW VDD_SOC 1438mW/1438mW")
XAVIER = "RAM 1917/3964MB (lfb 39x4MB) CPU [5%@1479] GR3D_FREQ 0% POM_5V_IN 2513/2513 POM_5V_GPU 0/0"


def test_tegrastats_lines_parse():
    assert parse_tegrastats(ORIN) == (4.796, 2790.0)
    assert parse_tegrastats(XAVIER) == (2.513, 1917.0)
    assert parse_tegrastats("garbage") == (None, None)


@pytest.fixture
def fake_tegrastats(tmp_path):
    """An executable that prints Orin-format lines at ``--interval`` ms, as tegrastats does (5 W, 3000 MB)."""
    script = tmp_path / "tegrastats"
    script.write_text(f"""#!{sys.executable}
import sys, time
interval = int(sys.argv[sys.argv.index("--interval") + 1]) / 1000.0
while True:
    print("RAM 3000/7620MB (lfb 1x4MB) CPU [2%@729] GR3D_FREQ 50% VDD_IN 5000mW/5000mW VDD_SOC 1438mW/1438mW",
          flush=True)
    time.sleep(interval)
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_tegrastats_reader_integrates_energy_over_a_window(fake_tegrastats):
    sampler = TegrastatsTelemetry(interval_ms=20, executable=str(fake_tegrastats)).start()
    try:
        with sampler:
            time.sleep(0.3)
        summary = sampler.summary(items=30)
        assert summary["avg_power_w"] == pytest.approx(5.0)
        assert summary["energy_j"] == pytest.approx(5.0 * 0.3, rel=0.1)
        assert summary["energy_per_item_mj"] == pytest.approx(1000 * summary["energy_j"] / 30)
        assert summary["peak_memory_mb"] == 3000.0
        # A block shorter than the sampling interval still gets an estimate (interpolated edges).
        with sampler:
            time.sleep(0.002)
        assert sampler.summary(items=1)["avg_power_w"] == pytest.approx(5.0)
    finally:
        sampler.close()
    assert sampler._proc is not None and sampler._proc.poll() is not None  # no tegrastats left behind


def test_summary_is_empty_before_any_window(fake_tegrastats):
    sampler = TegrastatsTelemetry(executable=str(fake_tegrastats))
    assert sampler.summary(items=1) == {}
    sampler.close()


def test_missing_tegrastats_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="tegrastats"):
        TegrastatsTelemetry(executable="tegrastats-not-installed")


def test_nvml_without_a_gpu_is_a_clear_error():
    try:
        sampler = NvmlTelemetry()
    except BackendUnavailableError as exc:
        assert exc.hint
        return
    sampler.close()
    pytest.skip("NVML works on this machine")


def test_reports_show_power_and_share_of_peak(tiny_bundle, tmp_path):
    """What a GPU run adds to the report (NVML readings, the GPU's FP16 peak) reaches the table and README."""
    import importlib.util
    from pathlib import Path

    from edgemm.bench.bench import BenchConfig, run_bench
    from edgemm.bench.files import write_reports
    from edgemm.bench.flops import achieved
    from edgemm.bench.report import table
    from edgemm.bench.runner import TimingOptions

    doc = run_bench(BenchConfig(bundle=tiny_bundle, timing=TimingOptions(iterations=2, rounds=1, warmup=0), peers=(),
                                cold_start=False, accuracy=False, suite="tiny")).document
    assert doc["flops"]["rows"] and doc["flops"]["peak_fp16_tflops"] is None  # no GPU: no share of peak
    assert "power" not in table(doc) and "dense FP16 peak" not in table(doc)
    for row in doc["latency"]:
        if row["mode"] == "model":
            row.update(avg_power_w=250.0, energy_per_item_mj=1.5, peak_device_memory_mb=900.0)
    doc["config"]["telemetry"] = "nvml"
    doc["flops"]["peak_fp16_tflops"] = 989.4
    for row in doc["flops"]["rows"]:
        row.update(achieved(row["gflops_per_batch"] * 1e9, 0.01, 989.4))
    text = table(doc)
    assert "power (nvml)" in text and "250.0 W" in text and "1.500 mJ/item" in text and "900 MB" in text
    assert "dense FP16 peak (989 TFLOPS)" in text

    spec = importlib.util.spec_from_file_location("bench_render", Path(__file__).parents[2] / "benchmarks" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    results = tmp_path / "results"
    write_reports(doc, results / "gpu-test" / "tiny", plots=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{render.START}\nstale\n{render.END}\noutro\n")
    render.HERE = tmp_path
    render.render(results, readme)
    out = readme.read_text()
    assert out.startswith("intro\n") and out.endswith("outro\n") and "stale" not in out
    assert "| power (nvml), model only |" in out and "| 250.0 | 1.500 | 900 |" in out
    assert "share of dense FP16 peak (989 TFLOPS)" in out
