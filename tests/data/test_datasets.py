"""digit-match generation and the dataset loader (CSV / JSONL, validation errors)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from edgemm.data import SPLITS, load_dataset
from edgemm.data.dataset import DatasetError
from edgemm.data.digit_match import CHINESE, DigitMatchConfig, espeak_available, generate
from edgemm.errors import InputPathError


def test_digit_match_is_balanced_split_by_scan_and_multilingual(digit_match):
    scans = {split: {r.meta["scan"] for r in digit_match.split(split)} for split in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not scans[a] & scans[b], f"{a} and {b} share scans"
    assert sum(len(s) for s in scans.values()) == 1797
    for split in SPLITS:
        records = digit_match.split(split)
        counts = Counter(r.label for r in records)
        assert counts["match"] == counts["no_match"] > 0
        assert all((r.label == "match") == (r.meta["drawn"] == r.meta["said"]) for r in records)
    texts = [r.text for r in digit_match.records]
    assert any(t.isdigit() for t in texts) and any(any(c in CHINESE for c in t) for t in texts)
    assert any(t.startswith("I think") for t in texts)
    assert len(digit_match.split("test")) >= 700


def test_digit_match_audio_when_espeak_exists(digit_match):
    if not espeak_available():
        pytest.skip("espeak-ng is not installed: digit-match is generated without spoken answers")
    assert "audio" in digit_match.modalities
    assert all(r.audio is not None and r.audio.is_file() for r in digit_match.records[:50])


def test_generation_is_deterministic(tmp_path):
    a = generate(tmp_path / "a", DigitMatchConfig(seed=3, audio=False))
    b = generate(tmp_path / "b", DigitMatchConfig(seed=3, audio=False))
    c = generate(tmp_path / "c", DigitMatchConfig(seed=4, audio=False))
    for split in SPLITS:
        assert (a / f"{split}.jsonl").read_bytes() == (b / f"{split}.jsonl").read_bytes()
    assert (a / "test.jsonl").read_bytes() != (c / "test.jsonl").read_bytes()
    assert not list(tmp_path.glob(".*partial*"))


@pytest.fixture
def small(tmp_path, digit_match):
    """A small user dataset in JSONL + CSV form, pointing at real digit scans."""
    folder = tmp_path / "mine"
    (folder / "imgs").mkdir(parents=True)
    rows = []
    for i, r in enumerate(digit_match.split("train")[:12]):
        shutil.copy(r.image, folder / "imgs" / f"{i}.png")
        rows.append({"text": r.text, "image": f"imgs/{i}.png", "label": r.label, "split": SPLITS[i % 4]})
    (folder / "data.jsonl").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in rows) + "\n", encoding="utf-8")
    (folder / "data.csv").write_text("text,image,label,split\n" + "\n".join(
        f"\"{x['text']}\",{x['image']},{x['label']},{x['split']}" for x in rows) + "\n", encoding="utf-8")
    return folder


def test_user_data_jsonl_and_csv(small):
    a = load_dataset(small / "data.jsonl")
    b = load_dataset(small / "data.csv")
    assert a.modalities == b.modalities == ["text", "image"]
    assert [r.text for r in a.records] == [r.text for r in b.records]
    assert a.labels == ["match", "no_match"] and len(a.split("calibration")) == 3
    assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("content, match", [
    ("", "empty"),
    ('{"text": "7", "image": "imgs/0.png"}\n', "no 'label'"),
    ('{"label": "match", "colour": "red"}\n', "none of the columns"),
    ('{"text": "7", "label": "match", "colour": "red"}\n', "unknown columns"),
    ('{"text": "7", "image": "imgs/missing.png", "label": "match"}\n', "does not exist"),
    ('{"text": "7", "label": "match", "split": "holdout"}\n', "unknown split"),
    ('{"text": "7", "label": "match"}\n', "at least two"),
    ("not json\n", "not valid JSON"),
])
def test_bad_data_is_a_clear_error(small, content, match):
    path = small / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset(path)
    assert info.value.exit_code == 2


def test_label_mismatch_and_small_splits(small, tmp_path):
    data = load_dataset(small / "data.jsonl")
    with pytest.raises(DatasetError, match="does not know"):
        data.check_labels(["cat", "dog"])
    with pytest.raises(DatasetError, match="calibration split has 3 records"):
        data.require_split("calibration", minimum=32, purpose="calibration")
    with pytest.raises(InputPathError):
        load_dataset(tmp_path / "nothing-here")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DatasetError, match="holds no"):
        load_dataset(tmp_path / "emptydir")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DatasetError, match="unknown data format"):
        load_dataset(tmp_path / "x.parquet")
