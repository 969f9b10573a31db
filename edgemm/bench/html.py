"""``bench.html``: one self-contained page a teacher can read — tables, plots, machine, targets, notes.

No network, ever: the CSS is inline, the PNGs are embedded as ``data:`` URIs and no font or
script is fetched; the page opens from a USB stick on a kiosk. Every string from the document
goes through :func:`html.escape` (contender names come from users' bundles).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgemm.bench.report import (
    SPEEDUP_TABLES,
    TAIL_RATIO,
    cell_key,
    contention_rows,
    headline,
    noise_flags,
    peak_fraction_rows,
    report_notes,
    telemetry_rows,
    workload_text,
)

_CSS = """
:root { color-scheme: light; --ink: #111827; --muted: #4b5563; --line: #d1d5db; --soft: #f3f4f6;
        --ok: #166534; --ok-bg: #dcfce7; --bad: #991b1b; --bad-bg: #fee2e2; --warn: #92400e; --warn-bg: #fef3c7; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1180px; padding: 24px 20px 48px; color: var(--ink); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Liberation Sans", sans-serif; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
p.lead { color: var(--muted); margin: 0 0 16px; }
.summary { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { flex: 1 1 220px; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: var(--soft); }
.card b { display: block; font-size: 1.25rem; }
.card span { color: var(--muted); font-size: .85rem; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: .9rem; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top;
         white-space: nowrap; }
td .wrap { white-space: normal; display: inline-block; min-width: 24em; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.headline td { background: #eff6ff; font-weight: 600; }
.scroll { overflow-x: auto; }
.badge { display: inline-block; border-radius: 999px; padding: 0 8px; font-size: .8rem; font-weight: 600; }
.met { color: var(--ok); background: var(--ok-bg); }
.missed { color: var(--bad); background: var(--bad-bg); }
.other, .noisy { color: var(--warn); background: var(--warn-bg); }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
figure { margin: 12px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: .85rem; }
ul.notes li { margin: 4px 0; }
.note-box { border-left: 4px solid #d97706; background: var(--warn-bg); padding: 8px 12px; margin: 8px 0; }
dl.machine { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dl.machine dt { color: var(--muted); }
dl.machine dd { margin: 0; }
code { font-size: .85em; background: var(--soft); padding: 0 4px; border-radius: 3px; }
footer { margin-top: 40px; color: var(--muted); font-size: .8rem; }
"""

_CAPTIONS = {
    "latency.png": "Latency per call: the bar is the median (p50), the whisker runs to p99 — shorter is better. "
                   "Hatched bars are noisy cells; ★ marks the headline artifact.",
    "pareto.png": "Accuracy against p50 latency at the smallest batch size: up and to the left is better.",
}


def e(value: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None or isinstance(value, str):
        return "–" if value is None else e(value)
    return f"{value:,.{digits}f}{suffix}"


def _table(headers: Iterable[str | tuple[str, bool]], rows: Iterable[tuple[list[str], str]]) -> str:
    """``headers``: names (or (name, numeric)); ``rows``: (already escaped cells, row class)."""
    heads = [(h, False) if isinstance(h, str) else h for h in headers]
    out = ['<div class="scroll"><table><thead><tr>']
    out += [f'<th scope="col"{" class=num" if numeric else ""}>{e(name)}</th>' for name, numeric in heads]
    out.append("</tr></thead><tbody>")
    for cells, css in rows:
        out.append(f'<tr class="{css}">' if css else "<tr>")
        out += [f'<td{" class=num" if heads[i][1] else ""}>{cell}</td>' for i, cell in enumerate(cells)]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _swatch(name: str, colours: dict[str, str]) -> str:
    colour = colours.get(name)
    if not colour:
        return e(name)
    return f'<span class="swatch" style="background:{e(colour)}"></span>{e(name)}'


def render_html(document: dict[str, Any], *, images: Iterable[Path] = ()) -> str:
    """The whole page as a string (``images``: PNGs to embed, in order).

    Args:
        document: A bench document (schema ``edgemm.bench/1``), optionally with ``report_notes``.
        images: PNG files to embed as ``data:`` URIs.

    Returns:
        A complete HTML document that references nothing outside itself.
    """
    from edgemm.bench.plots import contender_colours

    doc = document
    m = doc["machine"]
    name = doc.get("suite") or doc["bundle"]["name"]
    colours = contender_colours(doc)
    best = headline(doc)
    title = f"edgemm bench — {name} on {m['id']}"
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             # Nothing may leave the page: no fetches, no fonts, no scripts.
             "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
             "style-src 'unsafe-inline'\">",
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>",
             f'<p class="lead">Bundle <code>{e(doc["bundle"]["name"])}</code> ({e(doc["bundle"].get("task"))}, '
             f'recipe {e(doc["bundle"].get("recipe"))}) · recorded {e(doc.get("created_at"))} · '
             f'schema {e(doc.get("schema"))}</p>']
    parts.append(_summary(doc, best))
    parts.append(_targets(doc))
    parts.append(_plots(doc, list(images)))
    parts.append(_latency(doc, best, colours))
    parts.append(_speedups(doc))
    parts.append(_contention(doc, colours))
    parts.append(_accuracy(doc, best, colours))
    parts.append(_cold(doc, best, colours))
    parts.append(_gpu(doc))
    parts.append(_notes(doc))
    parts.append(_machine(doc))
    parts.append(f"<footer>Generated by edgemm {e(m.get('versions', {}).get('edgemm'))} from bench.json; "
                 "ratios between contenders measured in the same run are the trustworthy numbers, "
                 "absolute latencies move with the machine.</footer></body></html>")
    return "\n".join(p for p in parts if p)


def write_html(document: dict[str, Any], path: Path, *, images: Iterable[Path] = ()) -> Path:
    """Write :func:`render_html`'s page to ``path`` (UTF-8) and return ``path``."""
    path.write_text(render_html(document, images=images), encoding="utf-8")
    return path


# -- sections ---------------------------------------------------------------------------------


def _summary(doc: dict[str, Any], best: str | None) -> str:
    cards = []
    if best:
        p50 = next((r["p50_ms"] for r in doc["latency"] if r["contender"] == best and r["mode"] == "e2e"
                    and r.get("n") and r.get("seq") is None and r.get("load") in (None, "quiet")), None)
        cards.append((best, "headline: the artifact predict / serve choose on this machine"
                      + (f" · {p50:.2f} ms p50 end to end at batch {min(doc['config']['batch_sizes'])}" if p50 else "")))
    speedups = [r for r in doc["ratios"].get("speedup", []) if r["mode"] == "e2e" and r["batch"] == 1]
    if speedups:
        top = max(speedups, key=lambda r: r["ratio"])
        cards.append((f"{top['ratio']:.2f}× faster", f"than {top['peer']} end to end at batch 1"))
    cold = doc["ratios"].get("cold_start") or {}
    if cold.get("edgemm_s"):
        versus = (f"vs {cold['torch_pipeline_s']:.2f} s for the PyTorch pipeline ({cold['ratio']:.1f}× faster)"
                  if cold.get("torch_pipeline_s") else "fresh process → first answer")
        cards.append((f"{cold['edgemm_s']:.2f} s cold start", versus))
    met = [t for t in doc.get("targets", []) if t.get("status") == "met"]
    if doc.get("targets"):
        cards.append((f"{len(met)} of {len(doc['targets'])} targets met", "see Targets below"))
    flags = noise_flags(doc)
    if flags:
        cards.append((f"{len(flags)} noisy cell{'s' if len(flags) != 1 else ''}", "see Notes: rerun on a quiet machine"))
    workload = workload_text(doc)
    if workload:
        cards.append(("workload", workload))
    if not cards:
        return ""
    return '<div class="summary">' + "".join(f"<div class=card><b>{e(a)}</b><span>{e(b)}</span></div>"
                                             for a, b in cards) + "</div>"


def _targets(doc: dict[str, Any]) -> str:
    targets = doc.get("targets") or []
    if not targets:
        return ""
    rows = []
    for t in targets:
        status = t.get("status", "")
        css = "met" if status == "met" else "missed" if status == "missed" else "other"
        rows.append(([e(t["target"]), e(t.get("goal", "")), _num(t.get("measured"), 3),
                      f'<span class="badge {css}">{e(status)}</span>', e(t.get("where", ""))], ""))
    headers: list[str | tuple[str, bool]] = ["target", "goal", ("measured", True), "status"]
    if any(t.get("where") for t in targets):
        headers.append("where (worst cell)")
    else:
        rows = [(cells[:-1], css) for cells, css in rows]
    return "<h2 id=targets>Targets</h2><p>The suite's goals, measured in this run.</p>" + _table(headers, rows)


def _plots(doc: dict[str, Any], images: list[Path]) -> str:
    out = ["<h2 id=plots>Plots</h2>"]
    for path in images:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        caption = _CAPTIONS.get(Path(path).name, Path(path).name)
        out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(caption)}">'
                   f"<figcaption>{e(caption)}</figcaption></figure>")
    plot_notes = [n for n in doc.get("report_notes", []) if n.startswith(("plots not drawn", "latency.png", "pareto.png"))]
    for note in plot_notes:
        if not images or "not drawn" in note:
            out.append(f'<div class="note-box">{e(note)}</div>')
    if not images and not plot_notes:
        out.append('<div class="note-box">No plots were drawn for this report; install matplotlib with '
                   "<code>pip install 'edgemm[bench]'</code> and write the report again.</div>")
    return "".join(out)


def _latency(doc: dict[str, Any], best: str | None, colours: dict[str, str]) -> str:
    kinds = {c["name"]: c for c in doc.get("contenders", [])}
    flags: dict[tuple[Any, ...], list[str]] = {}
    for f in noise_flags(doc):
        flags.setdefault(f["key"], []).append(f["message"])
    loads = any(r.get("load") not in (None, "quiet") for r in doc["latency"])
    works = any(r.get("workload") not in (None, "standard") for r in doc["latency"])
    headers: list[str | tuple[str, bool]] = ["contender", "kind", "precision", "mode", ("batch", True), ("seq", True)]
    if loads:
        headers.append("load")
    if works:
        headers.append("workload")
    headers += [("n", True), ("p50 ms", True), ("p90 ms", True), ("p99 ms", True), ("p99 ÷ p50", True),
                ("items/s", True), "flag"]
    rows = []
    order = sorted(doc["latency"], key=lambda r: (r.get("workload") or "", r["batch"], r.get("seq") or 0,
                                                  r.get("load") or "", r["mode"]))
    for r in order:
        c = kinds.get(r["contender"], {})
        cells = [_swatch(r["contender"], colours) + (" ★" if r["contender"] == best else ""),
                 e(c.get("kind", "")), e(c.get("precision", "")), e("end to end" if r["mode"] == "e2e" else "model only"),
                 e(r["batch"]), e("–" if r.get("seq") is None else r["seq"])]
        if loads:
            cells.append(e(r.get("load") or "quiet"))
        if works:
            cells.append(e(r.get("workload") or "standard"))
        if r.get("error") or not r.get("n"):
            cells += ["0", f'<span class="badge missed">failed</span> <span class=wrap>{e(r.get("error", "not measured"))}</span>',
                      "", "", "", "", ""]
        else:
            ratio = r["p99_ms"] / r["p50_ms"] if r.get("p50_ms") else None
            notes = flags.get(cell_key(r), [])
            # The badge here, the full sentence in the Notes (a sentence per row would swamp the table).
            flag = "".join(f'<a href="#notes"><span class="badge noisy" title="{e(msg)}">noisy</span></a>'
                           for msg in notes[:1])
            cells += [e(r["n"]), _num(r["p50_ms"]), _num(r["p90_ms"]), _num(r["p99_ms"]), _num(ratio, 1, "×"),
                      _num(r.get("throughput_per_s"), 1), flag]
        rows.append((cells, "headline" if r["contender"] == best else ""))
    cfg = doc["config"]
    lead = (f'<p>{e(cfg.get("iterations"))} timed calls per cell, interleaved over {e(cfg.get("rounds"))} rounds '
            f'(contenders take turns, so machine drift hits all alike) after {e(cfg.get("warmup"))} warm-up calls; '
            f'inputs: {e(cfg.get("inputs"))}. <b>End to end</b> is raw input → answer (preprocessing included); '
            f"<b>model only</b> times the graph on prepared tensors. A cell is flagged noisy when its p99 exceeds "
            f"{TAIL_RATIO:g}× its p50 or its rounds disagree. ★ marks the headline artifact.</p>")
    return "<h2 id=latency>Latency</h2>" + lead + _table(headers, rows)


def _speedups(doc: dict[str, Any]) -> str:
    out = []
    for key, title in SPEEDUP_TABLES:
        found = doc["ratios"].get(key) or []
        if not found:
            continue
        fastest = any(r.get("fastest_edgemm") for r in found)
        rows = []
        for r in found:
            cells = [e(r["peer"]), e("end to end" if r["mode"] == "e2e" else "model only"), e(r["batch"]), e(r["edgemm"]),
                     _num(r.get("edgemm_p50_ms")), _num(r.get("peer_p50_ms")), f"<b>{_num(r['ratio'], 2, '×')}</b>"]
            if fastest:
                cells.append(f"{e(r['fastest_edgemm'])} {_num(r['fastest_ratio'], 2, '×')}" if r.get("fastest_edgemm")
                             else "same")
            rows.append((cells, ""))
        headers: list[str | tuple[str, bool]] = ["peer", "mode", ("batch", True), "edgemm", ("edgemm p50 ms", True),
                                                  ("peer p50 ms", True), ("speed-up", True)]
        if fastest:
            headers.append("fastest edgemm artifact (information)")
        out.append(f"<h2 id={e(key)}>Speed-up over the peers{e(title)}</h2><p>Peer p50 ÷ edgemm p50 in the same cell "
                   "(the edgemm artifact is named per row: the headline where it was measured); above 1× edgemm "
                   "is faster.</p>" + _table(headers, rows))
    return "".join(out)


def _contention(doc: dict[str, Any], colours: dict[str, str]) -> str:
    rows = [([_swatch(r["contender"], colours), e("end to end" if r["mode"] == "e2e" else "model only"), e(r["batch"]),
              _num(r["quiet_p50_ms"]), _num(r["contended_p50_ms"]), _num(r["slowdown"], 2, "×")], "")
            for r in contention_rows(doc)]
    if not rows:
        return ""
    how = (doc["config"].get("contention") or {}).get("load")
    return ("<h2 id=contention>Under contention</h2><p>p50 with other work competing for the CPU ÷ p50 on a quiet "
            f"machine, interleaved in the same run; closer to 1× holds up better.{' Load: ' + e(how) + '.' if how else ''}"
            "</p>" + _table(["contender", "mode", ("batch", True), ("quiet p50 ms", True), ("contended p50 ms", True),
                             ("slow-down", True)], rows))


def _accuracy(doc: dict[str, Any], best: str | None, colours: dict[str, str]) -> str:
    acc = doc.get("accuracy") or {}
    if not acc.get("rows"):
        return ""
    data = acc.get("data") or {}
    rows = []
    for r in acc["rows"]:
        if "accuracy" not in r:
            rows.append(([_swatch(r["contender"], colours), f'<span class="badge missed">failed</span> <span class=wrap>{e(r.get("error"))}</span>',
                          "", "", "", ""], ""))
            continue
        rows.append(([_swatch(r["contender"], colours) + (" ★" if r["contender"] == best else ""),
                      _num(100 * r["accuracy"], 2, " %"), _num(r.get("drop_points"), 2, " pt"),
                      _num(r.get("top1_agreement"), 4), _num(r.get("max_abs_diff"), 4), e(r.get("samples", ""))],
                     "headline" if r["contender"] == best else ""))
    where = ", ".join(f"{k} {v}" for k, v in data.items())
    return (f"<h2 id=accuracy>Accuracy</h2><p>On {e(where)}. Drop is in percentage points against the FP32 "
            "artifact; agreement is how often the top answer matches FP32's.</p>"
            + _table(["contender", ("accuracy", True), ("drop vs FP32", True), ("top-1 agreement", True),
                      ("max |Δ score|", True), ("records", True)], rows))


def _cold(doc: dict[str, Any], best: str | None, colours: dict[str, str]) -> str:
    if not doc.get("cold_start"):
        return ""
    rows = []
    for r in doc["cold_start"]:
        if "error" in r:
            rows.append(([_swatch(r["contender"], colours), f'<span class="badge missed">failed</span> <span class=wrap>{e(r["error"])}</span>',
                          "", "", "", "", ""], ""))
            continue
        runs = [x["total_s"] for x in r.get("runs", []) if "total_s" in x]
        spread = f"{min(runs):.2f}–{max(runs):.2f}" if runs else "–"
        median_run = min(r.get("runs") or [{}], key=lambda x: abs(x.get("total_s", 0) - r["total_s"]))
        chosen = " ★" if r["contender"] == best else " (the runtime's choice)" if r.get("chosen") else ""
        rows.append(([_swatch(r["contender"], colours) + chosen, _num(r["total_s"], 3),
                      e(spread), _num(median_run.get("import_s"), 3), _num(median_run.get("load_s"), 3),
                      _num(median_run.get("first_inference_s"), 3), _num(r.get("peak_rss_mb"), 0)],
                     "headline" if r["contender"] == best else ""))
    return ("<h2 id=cold>Cold start</h2><p>A fresh process from start to its first answer (median of the runs), "
            "and its peak memory.</p>"
            + _table(["contender", ("total s", True), ("runs s", True), ("import s", True), ("load s", True),
                      ("first answer s", True), ("peak RSS MB", True)], rows))


def _gpu(doc: dict[str, Any]) -> str:
    out = ""
    power = telemetry_rows(doc)
    if power:
        out += (f"<h2 id=power>Power ({e(doc['config'].get('telemetry'))}), model only</h2>"
                + _table(["contender", ("batch", True), ("avg W", True), ("mJ / item", True), ("peak device MB", True)],
                         [([e(n), e(b), _num(w, 1), _num(mj, 3), _num(mb, 0)], "") for n, b, w, mj, mb in power]))
    fractions = peak_fraction_rows(doc)
    if fractions:
        out += (f"<h2 id=peak>Share of dense FP16 peak ({_num(doc['flops']['peak_fp16_tflops'], 0)} TFLOPS)</h2>"
                + _table(["contender", ("batch", True), ("GFLOP / batch", True), ("TFLOPS", True), ("fraction", True)],
                         [([e(n), e(b), _num(g, 1), _num(t, 1), _num(100 * f, 1, " %")], "")
                          for n, b, g, t, f in fractions]))
    failures = (doc.get("budgets") or {}).get("failures") or []
    if failures:
        out += "<h2 id=budgets>Latency budget exceeded</h2><ul>" + "".join(f"<li>{e(f)}</li>" for f in failures) + "</ul>"
    return out


def _notes(doc: dict[str, Any]) -> str:
    notes = report_notes(doc)
    if not notes:
        return "<h2 id=notes>Notes</h2><p>None: no peer was skipped, no cell was noisy, every plot was drawn.</p>"
    return "<h2 id=notes>Notes</h2><ul class=notes>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>"


def _machine(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    cpu = m.get("cpu", {})
    items = [("machine id", m.get("id")), ("CPU", cpu.get("model")),
             ("cores", f"{cpu.get('usable_cores')} usable of {cpu.get('logical_cores')} logical"),
             ("CPU flags", " ".join(cpu.get("flags", [])) or "–"), ("memory", f"{m.get('memory_mb')} MB"),
             ("OS", f"{m.get('os')} ({m.get('arch')})")]
    for gpu in m.get("gpus") or []:
        items.append(("GPU", ", ".join(f"{k} {v}" for k, v in gpu.items())))
    if m.get("jetson"):
        items.append(("Jetson", m["jetson"]))
    cfg = doc["config"]
    items.append(("device", cfg.get("device")))
    items.append(("threads", cfg.get("threads") or "runtime default"))
    workload = workload_text(doc)
    if workload:
        items.append(("workload", workload))
    contenders = ", ".join(f"{c['name']} ({c.get('runtime', c.get('kind'))})" for c in doc.get("contenders", []))
    items.append(("contenders", contenders))
    versions = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())
    items.append(("library versions", versions))
    return ("<h2 id=machine>Machine</h2><dl class=machine>"
            + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in items) + "</dl>")
