"""Writing a bench document to a report directory: bench.json, bench.csv, the PNGs and bench.html.

Kept apart from :mod:`edgemm.bench.report` (which reads documents) so that the plots and the page
import the document helpers and this module imports them, never the other way round.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from edgemm.bench.report import LATENCY_COLUMNS


def write_reports(document: dict[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    """Write ``bench.json``, ``bench.csv``, the PNG plots and ``bench.html`` into ``out``.

    What the plots could not show (matplotlib missing, nothing measured) becomes
    ``document["report_notes"]``, so the terminal table, ``bench.json`` and ``bench.html`` all say it.

    Args:
        document: A bench document (mutated: ``report_notes`` is set).
        out: The report directory (created).
        plots: Draw ``latency.png`` / ``pareto.png`` (needs matplotlib, the ``bench`` extra).

    Returns:
        The files written.
    """
    out.mkdir(parents=True, exist_ok=True)
    document.pop("report_notes", None)
    written = [out / "bench.json", out / "bench.csv"]
    # The measurements first: a plotting bug must never cost the run its results.
    (out / "bench.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(out / "bench.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=LATENCY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in document["latency"]:
            writer.writerow(row)
    images, notes = write_visuals(document, out, plots=plots, html=False)
    document["report_notes"] = notes
    (out / "bench.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    from edgemm.bench.html import write_html

    return written + images + [write_html(document, out / "bench.html", images=images)]


def write_visuals(document: dict[str, Any], out: Path, *, plots: bool = True,
                  html: bool = True) -> tuple[list[Path], list[str]]:
    """(Re)draw the PNGs and, with ``html``, ``bench.html`` from a document, leaving bench.json alone.

    ``benchmarks/render.py`` calls this on recorded results. Stale plots are removed first, so a
    plot that can no longer be drawn is never left behind looking current.

    Returns:
        (the files written, notes on plots that could not be drawn).
    """
    from edgemm.bench.plots import PLOTS_HINT, draw

    for name in PLOT_FILES:
        (out / name).unlink(missing_ok=True)
    if plots:
        images, notes = draw(document, out)
    else:
        images, notes = [], [f"plots not drawn: turned off for this report (they need {PLOTS_HINT})"]
    if not html:
        return images, notes
    from edgemm.bench.html import write_html

    document = {**document, "report_notes": notes}
    return [*images, write_html(document, out / "bench.html", images=images)], notes


PLOT_FILES = ("latency.png", "pareto.png")
