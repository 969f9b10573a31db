"""``bench.html`` and the plots, built from a recorded suite: self-contained, escaped, noise flagged,
honest when matplotlib is missing, and rendered by real headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgemm.bench.files import write_reports, write_visuals
from edgemm.bench.html import render_html
from edgemm.bench.plots import contender_colours
from edgemm.bench.report import noise_flags, table
from tests.browser import CHROMIUM, launch
from tests.conftest import REPO

RECORDED = REPO / "benchmarks" / "results" / "cpu-intel-r-xeon-r-2c" / "reference-cpu" / "bench.json"
ARTIFACTS = REPO / "tests" / "artifacts" / "bench"
HOSTILE = '<script>alert("x")</script>&$\\frac{1}{0}$'


@pytest.fixture()
def recorded(tmp_path) -> Path:
    """A copy of a recorded suite's bench.json in its own folder (the recording stays untouched)."""
    folder = tmp_path / "reference-cpu"
    folder.mkdir()
    shutil.copy(RECORDED, folder / "bench.json")
    return folder


def _doc(folder: Path) -> dict:
    return json.loads((folder / "bench.json").read_text(encoding="utf-8"))


def _noisy_row(doc: dict) -> dict:
    row = next(r for r in doc["latency"] if r["contender"] == "edgemm:fp32" and r["mode"] == "model" and r["batch"] == 8)
    row.update(p50_ms=24.0, p90_ms=30.0, p99_ms=797.0)
    return row


def test_recorded_suite_renders_a_self_contained_page(recorded):
    before = (recorded / "bench.json").read_bytes()
    files, notes = write_visuals(_doc(recorded), recorded)
    assert {f.name for f in files} == {"latency.png", "pareto.png", "bench.html"}
    assert (recorded / "bench.json").read_bytes() == before  # regenerating never rewrites the recording
    page = (recorded / "bench.html").read_text(encoding="utf-8")
    # Nothing outside the page: no remote src/href, no fonts, no scripts, no CSS imports.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert "@import" not in page and "@font-face" not in page and "<script" not in page.lower()
    assert not re.search(r"url\((?!data:)", page)
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    # The tables, the machine, the targets and the notes.
    for needle in ("Latency", "Accuracy", "Cold start", "Speed-up over the peers", "Targets", "Machine", "Notes",
                   "Intel(R) Xeon(R) Processor", "avx512_vnni", "onnxruntime 1.31.1", "speedup_vs_torch_eager",
                   "edgemm:int8-text", "torch-compile", "0.455", "met"):
        assert needle in page, needle
    # The accuracy axis had nothing to separate: the plot says so, and so do the notes.
    assert "all contenders equal on 718 records" in page and any("718 records" in n for n in notes)
    # The recording's long e2e tails are flagged, in the table and the notes.
    assert "noisy: p99 is 5.4× p50 (14.9 ms vs 2.79 ms)" in page
    assert page.count('class="badge noisy"') == len(noise_flags(_doc(recorded))) > 0


def test_colours_are_one_per_contender_and_stable():
    doc = json.loads(RECORDED.read_text(encoding="utf-8"))
    colours = contender_colours(doc)
    assert set(colours) >= {c["name"] for c in doc["contenders"]}
    assert len(set(colours.values())) == len(colours)
    assert colours["torch-eager"] == "#dc2626" and colours["optimum"] == "#16a34a"
    # A peer keeps its colour whichever artifacts a bundle has.
    doc["contenders"] = [c for c in doc["contenders"] if c["name"] != "edgemm:fp32"]
    assert contender_colours(doc)["torch-eager"] == colours["torch-eager"]


def test_hostile_contender_name_is_escaped_everywhere(recorded):
    doc = _doc(recorded)
    text = json.dumps(doc).replace("edgemm:int8-text", "edgemm:" + HOSTILE.replace("\\", "\\\\").replace('"', '\\"'))
    doc = json.loads(text)
    doc["suite"] = "<b>suite</b>"
    files, _ = write_visuals(doc, recorded)  # matplotlib must not choke on "$…$" either
    page = (recorded / "bench.html").read_text(encoding="utf-8")
    assert "latency.png" in {f.name for f in files}
    assert "<script>" not in page and "<b>suite</b>" not in page
    assert "edgemm:&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;$" in page
    assert "&lt;b&gt;suite&lt;/b&gt;" in page


def test_noise_is_flagged_in_table_page_and_notes(recorded):
    doc = _doc(recorded)
    row = _noisy_row(doc)
    contended = dict(row, load="contended", p99_ms=2000.0)  # slow on purpose: never "noisy"
    rounds = dict(row, batch=32, p50_ms=10.0, p99_ms=12.0, round_p50_ms=[9.0, 10.0, 13.0])
    doc["latency"] += [contended]
    doc["latency"] = [r for r in doc["latency"] if not (r["contender"] == "edgemm:fp32" and r["mode"] == "model"
                                                        and r["batch"] == 32)] + [rounds]
    message = "noisy: p99 is 33× p50 (797 ms vs 24 ms) — another process likely interfered; rerun on a quiet machine"
    flags = noise_flags(doc)
    assert any(f["message"] == message for f in flags)
    assert not any(f["key"][4] == "contended" for f in flags)
    spread = next(f for f in flags if f["kind"] == "rounds")
    assert spread["batch"] == 32 and "moved 40 % between rounds (9 ms to 13 ms)" in spread["message"]
    text = table(doc)
    line = next(x for x in text.splitlines() if x.startswith("edgemm:fp32") and " model " in x and "  797.00" in x)
    assert line.endswith("noisy")
    assert f"note      edgemm:fp32 model only, batch 8: {message}" in text
    page = render_html(doc)
    assert message in page


def test_plots_missing_is_said_not_silent(recorded):
    """matplotlib blocked at import: every report says why there are no plots and how to get them."""
    code = f"""
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'matplotlib':
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Blocker())
import json
from pathlib import Path
from edgemm.bench.files import write_reports
from edgemm.bench.report import table
out = Path({str(recorded)!r})
doc = json.loads((out / 'bench.json').read_text())
files = write_reports(doc, out / 'report')
print(table(doc))
print(sorted(f.name for f in files))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "note      plots not drawn: matplotlib cannot be imported" in result.stdout
    assert "pip install 'edgemm[bench]'" in result.stdout
    assert "['bench.csv', 'bench.html', 'bench.json']" in result.stdout
    report = recorded / "report"
    assert "plots not drawn" in " ".join(json.loads((report / "bench.json").read_text())["report_notes"])
    page = (report / "bench.html").read_text(encoding="utf-8")
    assert 'class="note-box">plots not drawn: matplotlib cannot be imported' in page
    assert "pip install &#x27;edgemm[bench]&#x27;" in page


def test_nothing_to_plot_is_said(recorded):
    doc = _doc(recorded)
    for row in doc["latency"]:
        row.update(n=0, error="RuntimeError: no such provider")
    doc["accuracy"]["rows"] = []
    files = write_reports(doc, recorded / "failed")
    assert {f.name for f in files} == {"bench.json", "bench.csv", "bench.html"}
    notes = " ".join(doc["report_notes"])
    assert "latency.png not drawn: no latency cell was measured" in notes and "pareto.png not drawn" in notes
    assert "failed" in (recorded / "failed" / "bench.html").read_text(encoding="utf-8")


def test_many_batch_sizes_and_separated_accuracies(recorded):
    """Past four batch sizes latency becomes lines; unequal accuracies draw a Pareto front, no 'equal' note."""
    doc = _doc(recorded)
    extra = []
    for batch in (2, 4, 16):
        for row in doc["latency"]:
            if row["batch"] == 8:
                extra.append(dict(row, batch=batch, p50_ms=row["p50_ms"] * batch / 8, p99_ms=row["p99_ms"] * batch / 8))
    doc["latency"] += extra
    doc["config"]["batch_sizes"] = [1, 2, 4, 8, 16, 32]
    for i, row in enumerate(doc["accuracy"]["rows"]):
        row["accuracy"] -= 0.004 * i
    files, notes = write_visuals(doc, recorded)
    assert {"latency.png", "pareto.png"} <= {f.name for f in files}
    assert not any("equal" in n for n in notes)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_bench_html_in_headless_chromium(recorded):
    """The page as a reader sees it: every image decodes, nothing is fetched; the screenshot is kept."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    write_visuals(_doc(recorded), recorded)
    url = (recorded / "bench.html").as_uri()
    requested: list[str] = []
    failed: list[str] = []
    errors: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "bench-html.png"
    with sync_api.sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda req: requested.append(req.url))
            page.on("requestfailed", lambda req: failed.append(req.url))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(url, wait_until="load")
            sizes = page.evaluate("() => [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            assert len(sizes) == 2 and all(done and w > 300 and h > 200 for done, w, h in sizes), sizes
            assert page.locator("h1").inner_text().startswith("edgemm bench — reference-cpu")
            assert page.locator("table").count() >= 5
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not failed and not errors, (failed, errors)
    assert all(u == url or u.startswith("data:") for u in requested), requested
    assert shot.stat().st_size > 50_000
