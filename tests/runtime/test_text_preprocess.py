"""The runtime tokenizer path gives exactly transformers' token ids (real MiniLM tokenizer)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from edgemm.errors import InputTooLargeError, InvalidInputError
from edgemm.models.processors import TOKENIZER_FILE, text_section, tokenizer_json
from edgemm.runtime.preprocess.text import TextPreprocessor

TEXTS = ["seven", "I think it is 7", "七", "ثلاثة 🙂", "", "  spaces   around  ", "A" * 300,
         "l'école, c'est génial — naïve café", "emoji family 👨‍👩‍👧 and skin 👍🏽", "\u202eright-to-left override"]


@pytest.fixture(scope="module")
def hf_and_runtime(minilm_dir, tmp_path_factory):
    hf = AutoTokenizer.from_pretrained(minilm_dir)
    folder = tmp_path_factory.mktemp("tok")
    (folder / "text").mkdir()
    (folder / TOKENIZER_FILE).write_bytes(tokenizer_json(hf))
    section = text_section(hf, TOKENIZER_FILE, 64)
    return hf, TextPreprocessor(folder, section), section


def test_token_ids_identical_to_transformers(hf_and_runtime):
    hf, runtime, _ = hf_and_runtime
    expected = hf(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    feed = runtime(TEXTS)
    np.testing.assert_array_equal(feed["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(feed["attention_mask"], expected["attention_mask"])
    for text in TEXTS:  # one at a time too (no padding)
        single = hf([text], truncation=True, max_length=64, return_tensors="np")
        np.testing.assert_array_equal(runtime([text])["input_ids"], single["input_ids"])


def test_pad_to_and_truncate(hf_and_runtime):
    _, runtime, section = hf_and_runtime
    feed = runtime(["seven", "A" * 300], pad_to=9)
    assert feed["input_ids"].shape == (2, 9)
    assert feed["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 6
    assert section["min_length"] == 2 and runtime([""])["input_ids"].shape == (1, 2)


def test_text_gates(hf_and_runtime):
    _, runtime, _ = hf_and_runtime
    with pytest.raises(InputTooLargeError):
        runtime(["x" * 100_000])
    with pytest.raises(InvalidInputError, match="UTF-8"):
        runtime([b"\xff\xfe invalid"])
    with pytest.raises(InvalidInputError, match="surrogate"):
        runtime(["\ud800"])
    with pytest.raises(InvalidInputError):
        runtime([42])
    assert runtime([b"seven"])["input_ids"].shape[0] == 1
