"""Golden set: raw inputs, the model feed they preprocess to, and the reference outputs.

Stored as ``golden.npz`` and always loaded with ``allow_pickle=False``: object arrays are refused.
Keys: ``raw.text`` / ``raw.image`` / ``raw.audio`` / ``raw.audio_rate`` / ``raw.present.<modality>``,
``feed.<input name>``, ``expected.<output name>`` (the PyTorch reference),
``artifact.<artifact name>.<output name>`` (what each artifact produced at export time), and
``labels.expected`` / ``labels.names``: the label string the postprocessing gave each row of the
reference at export (empty for tasks without labels) and the label list it used, so that a label
list changed after export fails the golden check. Golden sets written before labels were recorded
have neither; their label check is skipped.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgemm.errors import BundleError

_MAX_ENTRIES = 256


@dataclass
class GoldenSet:
    """Raw inputs, model feed and reference outputs for a handful of examples.

    Attributes:
        raw / feed / expected / artifacts: See the module docstring.
        labels: The expected label string per row (the postprocessed reference; ``""`` where the
            task has no labels), or None for golden sets written before labels were recorded.
        label_names: The bundle's label list when ``labels`` were computed (None: not recorded).
    """

    raw: dict[str, np.ndarray] = field(default_factory=dict)
    feed: dict[str, np.ndarray] = field(default_factory=dict)
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    artifacts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    labels: list[str] | None = None
    label_names: list[str] | None = None

    @property
    def size(self) -> int:
        """Number of examples."""
        first = next(iter(self.expected.values()), None)
        return 0 if first is None else int(first.shape[0])

    def raw_requests(self) -> dict[str, list]:
        """Raw inputs as per-modality lists, ``None`` where an optional modality is absent."""
        out: dict[str, list] = {}
        n = self.size
        for modality in ("text", "image", "audio"):
            key = f"raw.{modality}"
            if key not in self.raw:
                continue
            values = self.raw[key]
            present = self.raw.get(f"raw.present.{modality}", np.ones(n, dtype=bool))
            items: list = []
            for i in range(n):
                if not present[i]:
                    items.append(None)
                elif modality == "text":
                    items.append(str(values[i]))
                elif modality == "audio":
                    length = int(self.raw["raw.audio_length"][i])
                    items.append((values[i, :length], int(self.raw["raw.audio_rate"])))
                else:
                    items.append(values[i])
            out[modality] = items
        return out

    def save(self, path: Path) -> None:
        """Write ``golden.npz`` (uncompressed, deterministic key order)."""
        arrays = {}
        sections = [("", self.raw), ("feed.", self.feed), ("expected.", self.expected)]
        sections += [(f"artifact.{name}.", outputs) for name, outputs in self.artifacts.items()]
        recorded = {key: np.asarray(value, dtype=str) for key, value in (("expected", self.labels),
                                                                         ("names", self.label_names))
                    if value is not None}
        sections.append(("labels.", recorded))
        for prefix, section in sections:
            for key, value in sorted(section.items()):
                array = np.asarray(value)
                if array.dtype == object:
                    raise TypeError(f"golden array {key} has dtype object")
                arrays[f"{prefix}{key}"] = array
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GoldenSet:
        """Load a verified ``golden.npz`` without pickle; BundleError if it is malformed."""
        try:
            with zipfile.ZipFile(path) as zf:
                if len(zf.infolist()) > _MAX_ENTRIES:
                    raise BundleError("The golden set has too many entries.", hint="Export the bundle again.")
            with np.load(path, allow_pickle=False) as data:
                golden = cls()
                for key in data.files:
                    array = data[key]
                    if key.startswith("feed."):
                        golden.feed[key[5:]] = array
                    elif key.startswith("expected."):
                        golden.expected[key[9:]] = array
                    elif key.startswith("artifact.") and key.count(".") >= 2:
                        _, name, output = key.split(".", 2)
                        golden.artifacts.setdefault(name, {})[output] = array
                    elif key.startswith("raw."):
                        golden.raw[key] = array
                    elif key in ("labels.expected", "labels.names"):
                        if array.dtype.kind != "U" or array.ndim != 1:
                            raise BundleError(f"Golden-set entry {key!r} is not a list of strings.",
                                              hint="Export the bundle again.")
                        setattr(golden, "labels" if key == "labels.expected" else "label_names",
                                [str(x) for x in array])
                    else:
                        raise BundleError(f"Unknown golden-set entry {key!r}.", hint="Export the bundle again.")
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise BundleError(f"The golden set cannot be read: {exc}", hint="Export the bundle again.") from exc
        if not golden.expected:
            raise BundleError("The golden set has no expected outputs.", hint="Export the bundle again.")
        if golden.labels is not None and len(golden.labels) != golden.size:
            raise BundleError(f"The golden set records {len(golden.labels)} expected labels for {golden.size} rows.",
                              hint="Export the bundle again.")
        return golden

