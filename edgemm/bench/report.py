"""Benchmark reports: terminal table, JSON (schema ``edgemm.bench/1``), CSV, PNG plots and ``bench.html``.

The text table, :mod:`edgemm.bench.plots` and :mod:`edgemm.bench.html` read the same document
through the helpers here (cells, headline, noise flags), so a flag or a headline shown in one is
shown in all.
"""

from __future__ import annotations

from typing import Any

LATENCY_COLUMNS = ("contender", "mode", "batch", "seq", "load", "workload", "n", "p50_ms", "p90_ms", "p99_ms",
                   "mean_ms", "std_ms", "min_ms", "max_ms", "throughput_per_s", "avg_power_w", "energy_per_item_mj",
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


# The speed-up tables of ``document["ratios"]`` (bench.py) and how each is titled.
SPEEDUP_TABLES = (("speedup", ""), ("contended_speedup", " with one core busy"),
                  ("repeated_speedup", " on the repeated-answer workload"))
# A cell is flagged noisy when its p99 exceeds this multiple of its p50 …
TAIL_RATIO = 3.0
# … or when its per-round p50s (``round_p50_ms``, where the runner records them) spread by more than this.
ROUND_SPREAD = 0.15
QUIET_RERUN = "another process likely interfered; rerun on a quiet machine"


def _quiet(row: dict[str, Any]) -> bool:
    """Rows measured without deliberate contention (rows without ``load`` are quiet)."""
    return row.get("load") in (None, "quiet")


def _standard(row: dict[str, Any]) -> bool:
    """Rows of the standard workload (one request per cell; rows without ``workload`` are standard)."""
    return row.get("workload") in (None, "standard")


def latency_cells(document: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The plotted cells: ``(contender, mode, batch) → row`` for quiet, standard-workload,
    natural-length, measured rows (contended and repeated-workload cells are in the tables)."""
    return {(r["contender"], r["mode"], r["batch"]): r for r in document.get("latency", [])
            if r.get("seq") is None and r.get("n") and not r.get("error") and _quiet(r) and _standard(r)}


def cell_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a latency row: contender, mode, batch, seq, load, workload."""
    return (row["contender"], row["mode"], row["batch"], row.get("seq"), row.get("load") or "quiet",
            row.get("workload") or "standard")


def accuracy_records(document: dict[str, Any]) -> int:
    """How many records the accuracy rows were computed on (0 when unknown)."""
    acc = document.get("accuracy") or {}
    counts = [r.get("samples") for r in acc.get("rows", []) if r.get("samples")]
    return int(max(counts)) if counts else int((acc.get("data") or {}).get("records") or 0)


def headline(document: dict[str, Any]) -> str | None:
    """The contender ``bench`` headlines: the artifact ``predict`` / ``serve`` would choose here.

    Read from ``document["headline"]`` (a contender or artifact name, or a dict naming one) where
    the bench recorded it; else the edgemm row of the cold start (which uses the same choice).
    """
    names = {c["name"] for c in document.get("contenders", [])}
    value = document.get("headline")
    if isinstance(value, dict):
        value = value.get("contender")
    if isinstance(value, str) and value:
        return value if value in names or value.startswith("edgemm:") else f"edgemm:{value}"
    if isinstance(document.get("headline"), dict):
        return None  # recorded, and not measured: nothing to mark
    cold = [r for r in document.get("cold_start") or [] if str(r.get("contender", "")).startswith("edgemm:")]
    return next((r["contender"] for r in cold if r.get("chosen")), cold[0]["contender"] if cold else None)


def noise_flags(document: dict[str, Any], *, tail_ratio: float = TAIL_RATIO,
                round_spread: float = ROUND_SPREAD) -> list[dict[str, Any]]:
    """Cells whose numbers another process likely disturbed.

    A quiet cell is flagged when its p99 exceeds ``tail_ratio`` × its p50, or when the p50s of its
    interleaved rounds (``round_p50_ms``, where recorded) spread by more than ``round_spread`` of
    their median. Deliberately contended cells (``load: contended``) are never flagged.

    Returns:
        One dict per flag: contender, mode, batch, seq, ``kind`` (``tail`` / ``rounds``), ``message``.
    """
    flags = []
    for row in document.get("latency", []):
        # Contended cells are slow on purpose, and a repeated-answer workload mixes cache hits
        # with misses: a long tail there is the workload, not interference.
        if not row.get("n") or row.get("error") or not _quiet(row) or not _standard(row):
            continue
        where = {"contender": row["contender"], "mode": row["mode"], "batch": row["batch"], "seq": row.get("seq"),
                 "workload": row.get("workload") or "standard", "key": cell_key(row)}
        p50, p99 = row.get("p50_ms") or 0.0, row.get("p99_ms") or 0.0
        if p50 > 0 and p99 > tail_ratio * p50:
            flags.append({**where, "kind": "tail", "ratio": p99 / p50,
                          "message": f"noisy: p99 is {_times(p99 / p50)} p50 ({_ms(p99)} vs {_ms(p50)}) — {QUIET_RERUN}"})
        rounds = [float(v) for v in row.get("round_p50_ms") or [] if v]
        if len(rounds) >= 2:
            middle = float(sorted(rounds)[len(rounds) // 2])
            spread = (max(rounds) - min(rounds)) / middle if middle else 0.0
            if spread > round_spread:
                flags.append({**where, "kind": "rounds", "spread": spread,
                              "message": f"noisy: the p50 moved {100 * spread:.0f} % between rounds "
                                         f"({_ms(min(rounds))} to {_ms(max(rounds))}) — {QUIET_RERUN}"})
    return flags


def noise_notes(document: dict[str, Any]) -> list[str]:
    """One line per noise flag, naming the cell (what the notes of every report show)."""
    return [f"{f['contender']} {_cell(f)}: {f['message']}" for f in noise_flags(document)]


def _cell(row: dict[str, Any]) -> str:
    mode = "end to end" if row["mode"] == "e2e" else "model only"
    return (f"{mode}, batch {row['batch']}" + ("" if row.get("seq") is None else f", seq {row['seq']}")
            + ("" if row.get("workload") in (None, "standard") else f", {row['workload']} workload"))


def _times(ratio: float) -> str:
    return f"{ratio:.1f}×" if ratio < 10 else f"{ratio:.0f}×"


def _ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:,.0f} ms"


def workload_text(document: dict[str, Any]) -> str | None:
    """The workload the bench timed (where the document records one), as one line."""
    workload = document.get("workload")
    if not workload:
        return None
    if isinstance(workload, dict):
        if set(workload) <= {"standard"}:
            return None  # the standard workload alone: nothing worth a line
        return "; ".join(f"{k}: {v}" for k, v in workload.items() if not isinstance(v, (dict, list)))
    return str(workload)


def report_notes(document: dict[str, Any]) -> list[str]:
    """Every note a reader should see: the run's notes, noise flags, then the report's own (plots)."""
    return [*document.get("notes", []), *noise_notes(document), *document.get("report_notes", [])]


def table(document: dict[str, Any]) -> str:
    """A plain-text summary for the terminal."""
    m = document["machine"]
    lines = [f"machine   {m['id']}  ({m['cpu']['model']}, {m['cpu']['usable_cores']} cores"
             + (f", {m['gpus'][0]['name']}" if m.get("gpus") else "") + ")",
             f"bundle    {document['bundle']['name']}  recipe {document['bundle']['recipe']}  "
             f"inputs: {document['config']['inputs']}"]
    best = headline(document)
    if best:
        lines.append(f"headline  {best}  (the artifact predict / serve choose on this machine)")
    workload = workload_text(document)
    if workload:
        lines.append(f"workload  {workload}")
    lines.append("")
    loads = any(r.get("load") not in (None, "quiet") for r in document["latency"])
    works = any(not _standard(r) for r in document["latency"])
    flagged = {f["key"] for f in noise_flags(document)}
    lines.append(f"{'contender':<34}{'mode':<6}{'batch':>6}{'seq':>5}" + (f"{'load':>11}" if loads else "")
                 + (f"{'workload':>10}" if works else "") + f"{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'items/s':>10}")
    for row in document["latency"]:
        load = (f"{row.get('load') or 'quiet':>11}" if loads else "") + \
            (f"{row.get('workload') or 'standard':>10}" if works else "")
        if row.get("error") or not row.get("n"):
            lines.append(f"{row['contender']:<34}{row['mode']:<6}{row['batch']:>6}{'-':>5}{load}  failed: "
                         f"{(row.get('error') or 'not measured')[:60]}")
            continue
        seq = "-" if row["seq"] is None else str(row["seq"])
        flag = "  noisy" if cell_key(row) in flagged else ""
        lines.append(f"{row['contender']:<34}{row['mode']:<6}{row['batch']:>6}{seq:>5}{load}{row['p50_ms']:>10.2f}"
                     f"{row['p90_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['throughput_per_s']:>10.1f}{flag}")
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
                chosen = "  (the runtime's choice)" if row.get("chosen") else ""
                lines.append(f"  {row['contender']:<32} {row['total_s']:.3f} s   {row['peak_rss_mb']:.0f} MB{chosen}")
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
    for key, title in SPEEDUP_TABLES:
        speedups = document["ratios"].get(key, [])
        if not speedups:
            continue
        lines += ["", f"speed-up of edgemm{title} (peer p50 ÷ edgemm p50; the edgemm artifact named per row):"]
        for row in speedups:
            fastest = (f"   (fastest: {row['fastest_edgemm']} {row['fastest_ratio']:.2f}×)"
                       if row.get("fastest_edgemm") else "")
            lines.append(f"  {row['mode']:<6} batch {row['batch']:<4} {row['edgemm'] + ' vs ' + row['peer']:<46} "
                         f"{row['ratio']:6.2f}×{fastest}")
    contention = contention_rows(document)
    if contention:
        lines += ["", "under contention (contended p50 ÷ quiet p50; closer to 1× holds up better):"]
        for row in contention:
            lines.append(f"  {row['contender']:<32} {_cell(row):<22} {row['quiet_p50_ms']:9.2f} → "
                         f"{row['contended_p50_ms']:9.2f} ms  {row['slowdown']:.2f}×")
    for row in document["targets"]:
        value = row.get("measured")
        shown = "-" if value is None else f"{value:.3f}"
        where = f"  ({row['where']})" if row.get("where") else ""
        lines.append(f"target    {row['target']:<32} {row.get('goal', ''):<10} measured {shown:<10} {row['status']}{where}")
    for note in report_notes(document):
        lines.append(f"note      {note}")
    return "\n".join(lines)


def contention_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Contended vs quiet p50 per contender and cell, where the bench measured both loads."""
    quiet: dict[tuple[Any, ...], dict[str, Any]] = {}
    contended: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in document.get("latency", []):
        if not r.get("n") or r.get("error") or not _standard(r):
            continue
        key = (r["contender"], r["mode"], r["batch"], r.get("seq"))
        (contended if r.get("load") == "contended" else quiet)[key] = r
    rows = []
    for key, hot in contended.items():
        calm = quiet.get(key)
        if calm and calm.get("p50_ms"):
            rows.append({"contender": key[0], "mode": key[1], "batch": key[2], "seq": key[3],
                         "quiet_p50_ms": calm["p50_ms"], "contended_p50_ms": hot["p50_ms"],
                         "slowdown": hot["p50_ms"] / calm["p50_ms"]})
    return rows
