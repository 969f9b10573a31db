"""Entity grouping as transformers' token-classification pipeline does it ("simple"). Torch-free;
the end-to-end comparison with the pipeline itself is in tests/models/test_hf_token.py."""

from __future__ import annotations

import numpy as np

from edgemm.runtime.entities import entities_from_logits, split_tag
from edgemm.runtime.preprocess.text import TokenAlignment

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "MISC"]


def _alignment(text, pieces, special=None, unk=None):
    """pieces: (token, start, end); [CLS]/[SEP] around them."""
    tokens = ["[CLS]", *[p[0] for p in pieces], "[SEP]"]
    offsets = [(0, 0), *[(p[1], p[2]) for p in pieces], (0, 0)]
    ids = [101, *[(100 if unk == i else 1000 + i) for i in range(len(pieces))], 102]
    flags = special or [True, *[False] * len(pieces), True]
    return TokenAlignment(text=text, ids=ids, tokens=tokens, offsets=offsets, special=flags,
                          decode=lambda toks: " ".join(toks).replace(" ##", ""))


def _logits(tags):
    out = np.full((len(tags), len(LABELS)), -4.0)
    for row, tag in enumerate(tags):
        out[row, LABELS.index(tag)] = 4.0
    return out


def test_b_i_grouping_offsets_and_mean_score():
    text = "Ada Lovelace lives in New York"
    pieces = [("ada", 0, 3), ("love", 4, 8), ("##lace", 8, 12), ("lives", 13, 18), ("in", 19, 21),
              ("new", 22, 25), ("york", 26, 30)]
    tags = ["O", "B-PER", "I-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"]
    logits = _logits(tags)
    logits[2, 2] = 2.0  # a less confident sub-token lowers the group's mean score
    got = entities_from_logits(logits, _alignment(text, pieces), LABELS)
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == [
        ("PER", "ada lovelace", 0, 12), ("LOC", "new york", 22, 30)]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert abs(got[0]["score"] - probs[1:4].max(-1).mean()) < 1e-12


def test_b_starts_a_new_group_and_unprefixed_labels_continue():
    text = "Ada Bob Zed Zed"
    pieces = [("ada", 0, 3), ("bob", 4, 7), ("[UNK]", 8, 11), ("zed", 12, 15)]
    got = entities_from_logits(_logits(["O", "B-PER", "B-PER", "MISC", "MISC", "O"]),
                               _alignment(text, pieces, unk=2), LABELS, unk_token_id=100)
    assert [(e["entity_group"], e["word"]) for e in got] == [("PER", "ada"), ("PER", "bob"), ("MISC", "Zed zed")]
    assert split_tag("B-LOC") == ("B", "LOC") and split_tag("MISC") == ("I", "MISC")


def test_special_and_padding_positions_are_skipped():
    text = "Paris"
    alignment = _alignment(text, [("paris", 0, 5)])
    padded = TokenAlignment(text=text, ids=[*alignment.ids, 0, 0], tokens=[*alignment.tokens, "[PAD]", "[PAD]"],
                            offsets=[*alignment.offsets, (0, 0), (0, 0)], special=[*alignment.special, True, True],
                            decode=alignment.decode)
    got = entities_from_logits(_logits(["B-LOC", "B-LOC", "B-LOC", "B-LOC", "B-LOC"]), padded, LABELS)
    assert [(e["entity_group"], e["start"], e["end"]) for e in got] == [("LOC", 0, 5)]
    assert entities_from_logits(_logits(["O", "O", "O"]), alignment, LABELS) == []
