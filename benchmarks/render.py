"""Regenerate the results tables of ``benchmarks/README.md``, and each recorded suite's
``bench.html`` and PNG plots, from the recorded ``bench.json`` files.

    python benchmarks/render.py              # tables + bench.html + latency.png / pareto.png
    python benchmarks/render.py --tables-only

Everything between the ``results:start`` and ``results:end`` markers is rewritten; nothing in
those tables is typed by hand. ``bench.json`` itself is never rewritten.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgemm.bench.files import write_visuals  # noqa: E402
from edgemm.bench.report import noise_flags, peak_fraction_rows, telemetry_rows  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def section(doc: dict[str, Any], path: Path) -> str:
    m = doc["machine"]
    machine = f"{m['cpu']['model']}, {m['cpu']['usable_cores']} cores ({', '.join(m['cpu']['flags'][:6])})"
    if m.get("gpus"):
        machine += f", {m['gpus'][0]['name']} (driver {m['gpus'][0]['driver']})"
    lines = [f"### {doc.get('suite') or doc['bundle']['name']} — `{m['id']}`", "",
             f"Machine: {machine}; onnxruntime {m['versions'].get('onnxruntime', m['versions'].get('onnxruntime-gpu'))}, "
             f"torch {m['versions'].get('torch', '–')}. Recorded {doc['created_at']}. Inputs: {doc['config']['inputs']}; "
             f"{doc['config']['iterations']} timed calls per cell, interleaved over {doc['config']['rounds']} rounds. "
             f"Files: [`{path.parent.relative_to(HERE).as_posix()}/`]({path.parent.relative_to(HERE).as_posix()}/); "
             f"the readable report: [`bench.html`]({path.parent.relative_to(HERE).as_posix()}/bench.html).", "",
             "| contender | precision | batch | e2e p50 ms | e2e p99 ms | model p50 ms | model p99 ms | items/s (model) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    precision = {c["name"]: c["precision"] for c in doc["contenders"]}
    cells = _cells(doc, load="quiet", workload="standard")
    for batch in doc["config"]["batch_sizes"]:
        for name in precision:
            e2e, model = cells.get((name, "e2e", batch), {}), cells.get((name, "model", batch), {})
            if e2e.get("error") or model.get("error"):
                lines.append(f"| {name} | {precision[name]} | {batch} | failed: {(e2e.get('error') or model.get('error'))[:60]} | | | | |")
                continue
            lines.append(f"| {name} | {precision[name]} | {batch} | {_fmt(e2e.get('p50_ms'))} | {_fmt(e2e.get('p99_ms'))} | "
                         f"{_fmt(model.get('p50_ms'))} | {_fmt(model.get('p99_ms'))} | {_fmt(model.get('throughput_per_s'), 1)} |")
    flags = noise_flags(doc)
    if flags:
        noisy = dict.fromkeys(f"{f['contender']} {f['mode']} batch {f['batch']}" for f in flags)  # once per cell
        lines += ["", "Noisy cells (p99 over 3× p50, or rounds disagreeing; another process likely interfered): "
                      + "; ".join(noisy) + "."]
    lines += _contended_table(doc, precision) + _repeated_table(doc, precision)
    if doc["accuracy"]["rows"]:
        lines += ["", f"Accuracy on {doc['accuracy']['data']['source']}:", "",
                  "| contender | accuracy | drop vs FP32 (pt) | top-1 agreement |", "| --- | ---: | ---: | ---: |"]
        for r in doc["accuracy"]["rows"]:
            if "accuracy" in r:
                lines.append(f"| {r['contender']} | {r['accuracy']:.4f} | {r['drop_points']:+.2f} | {r['top1_agreement']:.4f} |")
    if doc["cold_start"]:
        lines += ["", "| cold start (fresh process → first result) | median s | peak RSS MB |", "| --- | ---: | ---: |"]
        for r in doc["cold_start"]:
            if "error" not in r:
                lines.append(f"| {r['contender']} | {r['total_s']:.3f} | {r['peak_rss_mb']:.0f} |")
    power = telemetry_rows(doc)
    if power:
        lines += ["", f"| power ({doc['config'].get('telemetry')}), model only | batch | avg W | mJ / item | peak device MB |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {n} | {b} | {w:.1f} | {mj:.3f} | {_fmt(mb, 0)} |" for n, b, w, mj, mb in power]
    fractions = peak_fraction_rows(doc)
    if fractions:
        lines += ["", f"| share of dense FP16 peak ({doc['flops']['peak_fp16_tflops']:.0f} TFLOPS), model only | batch | "
                  "GFLOP / batch | achieved TFLOPS | fraction |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {n} | {b} | {g:.1f} | {t:.1f} | {100 * f:.1f} % |" for n, b, g, t, f in fractions]
    if doc["ratios"].get("speedup"):
        lines += ["", "| speed-up (peer p50 ÷ best edgemm p50) | mode | batch | edgemm | ratio |", "| --- | --- | ---: | --- | ---: |"]
        for r in doc["ratios"]["speedup"]:
            lines.append(f"| {r['peer']} | {r['mode']} | {r['batch']} | {r['edgemm']} | {r['ratio']:.2f}× |")
    if doc["targets"]:
        lines += ["", "| target | goal | measured | status |", "| --- | --- | ---: | --- |"]
        for t in doc["targets"]:
            lines.append(f"| {t['target']} | {t.get('goal', '')} | {_fmt(t.get('measured'), 3)} | **{t['status']}** |")
    return "\n".join(lines)


def _cells(doc: dict[str, Any], *, load: str, workload: str) -> dict[tuple[str, str, int], dict[str, Any]]:
    """``(contender, mode, batch) → row`` of one load and workload (a cell is timed once per pair)."""
    return {(r["contender"], r["mode"], r["batch"]): r for r in doc["latency"]
            if r.get("seq") is None and r.get("load", "quiet") == load and r.get("workload", "standard") == workload}


def _contended_table(doc: dict[str, Any], precision: dict[str, str]) -> list[str]:
    """p50 quiet → with one core busy, per contender and batch (the standard workload)."""
    quiet, busy = _cells(doc, load="quiet", workload="standard"), _cells(doc, load="contended", workload="standard")
    if not busy:
        return []
    lines = ["", "With one core kept busy (`--contention`; quiet and contended passes interleaved in every round):", "",
             "| contender | batch | e2e p50 quiet → busy ms | model p50 quiet → busy ms |", "| --- | ---: | --- | --- |"]
    for batch in doc["config"]["batch_sizes"]:
        for name in precision:
            cols = []
            for mode in ("e2e", "model"):
                q, b = quiet.get((name, mode, batch), {}), busy.get((name, mode, batch), {})
                qp, bp = q.get("p50_ms"), b.get("p50_ms")
                cols.append(f"{_fmt(qp)} → {_fmt(bp)} ({bp / qp:.2f}×)" if qp and bp else "–")
            if cols != ["–", "–"]:
                lines.append(f"| {name} | {batch} | {cols[0]} | {cols[1]} |")
    return lines


def _repeated_table(doc: dict[str, Any], precision: dict[str, str]) -> list[str]:
    """The repeated-answer workload (end to end), quiet and with one core busy."""
    quiet, busy = _cells(doc, load="quiet", workload="repeated"), _cells(doc, load="contended", workload="repeated")
    if not quiet:
        return []
    lines = ["", f"Repeated-answer workload ({doc.get('workload', {}).get('repeated', 'texts repeat')}), end to end:", "",
             "| contender | batch | p50 ms | p99 ms | p50 with one core busy ms |", "| --- | ---: | ---: | ---: | ---: |"]
    for batch in sorted({k[2] for k in quiet}):
        for name in precision:
            row = quiet.get((name, "e2e", batch))
            if row and not row.get("error"):
                lines.append(f"| {name} | {batch} | {_fmt(row.get('p50_ms'))} | {_fmt(row.get('p99_ms'))} | "
                             f"{_fmt(busy.get((name, 'e2e', batch), {}).get('p50_ms'))} |")
    return lines


def serve_section(doc: dict[str, Any], path: Path) -> str:
    """One ``serve-load.json`` (benchmarks/serve_load.py) as a markdown table."""
    lat, rss = doc.get("latency_ms", {}), doc.get("rss_mib", {})
    machine = path.parent.parent.name
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(doc["statuses"].items()))
    return "\n".join([
        f"### Kiosk server under load — `{machine}`",
        "",
        f"`edgemm serve` on `{doc.get('bundle', {}).get('name', '?')}` (CPU), {doc['requests']} mixed requests "
        f"(multipart, JSON/base64, raw image; 1 % malformed) from {doc['concurrency']} concurrent keep-alive "
        "clients on loopback, after 200 warm-up requests. Source: "
        f"[`{path.relative_to(HERE).as_posix()}`]({path.relative_to(HERE).as_posix()}).",
        "",
        "| p50 ms | p90 ms | p99 ms | max ms | throughput req/s | statuses | unexpected | 5xx | RSS after warm-up → after load (MiB) |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
        f"| {_fmt(lat.get('p50'))} | {_fmt(lat.get('p90'))} | {_fmt(lat.get('p99'))} | {_fmt(lat.get('max'))} | "
        f"{_fmt(doc['throughput_rps'], 1)} | {statuses} | {doc['unexpected_count']} | {doc['server_errors']} | "
        f"{rss.get('after_warmup')} → {rss.get('after_load')} |",
        *_serve_comparison(doc.get("comparison")),
    ])


def _serve_comparison(comparison: dict[str, Any] | None) -> list[str]:
    """Rows comparing two versions of the server run interleaved on this machine (medians of the runs)."""
    if not comparison:
        return []
    lines = ["", f"Side by side: {comparison['how']}.", "",
             "| code | runs | median p50 ms | median p99 ms | median req/s | p50 / p99 per run (ms) |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for key in ("before", "now"):
        side = comparison[key]
        per_run = ", ".join(f"{_fmt(r['p50'])} / {_fmt(r['p99'])}" for r in side["runs"])
        lines.append(f"| {side['code']} | {len(side['runs'])} | {_fmt(side['median_p50_ms'])} | "
                     f"{_fmt(side['median_p99_ms'])} | {_fmt(side['median_throughput_rps'], 1)} | {per_run} |")
    return lines


def render(results: Path, readme: Path, *, visuals: bool = True) -> None:
    """Rewrite the generated part of ``readme`` from ``results/*/*/bench.json`` and serve-load runs.

    With ``visuals``, also redraw every suite's ``bench.html``, ``latency.png`` and ``pareto.png``
    next to its ``bench.json`` (without matplotlib the pages say why the plots are missing).
    """
    docs = sorted(results.glob("*/*/bench.json"))
    if visuals:
        for path in docs:
            _, notes = write_visuals(json.loads(path.read_text(encoding="utf-8")), path.parent)
            for note in notes:
                print(f"note: {path.parent.relative_to(results).as_posix()}: {note}", file=sys.stderr)
    parts = [section(json.loads(p.read_text(encoding="utf-8")), p) for p in docs]
    parts += [serve_section(json.loads(p.read_text(encoding="utf-8")), p)
              for p in sorted(results.glob("*/serve-load/serve-load.json"))]
    body = "\n\n".join(parts) or "_No results recorded yet._"
    text = readme.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{START}\n\n{body}\n\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    render(HERE / "results", HERE / "README.md", visuals="--tables-only" not in sys.argv[1:])
