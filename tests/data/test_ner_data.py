"""Data formats for transformers text tasks: NER records (tokens + tags), VQA questions, and the
per-word tag ids the accuracy gate compares. Torch-free."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgemm.data.dataset import DatasetError, load_dataset
from edgemm.data.metrics import classification_metrics
from edgemm.data.ner import IGNORE, first_subtoken_labels, word_spans
from edgemm.runtime.preprocess.text import TextPreprocessor, text_preprocessing


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_ner_jsonl_and_csv(tmp_path):
    rows = [{"tokens": ["Ada", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"], "split": "test"},
            {"tokens": ["李明", "在", "北京"], "tags": ["B-PER", "O", "B-LOC"]}]
    data = load_dataset(_write(tmp_path / "ner.jsonl", rows))
    assert data.token_level and data.labels == ["B-LOC", "B-PER", "O"]
    first = data.split("test")[0]
    assert first.text == "Ada lives in Paris" and first.tags == ("B-PER", "O", "O", "B-LOC")
    data.check_task("token_classification")
    with pytest.raises(DatasetError, match="token-level"):
        data.check_task("classification")
    csv = tmp_path / "ner.csv"
    csv.write_text("tokens,tags,split\nAda lives in Paris,B-PER O O B-LOC,test\nBob ran,B-PER O,train\n", encoding="utf-8")
    assert load_dataset(csv).split("test")[0].words == ("Ada", "lives", "in", "Paris")


@pytest.mark.parametrize("row, match", [
    ({"tokens": ["Ada", "x"], "tags": ["B-PER"]}, "2 tokens but 1 tags"),
    ({"tokens": ["New York"], "tags": ["B-LOC"]}, "whitespace"),
    ({"tokens": [], "tags": []}, "non-empty list"),
    ({"tokens": ["Ada"], "tags": ["B-PER"], "label": "x"}, "also"),
])
def test_bad_ner_records(tmp_path, row, match):
    with pytest.raises(DatasetError, match=match):
        load_dataset(_write(tmp_path / "bad.jsonl", [row]))


def test_mixed_kinds_refused_and_question_is_text(tmp_path):
    with pytest.raises(DatasetError, match="mixes"):
        load_dataset(_write(tmp_path / "mix.jsonl", [{"tokens": ["a"], "tags": ["O"]}, {"text": "a", "label": "x"}]))
    (tmp_path / "p.png").write_bytes(b"x")
    data = load_dataset(_write(tmp_path / "vqa.jsonl", [{"question": "How many cats?", "image": "p.png", "label": "2"},
                                                        {"question": "What colour?", "image": "p.png", "label": "red"}]))
    assert data.records[0].text == "How many cats?" and data.modalities == ["text", "image"]
    data.check_task("classification")
    with pytest.raises(DatasetError, match="one label per record"):
        data.check_task("token_classification")
    with pytest.raises(DatasetError, match="both"):
        load_dataset(_write(tmp_path / "both.jsonl", [{"question": "a", "text": "b", "label": "x"}]))


def test_first_subtoken_labels_follow_the_words(minilm_dir):
    section = text_preprocessing("tokenizer.json", max_length=32, pad_token_id=0, pad_token="[PAD]",
                                 token_type_ids="token_type_ids")
    pre = TextPreprocessor(minilm_dir, section)
    words = ["Wangari", "Maathai", "planted", "trees", "in", "Nairobi"]
    [alignment] = pre.alignments([" ".join(words)], pad_to=20)
    labels = first_subtoken_labels(alignment, word_spans(words), [1, 2, 0, 0, 0, 3])
    assert len(labels) == 20 and labels[0] == IGNORE and labels[-1] == IGNORE  # [CLS], padding
    assert [x for x in labels if x != IGNORE] == [1, 2, 0, 0, 0, 3]  # one per word, sub-words ignored
    assert len(alignment.tokens) > 2 + len(words)  # the names split into sub-words
    logits = np.zeros((1, 20, 4))
    logits[0, np.arange(20), np.array([max(x, 0) for x in labels])] = 1.0
    assert classification_metrics(np.array([labels]), logits)["accuracy"] == 1.0
