"""Tiny fine-tuned-looking transformers text directories, built offline (random weights).

Each architecture gets the tokenizer family it ships with, trained here on a small English +
Chinese corpus: WordPiece (BERT, DistilBERT, ELECTRA, MPNet, and a ``bert-base-chinese``-style
cased vocabulary), byte-level BPE (RoBERTa) and SentencePiece-style Unigram (XLM-R, DeBERTa-v2).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf
from tokenizers import (
    BertWordPieceTokenizer,
    ByteLevelBPETokenizer,
    SentencePieceUnigramTokenizer,
    processors,
)

# Real sentences, English and Chinese, short and long; some words and characters stay out of
# every vocabulary (unknown tokens) and many split into sub-words.
INPUTS = [
    "I loved this movie, the acting was wonderful.",
    "Terrible service, I will never come back.",
    "ok",
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
    "The children at the Nairobi kiosk counted to ten in under five minutes!",
    "Is the answer seven or eight?",
    "这部电影非常好看。",
    "服务太差了，我再也不会来了。",
    "李明在北京大学学习计算机科学。",
    "我不确定答案是不是七。",
    "Apple opened a new store in 上海 last year 🙂",
    "Zyxquv Blorft visited Wellington.",
]
CORPUS = [
    "i loved this movie the acting was wonderful and the story was great",
    "terrible service i will never come back to this place",
    "angela merkel met emmanuel macron in paris",
    "the children counted to ten in under five minutes at the kiosk",
    "is the answer seven or eight or maybe nine",
    "apple opened a new store in new york last year",
    "the weather in london is cold in winter",
    "这部电影非常好看", "服务太差了我再也不会来了", "李明在北京大学学习计算机科学",
    "我不确定答案是不是七", "今天天气很好", "上海和北京都是大城市",
] * 10
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
SENTIMENT_LABELS = ["negative", "positive"]
MAX_LEN = 64
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
ARCHITECTURES = ("bert", "bert-chinese", "distilbert", "roberta", "xlm-roberta", "electra", "mpnet", "deberta-v2")
_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _wordpiece(folder: Path, specials: list[str], *, lowercase: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=lowercase)
    corpus = CORPUS if lowercase else [*CORPUS, *(s.title() for s in CORPUS[:7])]
    trainer.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=specials)
    trainer.save_model(str(folder))
    return folder / "vocab.txt"


def _unigram(specials: list[str], unk: str, template: tuple[str, str]):
    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator(CORPUS, vocab_size=300, special_tokens=specials, unk_token=unk, show_progress=False)
    backend = trainer._tokenizer
    cls, sep = template
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))])
    return backend


def build_tokenizer(kind: str, work: Path) -> tf.PreTrainedTokenizerFast:
    """The fast tokenizer of architecture ``kind``, trained offline under ``work``."""
    common = {"model_max_length": MAX_LEN}
    if kind in ("bert", "distilbert", "electra"):
        cls = {"bert": tf.BertTokenizerFast, "distilbert": tf.DistilBertTokenizerFast, "electra": tf.ElectraTokenizerFast}[kind]
        return cls(vocab_file=str(_wordpiece(work / "wp", BERT_SPECIALS, lowercase=True)), **common)
    if kind == "bert-chinese":
        return tf.BertTokenizerFast(vocab_file=str(_wordpiece(work / "wp-zh", BERT_SPECIALS, lowercase=False)),
                                    do_lower_case=False, tokenize_chinese_chars=True, **common)
    if kind == "mpnet":
        vocab = _wordpiece(work / "wp-mpnet", ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"], lowercase=True)
        return tf.MPNetTokenizerFast(vocab_file=str(vocab), **common)
    if kind == "roberta":
        folder = work / "bpe"
        folder.mkdir(parents=True, exist_ok=True)
        trainer = ByteLevelBPETokenizer()
        trainer.train_from_iterator(CORPUS, vocab_size=500, min_frequency=1, special_tokens=ROBERTA_SPECIALS,
                                    show_progress=False)
        trainer.save_model(str(folder))
        return tf.RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                                       **common)
    if kind == "xlm-roberta":
        backend = _unigram(ROBERTA_SPECIALS, "<unk>", ("<s>", "</s>"))
        return tf.XLMRobertaTokenizerFast(tokenizer_object=backend, **common)
    if kind == "deberta-v2":
        backend = _unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "[UNK]", ("[CLS]", "[SEP]"))
        return tf.DebertaV2TokenizerFast(tokenizer_object=backend, **common)
    raise ValueError(kind)


def build_config(kind: str, tokenizer: tf.PreTrainedTokenizerFast, labels: list[str], **extra) -> tf.PretrainedConfig:
    """A tiny config of architecture ``kind`` with ``labels`` as ``id2label``."""
    heads = {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}, **extra}
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id
    if kind in ("bert", "bert-chinese"):
        return tf.BertConfig(vocab_size=vocab, max_position_embeddings=MAX_LEN, pad_token_id=pad, **_SMALL, **heads)
    if kind == "distilbert":
        return tf.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                   max_position_embeddings=MAX_LEN, pad_token_id=pad, **heads)
    if kind in ("roberta", "xlm-roberta"):
        cls = tf.RobertaConfig if kind == "roberta" else tf.XLMRobertaConfig
        return cls(vocab_size=vocab, max_position_embeddings=MAX_LEN + pad + 1, pad_token_id=pad, type_vocab_size=1,
                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **_SMALL, **heads)
    if kind == "electra":
        return tf.ElectraConfig(vocab_size=vocab, embedding_size=16, max_position_embeddings=MAX_LEN, pad_token_id=pad,
                                **_SMALL, **heads)
    if kind == "mpnet":
        return tf.MPNetConfig(vocab_size=vocab, max_position_embeddings=MAX_LEN + pad + 1, pad_token_id=pad,
                              **_SMALL, **heads)
    if kind == "deberta-v2":
        return tf.DebertaV2Config(vocab_size=vocab, max_position_embeddings=MAX_LEN, pad_token_id=pad,
                                  relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
                                  max_relative_positions=-1, position_biased_input=False, type_vocab_size=0,
                                  **_SMALL, **heads)
    raise ValueError(kind)


def save_model(folder: Path, kind: str, *, token_level: bool, labels: list[str] | None = None, seed: int = 0,
               **config_extra) -> Path:
    """Save a tiny random-weight ``kind`` task model and its tokenizer to ``folder``."""
    tokenizer = build_tokenizer(kind, folder.parent / f"{folder.name}-vocab")
    labels = labels or (NER_LABELS if token_level else SENTIMENT_LABELS)
    config = build_config(kind, tokenizer, labels, **config_extra)
    head = "ForTokenClassification" if token_level else "ForSequenceClassification"
    prefix = {"bert": "Bert", "bert-chinese": "Bert", "distilbert": "DistilBert", "roberta": "Roberta",
              "xlm-roberta": "XLMRoberta", "electra": "Electra", "mpnet": "MPNet", "deberta-v2": "DebertaV2"}[kind]
    torch.manual_seed(seed)
    model = getattr(tf, prefix + head)(config).eval()
    with torch.no_grad():  # a trained head is confident: spread its logits beyond a random init's
        for name, param in model.named_parameters():
            if "classifier" in name and name.endswith("weight"):
                param.mul_(5.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def export_cli(source: Path, output: Path, *extra: str) -> dict:
    """``edgemm export SOURCE -o OUTPUT --json`` in-process (no flags beyond the output)."""
    import json

    from click.testing import CliRunner

    from edgemm.cli import cli

    result = CliRunner().invoke(cli, ["export", str(source), "-o", str(output), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- held-out data --------------------------------------------------------------------------

_POSITIVE = ["I loved {}", "{} was wonderful", "what a great {}", "{} made me very happy", "I really enjoyed {}",
             "{} is the best I have seen", "highly recommend {}", "{} was fun and clear"]
_NEGATIVE = ["I hated {}", "{} was terrible", "what an awful {}", "{} made me very sad", "I really disliked {}",
             "{} is the worst I have seen", "never again {}", "{} was boring and confusing"]
_SUBJECTS = ["this movie", "the service", "the lesson", "the kiosk", "the story", "the food", "the teacher",
             "the game", "the book", "the museum"]


def sentiment_records() -> list[dict]:
    """Templated positive / negative sentences with splits: 60 test, 24 calibration, the rest train."""
    rows = [{"text": t.format(s), "label": label} for label, templates in (("positive", _POSITIVE), ("negative", _NEGATIVE))
            for t in templates for s in _SUBJECTS]
    rows = [rows[i] for i in torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()]
    for i, row in enumerate(rows):
        row["split"] = "test" if i < 60 else "calibration" if i < 84 else "train"
    return rows


_PEOPLE = [["Angela", "Merkel"], ["Li", "Ming"], ["Ada", "Lovelace"], ["Wangari", "Maathai"], ["Kofi", "Annan"]]
_PLACES = [["Paris"], ["Nairobi"], ["New", "York"], ["Beijing"], ["Wellington"], ["London"]]
_ORGS = [["Apple"], ["Peking", "University"], ["United", "Nations"], ["Red", "Cross"]]


def _span(words: list[str], tag: str) -> list[str]:
    return [f"B-{tag}"] + [f"I-{tag}"] * (len(words) - 1)


def ner_records() -> list[dict]:
    """CoNLL-style records (tokens + tags) with splits: 60 test, 20 calibration, the rest train."""
    rows = []
    for i in range(100):
        person, place, org = _PEOPLE[i % 5], _PLACES[i % 6], _ORGS[i % 4]
        if i % 3 == 0:
            tokens = [*person, "visited", *place, "on", "Tuesday", "."]
            tags = [*_span(person, "PER"), "O", *_span(place, "LOC"), "O", "O", "O"]
        elif i % 3 == 1:
            tokens = [*person, "works", "for", "the", *org, "in", *place]
            tags = [*_span(person, "PER"), "O", "O", "O", *_span(org, "ORG"), "O", *_span(place, "LOC")]
        else:
            tokens = ["The", *org, "opened", "an", "office", "in", *place, "last", "year"]
            tags = ["O", *_span(org, "ORG"), "O", "O", "O", "O", *_span(place, "LOC"), "O", "O"]
        rows.append({"tokens": tokens, "tags": tags, "split": "test" if i < 60 else "calibration" if i < 80 else "train"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a JSONL file at ``path``."""
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
