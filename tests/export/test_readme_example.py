"""The README's "Bring your own model" example, run verbatim.

The code blocks marked ``<!-- byom: NAME -->`` are extracted from README.md: the Python ones are
written to files of that name and run, the shell block runs through bash with the installed
``edgemm`` console script, in a fresh folder — exactly what a reader would do. The bundle's
answer is then compared with the PyTorch model the factory builds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import REPO

BLOCK = re.compile(r"<!-- byom: (?P<name>\S+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


def readme_blocks() -> dict[str, str]:
    """``name → code`` of every marked block of the README's Bring-your-own-model section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return {m["name"]: m["code"] for m in BLOCK.finditer(text)}


def test_the_readme_marks_the_whole_example():
    blocks = readme_blocks()
    assert set(blocks) == {"homework_model.py", "save_checkpoint.py", "shell", "predict.py"}
    assert "def forward(self, text, image):" in blocks["homework_model.py"]
    assert blocks["shell"].startswith("edgemm export --spec homework_model:build_for_export")


@pytest.fixture(scope="module")
def example(tmp_path_factory, minilm_dir):
    """A fresh folder in which the README's steps ran: checkpoint saved, bundle exported."""
    folder = tmp_path_factory.mktemp("byom")
    blocks = readme_blocks()
    (folder / "all-MiniLM-L6-v2").symlink_to(minilm_dir)  # the tokenizer the example starts from
    Image.new("L", (48, 48), 255).save(folder / "drawing.png")
    for name in ("homework_model.py", "save_checkpoint.py", "predict.py"):
        (folder / name).write_text(blocks[name], encoding="utf-8")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)  # the example's module is found in the working folder, as a reader's is
    saved = subprocess.run([sys.executable, "save_checkpoint.py"], cwd=folder, env=env, capture_output=True,
                           text=True, timeout=300)
    assert saved.returncode == 0, saved.stderr
    shell = subprocess.run(["bash", "-euo", "pipefail", "-c", blocks["shell"]], cwd=folder, env=env,
                           capture_output=True, text=True, timeout=900)
    assert shell.returncode == 0, shell.stdout + shell.stderr
    return folder, shell.stdout, env


def test_the_readme_example_exports_and_predicts_like_pytorch(example):
    folder, shell_out, env = example
    assert "parity   passed" in shell_out
    predicted = subprocess.run([sys.executable, "predict.py"], cwd=folder, env=env, capture_output=True, text=True,
                               timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    label = predicted.stdout.split()[0]
    assert label in ("wrong", "right", "unsure")
    assert any(line.startswith(f"{label}\t") for line in shell_out.splitlines())  # CLI and API agree

    sys.path.insert(0, str(folder))
    try:
        from homework_model import LABELS, build_for_export
    finally:
        sys.path.remove(str(folder))
    model = build_for_export(folder / "homework-checkpoint")[0].eval()  # as edgemm does
    from edgemm.runtime import Predictor

    with Predictor.load(folder / "homework.bundle", device="cpu") as predictor:
        texts = ["seven", "it is a seven", "我觉得是七", "", "the answer is eleven, I counted twice"]
        images = [str(folder / "drawing.png")] * len(texts)
        predictions = predictor.predict(text=texts, image=images)
        feed = predictor.preprocessor({"text": texts, "image": images})
    with torch.no_grad():
        logits = model(text={"input_ids": torch.from_numpy(feed["input_ids"]),
                             "attention_mask": torch.from_numpy(feed["attention_mask"])},
                       image=torch.from_numpy(feed["pixel_values"]))
    probs = torch.softmax(logits, -1).numpy()
    for row, prediction in zip(probs, predictions):
        assert [prediction.scores[name] for name in LABELS] == pytest.approx(row.tolist(), abs=1e-4)
