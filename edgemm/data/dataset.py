"""Load and validate multimodal datasets (CSV or JSONL) for training, gating and calibration.

Two kinds of record:

* **one label per example**: ``text`` (or ``question``, the text of a visual-question-answering
  example), ``image`` and ``audio`` (paths), ``label``;
* **token-level (NER)**: ``tokens`` (the words) and ``tags`` (one label per word, e.g. CoNLL's
  ``B-PER`` / ``I-PER`` / ``O``). The text is the words joined by single spaces; the accuracy gate
  compares the tag the model gives each word's first sub-token (:mod:`edgemm.data.ner`).

A dataset holds one kind only. Torch-free.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemm.errors import InputPathError, UsageError

SPLITS = ("train", "val", "calibration", "test")
MODALITY_COLUMNS = ("text", "image", "audio")
# Columns read as the text of a record (a VQA dataset's question).
TEXT_ALIASES = ("question",)
# The columns of a token-level (NER) record.
TOKEN_COLUMNS = ("tokens", "tags")
# Tasks whose data is token-level (see edgemm.bundle.manifest.TASKS).
TOKEN_TASKS = ("token_classification",)
_OTHER_COLUMNS = ("label", "split", "id", "meta")


class DatasetError(UsageError):
    """A dataset is empty, malformed, or does not fit the model."""

    code = "E_DATASET"


@dataclass(frozen=True)
class Record:
    """One example: raw inputs (paths are absolute after loading) and its label.

    Token-level (NER) records carry ``tags`` (one per word of ``words``), ``text`` (the words
    joined by spaces) and an empty ``label``.
    """

    label: str
    text: str | None = None
    image: Path | None = None
    audio: Path | None = None
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    words: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None

    def inputs(self, modalities: list[str]) -> dict[str, Any]:
        """Raw inputs of the given modalities (missing ones are ``None``)."""
        return {m: (str(getattr(self, m)) if m != "text" and getattr(self, m) is not None else getattr(self, m))
                for m in modalities}


@dataclass
class Dataset:
    """Records with their label set and the modalities present."""

    records: list[Record]
    labels: list[str]
    modalities: list[str]
    source: str

    @property
    def token_level(self) -> bool:
        """Whether the records are token-level (NER: words + tags)."""
        return any(r.tags is not None for r in self.records)

    def split(self, name: str) -> list[Record]:
        """Records of one split (``train``, ``val``, ``calibration``, ``test``)."""
        if name not in SPLITS:
            raise DatasetError(f"Unknown split {name!r}.", hint=f"Splits: {', '.join(SPLITS)}.")
        return [r for r in self.records if r.split == name]

    def require_split(self, name: str, *, minimum: int = 1, purpose: str = "this step") -> list[Record]:
        """Records of a split, refusing fewer than ``minimum``."""
        records = self.split(name)
        if len(records) < minimum:
            raise DatasetError(
                f"The {name} split has {len(records)} records; {purpose} needs at least {minimum}.",
                hint=f"Add records with split={name} (or a {name}.jsonl file) to {self.source}.",
            )
        return records

    def check_labels(self, model_labels: list[str]) -> None:
        """Refuse data whose labels (tags, for token-level data) the model does not know."""
        unknown = sorted(set(self.labels) - set(model_labels))
        if unknown:
            what = "tags" if self.token_level else "labels"
            raise DatasetError(
                f"The data has {what} the model does not know: {unknown} (model labels: {model_labels}).",
                hint="Use data made for this model, or retrain the model on these labels.",
            )

    def check_task(self, task: str) -> None:
        """Refuse token-level data for a per-example task, and per-example data for a token task."""
        if self.token_level and task not in TOKEN_TASKS:
            raise DatasetError(f"{self.source} is token-level data (tokens + tags), but the model's task is {task}.",
                               hint="Give data with one label per record (text / image / audio + label).")
        if not self.token_level and task in TOKEN_TASKS:
            raise DatasetError(f"The model tags every token ({task}), but {self.source} has one label per record.",
                               hint='Give JSONL records like {"tokens": ["Ada", "lives", "in", "Paris"], '
                                    '"tags": ["B-PER", "O", "O", "B-LOC"], "split": "test"}.')

    def fingerprint(self) -> str:
        """sha256 over the records (what a checkpoint was trained / gated on)."""
        digest = hashlib.sha256()
        for r in self.records:
            digest.update(json.dumps([r.split, r.label, r.text, str(r.image), str(r.audio)]).encode())
            if r.tags is not None:
                digest.update(json.dumps([list(r.words or ()), list(r.tags)]).encode())
        return digest.hexdigest()


def load_dataset(path: str | Path, *, labels: list[str] | None = None) -> Dataset:
    """Load a dataset from a CSV/JSONL file or a folder of per-split files.

    Args:
        path: ``data.jsonl`` / ``data.csv`` with a ``split`` column, or a folder holding
            ``train.jsonl``, ``val.jsonl``, ``calibration.jsonl``, ``test.jsonl`` (or ``.csv``).
        labels: Label order to use (default: sorted labels found; tags for token-level data).

    Raises:
        InputPathError: The path does not exist.
        DatasetError: Empty data, wrong columns, missing files, unknown splits, bad labels,
            token-level and per-example records mixed.
    """
    root = Path(path)
    if not root.exists():
        raise InputPathError(f"Dataset {root} does not exist.", hint="Give a .jsonl/.csv file or a folder of split files.")
    files: list[tuple[Path, str | None]]
    if root.is_dir():
        files = [(f, split) for split in SPLITS for f in (root / f"{split}.jsonl", root / f"{split}.csv") if f.is_file()]
        if not files:
            raise DatasetError(f"{root} holds no train/val/calibration/test .jsonl or .csv files.",
                               hint="See README: Data format.")
        base = root
    else:
        files, base = [(root, None)], root.parent
    records: list[Record] = []
    for file, split in files:
        for line_no, row in _rows(file):
            records.append(_record(row, split, base, file, line_no))
    if not records:
        raise DatasetError(f"Dataset {root} is empty.", hint="Add at least one record per split.")
    token_level = [r.tags is not None for r in records]
    if any(token_level) and not all(token_level):
        raise DatasetError(f"Dataset {root} mixes token-level records (tokens + tags) with per-example records.",
                           hint="Keep NER data (tokens, tags) and classification data (label) in separate datasets.")
    modalities = [m for m in MODALITY_COLUMNS if any(getattr(r, m) is not None for r in records)]
    found = sorted({t for r in records for t in r.tags} if all(token_level) else {r.label for r in records})
    if labels is not None:
        unknown = sorted(set(found) - set(labels))
        if unknown:
            raise DatasetError(f"Labels {unknown} are not among {labels}.", hint="Fix the label column.")
        found = list(labels)
    if len(found) < 2:
        raise DatasetError(f"The data has only the label(s) {found}; a classifier needs at least two.")
    return Dataset(records=records, labels=found, modalities=modalities, source=str(root))


def _rows(file: Path):
    if file.suffix == ".jsonl":
        with open(file, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise DatasetError(f"{file.name}:{line_no} is not valid JSON: {exc}") from exc
                if not isinstance(row, dict):
                    raise DatasetError(f"{file.name}:{line_no} is not a JSON object.")
                yield line_no, row
    elif file.suffix == ".csv":
        with open(file, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise DatasetError(f"{file.name} has no header row.", hint="First line: text,image,audio,label")
            for line_no, row in enumerate(reader, 2):
                yield line_no, {k: (v if v != "" else None) for k, v in row.items() if k is not None}
    else:
        raise DatasetError(f"{file.name}: unknown data format {file.suffix!r}.", hint="Use .jsonl or .csv.")


def _record(row: dict[str, Any], split: str | None, base: Path, file: Path, line_no: int) -> Record:
    where = f"{file.name}:{line_no}"
    unknown = set(row) - {*MODALITY_COLUMNS, *TEXT_ALIASES, *TOKEN_COLUMNS, *_OTHER_COLUMNS}
    token_level = any(row.get(c) is not None for c in TOKEN_COLUMNS)
    if not token_level and ("label" not in row or row["label"] is None):
        raise DatasetError(f"{where} has no 'label' column.", hint="Columns: text, image, audio, label [, split].")
    text = None if token_level else _text(row, where)
    if not token_level and text is None and not any(row.get(m) is not None for m in ("image", "audio")):
        raise DatasetError(f"{where} has none of the columns text / image / audio (or question; tokens + tags).",
                           hint=f"Columns found: {sorted(row)}.")
    if unknown:
        raise DatasetError(f"{where} has unknown columns {sorted(unknown)}.",
                           hint="Columns: text (or question), image, audio, label, split, id, meta; "
                                "for NER: tokens, tags, split, id, meta.")
    row_split = split or row.get("split") or "train"
    if row_split not in SPLITS:
        raise DatasetError(f"{where}: unknown split {row_split!r}.", hint=f"Splits: {', '.join(SPLITS)}.")
    if token_level:
        return _token_record(row, row_split, where)
    paths: dict[str, Path | None] = {}
    for column in ("image", "audio"):
        value = row.get(column)
        if value is None:
            paths[column] = None
            continue
        full = (base / str(value)).resolve()
        if not full.is_file():
            raise DatasetError(f"{where}: {column} file {value!r} does not exist.",
                               hint=f"Paths are relative to {base}.")
        paths[column] = full
    return Record(label=str(row["label"]), text=text, image=paths["image"],
                  audio=paths["audio"], split=row_split, meta=dict(row.get("meta") or {}))


def _text(row: dict[str, Any], where: str) -> str | None:
    """The record's text: the ``text`` column, or ``question`` (VQA); not both."""
    given = [c for c in ("text", *TEXT_ALIASES) if row.get(c) is not None]
    if len(given) > 1:
        raise DatasetError(f"{where} has both {' and '.join(repr(c) for c in given)}; they are the same input.",
                           hint="Keep one: 'question' for visual question answering, 'text' otherwise.")
    return str(row[given[0]]) if given else None


def _token_record(row: dict[str, Any], split: str, where: str) -> Record:
    """A token-level (NER) record: ``tokens`` (words) and ``tags``, one per word."""
    extra = sorted(c for c in (*MODALITY_COLUMNS, *TEXT_ALIASES, "label") if row.get(c) is not None)
    if extra:
        raise DatasetError(f"{where} has tokens/tags and also {extra}; a token-level record is words and their tags.",
                           hint='Example: {"tokens": ["Ada", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}')
    words, tags = (_word_list(row.get(c), c, where) for c in TOKEN_COLUMNS)
    if len(words) != len(tags):
        raise DatasetError(f"{where} has {len(words)} tokens but {len(tags)} tags.", hint="Give exactly one tag per token.")
    # The text is the words joined by single spaces: a word with whitespace in it would split.
    bad = next((w for w in words if not w or any(ch.isspace() for ch in w)), None)
    if bad is not None:
        raise DatasetError(f"{where}: token {bad!r} is empty or contains whitespace.",
                           hint="Tokens are words: split a token with spaces into several.")
    return Record(label="", text=" ".join(words), split=split, meta=dict(row.get("meta") or {}),
                  words=tuple(words), tags=tuple(tags))


def _word_list(value: Any, column: str, where: str) -> list[str]:
    """A JSON list of strings, or (CSV) a string of space-separated items."""
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise DatasetError(f"{where}: '{column}' must be a non-empty list of strings (CSV: separated by spaces).",
                           hint='Example: {"tokens": ["Ada", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}')
    return value
