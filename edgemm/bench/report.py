"""Benchmark reports: terminal table, JSON (schema ``edgemm.bench/1``), CSV and PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

LATENCY_COLUMNS = ("contender", "mode", "batch", "seq", "n", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
                   "min_ms", "max_ms", "throughput_per_s", "avg_power_w", "energy_per_item_mj",
                   "peak_device_memory_mb", "error")


def telemetry_rows(document: dict[str, Any]) -> list[tuple[str, int, float, float, float | None]]:
    """(contender, batch, average W, mJ per item, peak device MB) of the model-only cells that have power."""
    return [(r["contender"], r["batch"], r["avg_power_w"], r["energy_per_item_mj"], r.get("peak_device_memory_mb"))
            for r in document["latency"] if r["mode"] == "model" and r.get("energy_per_item_mj") is not None]


def peak_fraction_rows(document: dict[str, Any]) -> list[tuple[str, int, float, float, float]]:
    """(contender, batch, GFLOP per batch, achieved TFLOPS, fraction of dense FP16 peak), GPU only."""
    flops = document.get("flops") or {}
    if not flops.get("peak_fp16_tflops"):
        return []
    return [(r["contender"], r["batch"], r["gflops_per_batch"], r["tflops"], r["fraction_of_peak"])
            for r in flops.get("rows", []) if r.get("seq") is None and r.get("fraction_of_peak") is not None]


def table(document: dict[str, Any]) -> str:
    """A plain-text summary for the terminal."""
    m = document["machine"]
    lines = [f"machine   {m['id']}  ({m['cpu']['model']}, {m['cpu']['usable_cores']} cores"
             + (f", {m['gpus'][0]['name']}" if m.get("gpus") else "") + ")",
             f"bundle    {document['bundle']['name']}  recipe {document['bundle']['recipe']}  "
             f"inputs: {document['config']['inputs']}", ""]
    lines.append(f"{'contender':<34}{'mode':<6}{'batch':>6}{'seq':>5}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
                 f"{'items/s':>10}")
    for row in document["latency"]:
        if row.get("error"):
            lines.append(f"{row['contender']:<34}{row['mode']:<6}{row['batch']:>6}{'-':>5}  failed: {row['error'][:60]}")
            continue
        seq = "-" if row["seq"] is None else str(row["seq"])
        lines.append(f"{row['contender']:<34}{row['mode']:<6}{row['batch']:>6}{seq:>5}{row['p50_ms']:>10.2f}"
                     f"{row['p90_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['throughput_per_s']:>10.1f}")
    if document["accuracy"]["rows"]:
        lines += ["", f"accuracy on {document['accuracy']['data']['source']}:"]
        for row in document["accuracy"]["rows"]:
            if "error" in row:
                lines.append(f"  {row['contender']:<32} failed: {row['error'][:60]}")
            else:
                lines.append(f"  {row['contender']:<32} accuracy {row['accuracy']:.4f}  drop {row['drop_points']:+.2f} pt"
                             f"  agreement {row['top1_agreement']:.4f}")
    if document["cold_start"]:
        lines += ["", "cold start (fresh process → first result), peak RSS:"]
        for row in document["cold_start"]:
            if "error" in row:
                lines.append(f"  {row['contender']:<32} failed: {row['error'][:70]}")
            else:
                lines.append(f"  {row['contender']:<32} {row['total_s']:.3f} s   {row['peak_rss_mb']:.0f} MB")
    power = telemetry_rows(document)
    if power:
        lines += ["", f"power ({document['config'].get('telemetry')}), model only:"]
        for name, batch, watts, mj, memory in power:
            shown = "-" if memory is None else f"{memory:.0f} MB"
            lines.append(f"  {name:<32} batch {batch:<4} {watts:7.1f} W  {mj:9.3f} mJ/item  device memory {shown}")
    fractions = peak_fraction_rows(document)
    if fractions:
        lines += ["", f"achieved vs dense FP16 peak ({document['flops']['peak_fp16_tflops']:.0f} TFLOPS), model only:"]
        for name, batch, gflops, tflops, fraction in fractions:
            lines.append(f"  {name:<32} batch {batch:<4} {gflops:9.1f} GFLOP  {tflops:7.1f} TFLOPS  {100 * fraction:5.1f} %")
    speedups = document["ratios"].get("speedup", [])
    if speedups:
        lines += ["", "speed-up of the best edgemm artifact (peer p50 ÷ edgemm p50):"]
        for row in speedups:
            lines.append(f"  {row['mode']:<6} batch {row['batch']:<4} {row['edgemm']} vs {row['peer']:<18} {row['ratio']:.2f}×")
    for row in document["targets"]:
        value = row.get("measured")
        shown = "-" if value is None else f"{value:.3f}"
        lines.append(f"target    {row['target']:<32} {row.get('goal', ''):<10} measured {shown:<10} {row['status']}")
    for note in document.get("notes", []):
        lines.append(f"note      {note}")
    return "\n".join(lines)


def write_reports(document: dict[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    """Write ``bench.json``, ``bench.csv`` and (with matplotlib) ``latency.png`` / ``pareto.png``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "bench.json", out / "bench.csv"]
    (out / "bench.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(out / "bench.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=LATENCY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in document["latency"]:
            writer.writerow(row)
    if plots:
        written += plot(document, out)
    return written


def plot(document: dict[str, Any], out: Path) -> list[Path]:
    """Latency vs batch per contender, and the accuracy-vs-latency Pareto front (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return []
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, mode in zip(axes, ("e2e", "model")):
        for name in sorted({r["contender"] for r in document["latency"]}):
            rows = sorted((r for r in document["latency"] if r["contender"] == name and r["mode"] == mode
                           and r.get("seq") is None and r.get("n")), key=lambda r: r["batch"])
            if rows:
                ax.plot([r["batch"] for r in rows], [r["p50_ms"] for r in rows], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title("end to end" if mode == "e2e" else "model only")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{document['bundle']['name']} on {document['machine']['id']}")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)
    written.append(out / "latency.png")

    acc = {r["contender"]: r for r in document["accuracy"]["rows"] if "accuracy" in r}
    points = []
    for name, row in acc.items():
        p50 = next((r["p50_ms"] for r in document["latency"] if r["contender"] == name and r["mode"] == "e2e"
                    and r["batch"] == min(document["config"]["batch_sizes"]) and r.get("n")), None)
        if p50 is not None:
            points.append((p50, row["accuracy"], name))
    if points:
        fig, ax = plt.subplots(figsize=(6, 4))
        front, best = [], -1.0
        for p50, accuracy, name in sorted(points):
            ax.scatter(p50, accuracy)
            ax.annotate(name, (p50, accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if accuracy > best:
                front.append((p50, accuracy))
                best = accuracy
        ax.plot([p[0] for p in front], [p[1] for p in front], linestyle="--", alpha=0.6, label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel(f"p50 end-to-end latency, batch {min(document['config']['batch_sizes'])} (ms)")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "pareto.png", dpi=120)
        plt.close(fig)
        written.append(out / "pareto.png")
    return written
