"""Load and validate multimodal datasets (CSV or JSONL) for training, gating and calibration."""

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


class DatasetError(UsageError):
    """A dataset is empty, malformed, or does not fit the model."""

    code = "E_DATASET"


@dataclass(frozen=True)
class Record:
    """One example: raw inputs (paths are absolute after loading) and its label."""

    label: str
    text: str | None = None
    image: Path | None = None
    audio: Path | None = None
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

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
        """Refuse data whose labels the model does not know (label set mismatch)."""
        unknown = sorted(set(self.labels) - set(model_labels))
        if unknown:
            raise DatasetError(
                f"The data has labels the model does not know: {unknown} (model labels: {model_labels}).",
                hint="Use data made for this model, or retrain the model on these labels.",
            )

    def fingerprint(self) -> str:
        """sha256 over the records (what a checkpoint was trained / gated on)."""
        digest = hashlib.sha256()
        for r in self.records:
            digest.update(json.dumps([r.split, r.label, r.text, str(r.image), str(r.audio)]).encode())
        return digest.hexdigest()


def load_dataset(path: str | Path, *, labels: list[str] | None = None) -> Dataset:
    """Load a dataset from a CSV/JSONL file or a folder of per-split files.

    Args:
        path: ``data.jsonl`` / ``data.csv`` with a ``split`` column, or a folder holding
            ``train.jsonl``, ``val.jsonl``, ``calibration.jsonl``, ``test.jsonl`` (or ``.csv``).
        labels: Label order to use (default: sorted labels found).

    Raises:
        InputPathError: The path does not exist.
        DatasetError: Empty data, wrong columns, missing files, unknown splits, bad labels.
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
    modalities = [m for m in MODALITY_COLUMNS if any(getattr(r, m) is not None for r in records)]
    found = sorted({r.label for r in records})
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
    unknown = set(row) - {*MODALITY_COLUMNS, "label", "split", "id", "meta"}
    if "label" not in row or row["label"] is None:
        raise DatasetError(f"{where} has no 'label' column.", hint="Columns: text, image, audio, label [, split].")
    if not any(row.get(m) is not None for m in MODALITY_COLUMNS):
        raise DatasetError(f"{where} has none of the columns text / image / audio.",
                           hint=f"Columns found: {sorted(row)}.")
    if unknown:
        raise DatasetError(f"{where} has unknown columns {sorted(unknown)}.", hint="Columns: text, image, audio, label, split, id, meta.")
    row_split = split or row.get("split") or "train"
    if row_split not in SPLITS:
        raise DatasetError(f"{where}: unknown split {row_split!r}.", hint=f"Splits: {', '.join(SPLITS)}.")
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
    text = row.get("text")
    return Record(label=str(row["label"]), text=None if text is None else str(text), image=paths["image"],
                  audio=paths["audio"], split=row_split, meta=dict(row.get("meta") or {}))
