"""PNG plots of a bench document (``latency.png``, ``pareto.png``) that read at a glance.

Rules the plots keep (issue 17): linear axes unless the values span more than :data:`LOG_SPAN`;
bars per batch size (lines with markers only when there are many batch sizes); every contender
keeps one colour in every plot (:func:`contender_colours`); every panel has its own legend; plain
tick labels; labels placed so they never overprint, with a legend as the fallback; p50 with a
p50–p99 whisker. matplotlib is imported lazily (the ``bench`` extra).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgemm._deps import require
from edgemm.bench.report import (
    TAIL_RATIO,
    accuracy_records,
    headline,
    latency_cells,
    noise_flags,
)

# Values spanning more than this factor get a log axis; narrower ranges stay linear.
LOG_SPAN = 20.0
# More batch sizes than this: latency against batch size as lines, not one bar panel per batch.
MAX_BAR_BATCHES = 4
# About how many 8-pt characters fit across one latency panel (to leave room for value labels).
PANEL_CHARS = 72

# edgemm's artifacts in one cool family (blue / teal / indigo), peers in warm or distinct hues.
EDGEMM_PALETTE = ("#1d4ed8", "#0891b2", "#4f46e5", "#0f766e", "#60a5fa", "#1e3a8a", "#22d3ee", "#818cf8")
PEER_COLOURS = {
    "torch-eager": "#dc2626",
    "torch-eager-fp16": "#f87171",
    "torch-compile": "#ea580c",
    "optimum": "#16a34a",
}
OPENVINO_PALETTE = ("#a21caf", "#db2777", "#c084fc")
OTHER_PALETTE = ("#92400e", "#ca8a04", "#6b7280", "#65a30d", "#be123c")

PLOTS_HINT = "pip install 'edgemm[bench]'"


def contender_colours(document: dict[str, Any]) -> dict[str, str]:
    """One colour per contender name, the same in every plot of ``document``.

    edgemm artifacts get shades of one cool family in the order the document lists them; the
    known peers have fixed colours (torch-eager is red in every report); OpenVINO peers share a
    magenta family; anything else gets the next colour of a neutral palette.

    Args:
        document: A bench document (schema ``edgemm.bench/1``).

    Returns:
        ``{contender name: "#rrggbb"}`` for every name in contenders, latency, accuracy and cold start.
    """
    names: list[str] = []
    for c in document.get("contenders", []):
        names.append(c["name"])
    for key in ("latency", "cold_start"):
        names += [r["contender"] for r in document.get(key) or [] if "contender" in r]
    names += [r["contender"] for r in (document.get("accuracy") or {}).get("rows", []) if "contender" in r]
    kinds = {c["name"]: c.get("kind") for c in document.get("contenders", [])}
    colours: dict[str, str] = {}
    counters = {"edgemm": 0, "openvino": 0, "other": 0}
    for name in dict.fromkeys(names):
        if kinds.get(name) == "edgemm" or name.startswith("edgemm:"):
            family, palette = "edgemm", EDGEMM_PALETTE
        elif name in PEER_COLOURS:
            colours[name] = PEER_COLOURS[name]
            continue
        elif "openvino" in name.lower():
            family, palette = "openvino", OPENVINO_PALETTE
        else:
            family, palette = "other", OTHER_PALETTE
        colours[name] = palette[counters[family] % len(palette)]
        counters[family] += 1
    return colours


def draw(document: dict[str, Any], out: Path) -> tuple[list[Path], list[str]]:
    """Draw ``latency.png`` and ``pareto.png`` into ``out``.

    Args:
        document: A bench document.
        out: An existing directory.

    Returns:
        (the PNGs written, notes saying what could not be drawn and why — never silent).
    """
    try:
        require("matplotlib", purpose="the bench plots")
    except Exception as exc:  # MissingDependencyError, or a broken install raising something else
        return [], [f"plots not drawn: matplotlib cannot be imported ({_first_line(exc)}); "
                    f"install it with {PLOTS_HINT} and re-run, or regenerate them from bench.json "
                    "with `python benchmarks/render.py`"]
    import matplotlib

    matplotlib.use("Agg")
    written: list[Path] = []
    notes: list[str] = []
    colours = contender_colours(document)
    path = _latency(document, out / "latency.png", colours, notes)
    if path is not None:
        written.append(path)
    path = _pareto(document, out / "pareto.png", colours, notes)
    if path is not None:
        written.append(path)
    return written, notes


def _safe(text: str) -> str:
    """Text shown literally: a ``$`` in a contender name must not start matplotlib mathtext."""
    return text.replace("$", r"\$")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- formatting -----------------------------------------------------------------------------


def _plain(value: float, _pos: Any = None) -> str:
    """Tick labels as plain numbers (``0.5``, ``2``, ``20``, ``1500``), never ``2×10^1``."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.3g}"
    return f"{value:.2g}"


def _ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:,.0f} ms"


def _set_scale(axis: Any, values: list[float], *, which: str) -> bool:
    """Linear unless the positive values span more than :data:`LOG_SPAN`; plain tick labels either way."""
    import matplotlib.ticker as ticker

    positive = [v for v in values if v and v > 0]
    log = bool(positive) and max(positive) / min(positive) > LOG_SPAN
    target = axis.xaxis if which == "x" else axis.yaxis
    if log:
        (axis.set_xscale if which == "x" else axis.set_yscale)("log")
        decades = math.log10(max(positive) / min(positive))
        # Fewer ticks per decade as the range widens, so the labels never run into each other.
        subs = (1.0, 2.0, 5.0) if decades < 2 else (1.0, 3.0) if decades < 3 else (1.0,)
        target.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    target.set_major_formatter(ticker.FuncFormatter(_plain))
    target.set_minor_formatter(ticker.NullFormatter())
    return log


# -- latency --------------------------------------------------------------------------------


def _latency(document: dict[str, Any], path: Path, colours: dict[str, str], notes: list[str]) -> Path | None:
    cells = latency_cells(document)
    if not cells:
        notes.append("latency.png not drawn: no latency cell was measured (every contender failed or none ran)")
        return None
    batches = sorted({b for (_, _, b) in cells})
    modes = [m for m in ("e2e", "model") if any(k[1] == m for k in cells)]
    noisy = {(f["contender"], f["mode"], f["batch"]) for f in noise_flags(document)}
    best = headline(document)
    order = [n for n in dict.fromkeys(n for (n, _, _) in cells)]
    if len(batches) > MAX_BAR_BATCHES:
        return _latency_lines(document, path, cells, batches, modes, order, colours, noisy, best)
    return _latency_bars(document, path, cells, batches, modes, order, colours, noisy, best)


def _title(document: dict[str, Any]) -> str:
    name = document.get("suite") or document["bundle"]["name"]
    return _safe(f"{name} on {document['machine']['id']}")


_MODE_TITLE = {"e2e": "end to end (raw input → answer)", "model": "model only (prepared tensors)"}


def _latency_bars(document: dict[str, Any], path: Path, cells: dict[tuple[str, str, int], dict[str, Any]],
                  batches: list[int], modes: list[str], order: list[str], colours: dict[str, str],
                  noisy: set[tuple[str, str, int]], best: str | None) -> Path:
    """One panel per (batch, mode): a horizontal bar per contender (p50) with a p50–p99 whisker."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import offset_copy

    rows, cols = len(batches), len(modes)
    height = max(2.6, 0.42 * len(order) + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, height * rows), squeeze=False, layout="constrained")
    for r, batch in enumerate(batches):
        for c, mode in enumerate(modes):
            ax = axes[r][c]
            names = [n for n in order if (n, mode, batch) in cells]
            if not names:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{mode}, batch {batch}: nothing measured", ha="center", va="center",
                        transform=ax.transAxes)
                continue
            p50 = [cells[(n, mode, batch)]["p50_ms"] for n in names]
            p99 = [cells[(n, mode, batch)]["p99_ms"] for n in names]
            log = _set_scale(ax, p50, which="x")
            # Whiskers show ordinary tails in full; a freak p99 is clipped (and its value written out)
            # instead of squashing every bar into the first pixels.
            cap = max(p50) * 1.3 if max(p99) > max(p50) * TAIL_RATIO else math.inf
            low = min(p50) / 2 if log else 0.0
            y = list(range(len(names)))[::-1]
            right = 0.0
            for yi, name, a, b in zip(y, names, p50, p99):
                hatch = "//" if (name, mode, batch) in noisy else None
                ax.barh(yi, a - low, left=low, height=0.62, color=colours[name],
                        edgecolor="#111827" if hatch else colours[name], hatch=hatch, linewidth=0.6, zorder=2)
                end = min(b, max(cap, a))
                ax.plot([a, end], [yi, yi], color="#111827", linewidth=1.3, zorder=3)
                ax.plot([end, end], [yi - 0.16, yi + 0.16], color="#111827", linewidth=1.3, zorder=3)
                label = " " + _ms(a) + (f"  (p99 {_ms(b)} ▸)" if b > end else "")
                ax.text(end, yi, label, va="center", ha="left", fontsize=8, zorder=4)
                # Room for the label after the whisker: it takes len/PANEL_CHARS of the axis width.
                share = 1.0 - (len(label) + 1) / PANEL_CHARS
                right = max(right, math.exp(math.log(end / low) / share) * low if log else end / share)
            ax.set_xlim(low, right)
            ax.set_yticks(y)
            ax.set_yticklabels([_safe(n) + ("  ★" if n == best else "") for n in names], fontsize=8.5)
            for tick, name in zip(ax.get_yticklabels(), names):
                if name == best:
                    tick.set_fontweight("bold")
            ax.set_title(f"{_MODE_TITLE[mode]} · batch {batch}", fontsize=10)
            ax.set_xlabel("latency per call (ms)" + (" · log scale" if log else ""))
            ax.grid(True, axis="x", alpha=0.3, zorder=0)
            handles = [Patch(facecolor="#9ca3af", label="p50 (bar)"),
                       Line2D([0], [0], color="#111827", linewidth=1.3, label="p50 → p99 (whisker)")]
            if any((n, mode, batch) in noisy for n in names):
                handles.append(Patch(facecolor="white", edgecolor="#111827", hatch="//",
                                     label=f"noisy (p99 > {TAIL_RATIO:g}× p50 or rounds disagree)"))
            if best in names:
                handles.append(Line2D([0], [0], linestyle="none", marker="*", color="#111827",
                                      label="headline (what predict / serve pick)"))
            # Below the panel (under its axis label), not on it: inside, it would cover a bar or a label.
            below = offset_copy(ax.transAxes, fig=fig, y=-30, units="points")
            ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, ncol=2,
                      fontsize=7, frameon=False)
    fig.suptitle(f"Latency — {_title(document)}  (shorter is better)", fontsize=12)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latency_lines(document: dict[str, Any], path: Path, cells: dict[tuple[str, str, int], dict[str, Any]],
                   batches: list[int], modes: list[str], order: list[str], colours: dict[str, str],
                   noisy: set[tuple[str, str, int]], best: str | None) -> Path:
    """Many batch sizes: p50 against batch size per contender, p50–p99 as error bars, a legend per panel."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker as ticker
    from matplotlib.transforms import offset_copy

    fig, axes = plt.subplots(1, len(modes), figsize=(6.6 * len(modes), 5.0 + 0.12 * len(order)), squeeze=False,
                             layout="constrained")
    for ax, mode in zip(axes[0], modes):
        values = []
        for name in order:
            points = [(b, cells[(name, mode, b)]) for b in batches if (name, mode, b) in cells]
            if not points:
                continue
            xs = [b for b, _ in points]
            ys = [row["p50_ms"] for _, row in points]
            tails = [row["p99_ms"] - row["p50_ms"] for _, row in points]
            values += ys
            ax.errorbar(xs, ys, yerr=[[0] * len(ys), tails], color=colours[name], marker="o", markersize=5,
                        capsize=3, linewidth=2.2 if name == best else 1.4,
                        label=_safe(name) + (" ★ headline" if name == best else "")
                        + (" (noisy)" if any((name, mode, b) in noisy for b in xs) else ""))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(ticker.FixedLocator(batches))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _p: f"{v:.0f}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        _set_scale(ax, values, which="y")
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 latency per call (ms); whisker to p99")
        ax.set_title(_MODE_TITLE[mode], fontsize=10)
        ax.grid(True, alpha=0.3)
        below = offset_copy(ax.transAxes, fig=fig, y=-30, units="points")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, ncol=2,
                  frameon=False)
    fig.suptitle(f"Latency — {_title(document)}  (lower is better)", fontsize=12)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- accuracy vs latency --------------------------------------------------------------------


def pareto_points(document: dict[str, Any]) -> tuple[list[tuple[float, float, str]], str | None, int]:
    """(p50 ms, accuracy, contender) at the smallest batch, the mode used, and the tested record count."""
    cells = latency_cells(document)
    acc = {r["contender"]: r for r in (document.get("accuracy") or {}).get("rows", []) if "accuracy" in r}
    batches = sorted({b for (_, _, b) in cells})
    for mode in ("e2e", "model"):
        points = [(cells[(n, mode, batches[0])]["p50_ms"], row["accuracy"], n) for n, row in acc.items()
                  if batches and (n, mode, batches[0]) in cells]
        if points:
            return points, f"{mode}:{batches[0]}", accuracy_records(document)
    return [], None, accuracy_records(document)


def _pareto(document: dict[str, Any], path: Path, colours: dict[str, str], notes: list[str]) -> Path | None:
    import matplotlib.pyplot as plt
    import matplotlib.ticker as ticker
    from matplotlib.lines import Line2D

    points, where, records = pareto_points(document)
    if not points:
        why = ("accuracy was not measured (--no-accuracy, or no labelled data)" if not document["accuracy"]["rows"]
               else "no contender has both an accuracy and a latency")
        notes.append(f"pareto.png not drawn: {why}")
        return None
    mode, batch = where.split(":")
    best = headline(document)
    fig, ax = plt.subplots(figsize=(9.6, 5.0), layout="constrained")
    xs = [p[0] for p in points]
    accs = [p[1] for p in points]
    log = _set_scale(ax, xs, which="x")
    step = 1.0 / records if records else 0.001
    equal = max(accs) - min(accs) < step / 2
    # Never let the axis collapse onto a single record: at least ±3 records or ±0.5 points around the data.
    # (a few records' worth, between 0.5 and 5 points, so a tiny test set does not stretch it to 25 %).
    pad = max(min(3 * step, 0.05), 0.005, (max(accs) - min(accs)) * 0.25)
    if equal:  # the points in the middle, the banner above them; ticks past 100 % stay unlabelled
        ax.set_ylim(accs[0] - pad, accs[0] + pad)
    else:
        ax.set_ylim(max(0.0, min(accs) - pad), min(1.0, max(accs) + pad) if max(accs) < 1.0 else 1.0 + pad / 5)
    digits = 1 if pad < 0.05 else 0
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(
        lambda v, _pos: "" if v > 1.0 + 1e-9 else f"{100 * v:.{digits}f} %"))
    span = max(xs) - min(xs)
    if log:
        ax.set_xlim(min(xs) / 1.6, max(xs) * 2.2)
    else:
        ax.set_xlim(max(0.0, min(xs) - 0.15 * span - 0.05 * max(xs)), max(xs) + 0.45 * span + 0.1 * max(xs))
    seen: list[tuple[float, float]] = []
    for p50, accuracy, name in sorted(points, key=lambda p: (p[0], p[2])):
        # Coincident points (same latency and accuracy) are drawn as concentric rings, so none hides.
        same = sum(1 for q in seen if abs(q[0] - p50) <= 0.004 * max(xs) and abs(q[1] - accuracy) < step / 2)
        seen.append((p50, accuracy))
        marker = "o" if name.startswith("edgemm:") else "s"
        ax.scatter([p50], [accuracy], s=70 + 90 * same, marker=marker, facecolor="none" if same else colours[name],
                   edgecolor=colours[name], linewidth=2.0, zorder=5 - same,
                   label=_safe(name) + ("  ★ headline" if name == best else ""))
    if not equal:
        front, top = [], -1.0
        for p50, accuracy, _ in sorted(points):
            if accuracy > top:
                front.append((p50, accuracy))
                top = accuracy
        ax.plot([p[0] for p in front], [p[1] for p in front], linestyle="--", color="#6b7280", alpha=0.8, zorder=1)
    banner = None
    if equal:
        banner = ax.text(0.5, 0.95, f"all contenders equal on {records} records — accuracy does not separate them; "
                           "latency decides", transform=ax.transAxes, ha="center", va="top", fontsize=9,
                bbox={"boxstyle": "round", "facecolor": "#fef3c7", "edgecolor": "#d97706"})
        notes.append(f"pareto.png: all contenders equal on {records} records (accuracy "
                     f"{100 * accs[0]:.2f} %); the plot shows latency only")
    data = (document.get("accuracy") or {}).get("data") or {}
    ax.set_xlabel(f"p50 latency, {'end to end' if mode == 'e2e' else 'model only'}, batch {batch} (ms)"
                  + (" · log scale" if log else "") + "  — left is faster")
    ax.set_ylabel(_safe(f"accuracy on {data.get('source', '?')} ({records} records) — up is better"))
    ax.set_title(f"Accuracy vs latency — {_title(document)}", fontsize=11)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if not equal:
        handles.append(Line2D([0], [0], linestyle="--", color="#6b7280"))
        labels.append("Pareto front (faster and at least as accurate)")
    legend = ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    placed = _place_labels(fig, ax, sorted(points, key=lambda p: (p[0], p[2])), colours,
                           obstacles=[banner] if banner is not None else [])
    if not placed:
        legend.set_title("labels would overlap: names here only", prop={"size": 7})
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _place_labels(fig: Any, ax: Any, points: list[tuple[float, float, str]], colours: dict[str, str],
                  *, obstacles: list[Any]) -> bool:
    """Label each point directly, stepping labels up/down (with a leader line) until none overlaps.

    Returns False (and removes the direct labels) when some label cannot be placed without
    overlapping another label or leaving the axes; the legend then carries the names alone.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    boxes: list[Any] = [artist.get_window_extent(renderer) for artist in obstacles]
    for p50, accuracy, _ in points:  # the markers themselves: a label must not cover another point
        x, y = ax.transData.transform((p50, accuracy))
        boxes.append(Bbox([[x - 7, y - 7], [x + 7, y + 7]]))
    # Beside the point (right, then left), then stepped up and down with a leader line.
    near = [(8, 6), (-8, 6)]
    offsets = near + [(sign * 14, dy) for k in range(1, 7) for dy in (-16 * k + 6, 16 * k + 6) for sign in (1, -1)]
    made = []
    for p50, accuracy, name in points:
        for dx, dy in offsets:
            note = ax.annotate(_safe(name), (p50, accuracy), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                               color=colours[name], va="center", ha="left" if dx > 0 else "right", zorder=6,
                               arrowprops=None if (dx, dy) in near else
                               {"arrowstyle": "-", "color": colours[name], "linewidth": 0.7, "shrinkA": 0, "shrinkB": 4})
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer)  # the text alone: its leader line may cross things
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in boxes):
                boxes.append(box)
                made.append(note)
                break
            note.remove()
        else:
            for note in made:
                note.remove()
            return False
    return True
