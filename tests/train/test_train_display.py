"""Display words set at train time: ``edgemm train`` writes them beside the checkpoint, export reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgemm.bundle.display import DISPLAY_FILE
from edgemm.errors import DisplayError

DISPLAY_TOML = """\
[languages.en]
instruction = "Is this a happy sentence?"
labels.positive = { name = "Happy", message = "That sounds nice!" }
labels.negative = { name = "Not happy", message = "That sounds sad." }

[languages.zh]
instruction = "这句话开心吗？"
labels.positive = { name = "开心", message = "听起来不错！" }
labels.negative = { name = "不开心", message = "听起来有点难过。" }
"""


def _dataset(root: Path, display: str | None) -> Path:
    root.mkdir(parents=True)
    words = {"positive": ["great", "lovely", "fun"], "negative": ["awful", "dull", "sad"]}
    for split, n in (("train", 12), ("val", 4)):
        rows = [{"text": f"it was {words[label][i % 3]}", "label": label}
                for i in range(n) for label in ("positive", "negative")]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if display is not None:
        (root / "display.toml").write_text(display, encoding="utf-8")
    return root


def test_train_writes_display_words_and_export_reads_them(tmp_path, minilm_dir):
    from transformers import AutoTokenizer

    from edgemm.export.pipeline import ExportOptions, _display_texts
    from edgemm.export.sources import load_source
    from edgemm.train.trainer import TrainConfig, train
    from tests.factories import tiny_text_dir

    text = tiny_text_dir(tmp_path / "tiny-text", AutoTokenizer.from_pretrained(minilm_dir))
    data = _dataset(tmp_path / "data", DISPLAY_TOML)
    report = train(TrainConfig(output=tmp_path / "ckpt", data=str(data), text=str(text), image=None, epochs=1,
                               lora=None, text_max_length=16))
    written = json.loads((report.checkpoint / DISPLAY_FILE).read_text(encoding="utf-8"))
    assert written["languages"]["zh"]["labels"]["positive"]["name"] == "开心"
    # What export puts into the manifest without --display (the whole export runs in tests/serve/test_kiosk_page.py).
    loaded = load_source(report.checkpoint, None, ExportOptions())
    assert _display_texts(ExportOptions(), report.checkpoint, loaded.spec) == written
    override = {"languages": {"en": {"instruction": "Happy?", "labels": {
        "positive": {"name": "Yes", "message": "Nice"}, "negative": {"name": "No", "message": "Sad"}}}}}
    assert _display_texts(ExportOptions(display=override), report.checkpoint, loaded.spec)["languages"] == \
        override["languages"]  # --display wins over the checkpoint's words


def test_train_refuses_display_words_that_leave_out_a_label_before_training(tmp_path):
    from edgemm.train.trainer import TrainConfig, train

    broken = DISPLAY_TOML.replace('labels.negative = { name = "不开心", message = "听起来有点难过。" }\n', "")
    data = _dataset(tmp_path / "data", broken)
    with pytest.raises(DisplayError, match=r"languages\.zh\.labels leaves out \['negative'\]"):
        train(TrainConfig(output=tmp_path / "ckpt", data=str(data), text="bert-does-not-matter", image=None))
    assert not (tmp_path / "ckpt").exists()
