"""Display texts (what labels mean in words a child reads): validation, files, manifest round trip."""

from __future__ import annotations

import copy
import json

import pytest

from edgemm.bundle.display import (
    DISPLAY_FILE,
    Display,
    best_language,
    humanize,
    load_display_file,
    read_checkpoint_display,
)
from edgemm.bundle.manifest import Artifact, Manifest, TensorSpec
from edgemm.data.digit_match import DISPLAY, LABELS
from edgemm.errors import BundleError, DisplayError, InputPathError


def test_digit_match_defaults_cover_en_and_zh():
    display = Display.from_dict(DISPLAY, LABELS)
    assert list(display.languages) == ["en", "zh"]
    assert display.languages["en"].labels["match"].name == "Yes, that's right!"
    assert display.languages["zh"].labels["no_match"].message == "再看看图片。"
    assert Display.from_dict(display.to_dict(), LABELS) == display


@pytest.mark.parametrize(("change", "complaint"), [
    (lambda d: d["languages"]["zh"]["labels"].pop("match"), "leaves out ['match']"),
    (lambda d: d["languages"]["en"]["labels"].update(maybe={"name": "?", "message": "?"}), "does not have"),
    (lambda d: d["languages"]["en"].update(instruction="<b>Match?</b>"), "never HTML"),
    (lambda d: d["languages"]["en"].update(instruction="x" * 161), "at most 160"),
    (lambda d: d["languages"]["en"]["labels"]["match"].update(name="Yes\nno"), "control"),
    (lambda d: d["languages"]["en"]["labels"]["match"].update(name="\u202eoN"), "bidi"),
    (lambda d: d["languages"]["en"]["labels"]["match"].update(name="  "), "is empty"),
    (lambda d: d["languages"]["en"]["labels"]["match"].update(name=3), "must be text"),
    (lambda d: d["languages"]["en"]["labels"]["match"].update(emoji="x"), "unknown keys"),
    (lambda d: d["languages"].update({"english!": d["languages"]["en"]}), "not a language tag"),
    (lambda d: d["languages"].update({"EN": d["languages"]["en"]}), "twice"),
    (lambda d: d.update(default_language="fr"), "not one of the declared"),
    (lambda d: d.update(languages={}), "no language"),
    (lambda d: d.update(colour="red"), "unknown keys"),
])
def test_invalid_display_texts_are_refused(change, complaint):
    data = copy.deepcopy(DISPLAY)
    change(data)
    with pytest.raises(DisplayError, match=complaint.replace("[", r"\[").replace("?", r"\?")) as err:
        Display.from_dict(data, LABELS)
    assert err.value.exit_code == 2 and err.value.hint


def test_language_choice_follows_the_browser():
    declared = ["en", "zh"]
    assert best_language(["zh-CN", "en-US"], declared, "en") == "zh"
    assert best_language(["fr-FR", "en-GB"], declared, "en") == "en"
    assert best_language(["fr"], declared, "en") == "en"
    assert best_language(["ZH-tw"], ["en", "zh-TW", "zh-CN"], "en") == "zh-TW"
    assert Display.from_dict(DISPLAY, LABELS).choose_language(["de"]) == "en"


def test_humanized_labels():
    assert humanize("no_match") == "No match"
    assert humanize("not-a-cat") == "Not a cat"
    assert humanize("match") == "Match"


def test_display_files_json_and_toml(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(DISPLAY, ensure_ascii=False), encoding="utf-8")
    assert load_display_file(tmp_path / "d.json", LABELS) == Display.from_dict(DISPLAY, LABELS).to_dict()
    (tmp_path / "d.toml").write_text('[languages.en]\ninstruction = "Match?"\n'
                                     'labels.match = { name = "Yes", message = "Good" }\n'
                                     'labels.no_match = { name = "No", message = "Again" }\n', encoding="utf-8")
    assert load_display_file(tmp_path / "d.toml", LABELS)["default_language"] == "en"
    (tmp_path / "bad.toml").write_text("languages = [", encoding="utf-8")
    with pytest.raises(DisplayError, match="not readable TOML"):
        load_display_file(tmp_path / "bad.toml")
    with pytest.raises(InputPathError):
        load_display_file(tmp_path / "missing.json")
    assert read_checkpoint_display(tmp_path) is None
    (tmp_path / DISPLAY_FILE).write_text(json.dumps(DISPLAY), encoding="utf-8")
    assert read_checkpoint_display(tmp_path) == DISPLAY


def _manifest_dict() -> dict:
    return Manifest(
        name="digit-match", task="classification",
        modalities={"image": {"required": True, "inputs": ["pixel_values"], "presence_input": None}},
        inputs=[TensorSpec("pixel_values", "float32", ["batch", 1, 8, 8], {"batch": [1, 1, 8]})],
        outputs=[TensorSpec("logits", "float32", ["batch", 2])], preprocessing={},
        postprocessing={"type": "softmax", "output": "logits"},
        artifacts=[Artifact("fp32", "model/fp32.onnx", "onnx", "fp32", ["model/fp32.onnx"])], labels=list(LABELS),
    ).to_dict()


def test_manifest_round_trip_and_tampering():
    data = _manifest_dict()
    plain = Manifest.from_dict(data)
    assert plain.display_texts() is None and "display" not in plain.to_dict()  # manifests without it unchanged
    data["display"] = copy.deepcopy(DISPLAY)
    manifest = Manifest.from_dict(data)
    assert manifest.display_texts().languages["zh"].labels["match"].name == "对了！"
    assert Manifest.from_json(manifest.to_json()).display == manifest.display
    data["display"]["languages"]["en"]["labels"]["match"]["name"] = "<script>alert(1)</script>"
    with pytest.raises(BundleError, match="display texts are invalid"):
        Manifest.from_dict(data)


def test_training_writes_the_builtin_task_words(tmp_path):
    from edgemm.data.resolve import training_display
    from edgemm.train.trainer import checked_display

    assert checked_display("digit-match", LABELS) == Display.from_dict(DISPLAY, LABELS).to_dict()
    assert training_display(str(tmp_path)) is None
    (tmp_path / "display.json").write_text(json.dumps({"languages": {"en": {"instruction": "Cat?", "labels": {
        "cat": {"name": "A cat", "message": "Meow"}}}}}), encoding="utf-8")
    assert checked_display(str(tmp_path), ["cat"])["languages"]["en"]["labels"]["cat"]["name"] == "A cat"
    with pytest.raises(DisplayError, match="leaves out"):
        checked_display(str(tmp_path), ["cat", "dog"])


def test_a_huge_display_file_is_refused_by_its_size(tmp_path, monkeypatch):
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as fh:  # sparse: 2 GB on paper, nothing on disk
        fh.truncate(2 * 1024**3)
    read = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: read.append(a[0]) or real_open(*a, **k))
    with pytest.raises(DisplayError, match="larger than 1 MiB"):
        load_display_file(huge, LABELS)
    assert str(huge) not in map(str, read)  # refused by stat, not a byte read
