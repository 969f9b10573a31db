"""The inputs parity runs on: built-in shapes, real records where users' data goes, random inputs.

The built-in cases (realistic texts, images and audio at the spec's shapes) prove the graph's
dynamic axes. They cannot prove that a traced branch is the right one for the data the kiosk
will see, so parity also runs on

* **real records** — when held-out data is known (``--eval-data``, or the dataset the checkpoint
  was trained on): at least :data:`PARITY_RECORDS` records at their natural shapes, through the
  runtime preprocessing, in batches like a kiosk's;
* **randomized inputs** — always: token ids across the vocabulary, random pixels, noise and
  silence, at every built-in shape (see :func:`~edgemm.export.samples.random_feed`).

Every source is recorded in the manifest's ``validation.parity.sources``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemm.errors import InvalidInputError
from edgemm.export.samples import case_feed, random_feed
from edgemm.models.spec import ExportSpec, ShapeCase
from edgemm.runtime.preprocess.pipeline import Preprocessor

log = logging.getLogger("edgemm.export")

PARITY_RECORDS = 64
# Requests arrive one by one and in small bursts: the batch sizes real records are grouped in.
KIOSK_BATCHES = (1, 2, 4, 8, 3, 5)
RANDOM_SEED = 1000
# Held-out splits first; training records only to reach PARITY_RECORDS.
_SPLIT_ORDER = ("test", "val", "calibration", "train")


@dataclass
class ParityFeed:
    """One feed parity compares ONNX and PyTorch on."""

    name: str
    source: str  # "built_in" | "real_records" | "randomized"
    feed: dict[str, np.ndarray]


@dataclass
class ParityInputs:
    """Every parity feed, and the manifest's record of where they came from."""

    feeds: list[ParityFeed] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)


def built_in_cases(spec: ExportSpec) -> list[ShapeCase]:
    """The export case and the parity cases, each name once."""
    seen: dict[str, ShapeCase] = {}
    for case in [spec.export_case, *spec.parity_cases]:
        seen.setdefault(case.name, case)
    return list(seen.values())


def parity_inputs(spec: ExportSpec, bundle_dir: Path, *, data: Any = None, data_spec: str | None = None,
                  built_in: dict[str, dict[str, np.ndarray]] | None = None) -> ParityInputs:
    """Assemble the parity feeds of every source.

    Args:
        spec: The model's export spec.
        bundle_dir: The staging bundle (preprocessing assets are read from it).
        data: The held-out :class:`~edgemm.data.Dataset`, or None when none is known.
        data_spec: How the data was named (``digit-match`` or a path), for the record.
        built_in: Feeds of the built-in cases already built (by case name).

    Returns:
        The feeds and their ``sources`` record.
    """
    built_in = dict(built_in or {})
    out = ParityInputs()
    for case in spec.parity_cases:
        feed = built_in.get(case.name)
        out.feeds.append(ParityFeed(case.name, "built_in", feed if feed is not None else case_feed(spec, case, bundle_dir)))
    out.sources["built_in"] = {"cases": [c.name for c in spec.parity_cases]}

    if data is None:
        out.sources["real_records"] = {"skipped": "no held-out data known (pass --eval-data, or export a checkpoint "
                                                  "trained by edgemm train)"}
    elif spec.make_feed is not None:
        out.sources["real_records"] = {"skipped": "the spec builds its feeds with make_feed, not from raw inputs"}
    else:
        out.sources["real_records"] = _real_records(spec, bundle_dir, data, data_spec, out.feeds)

    shapes = []
    for i, case in enumerate(built_in_cases(spec)):
        seed = RANDOM_SEED + i
        name = f"random-{case.name}"
        out.feeds.append(ParityFeed(name, "randomized", random_feed(spec, case, bundle_dir, seed=seed)))
        shapes.append({"case": name, "seed": seed, "sizes": dict(case.sizes)})
    out.sources["randomized"] = {"cases": shapes}
    return out


def _real_records(spec: ExportSpec, bundle_dir: Path, data: Any, data_spec: str | None,
                  feeds: list[ParityFeed]) -> dict[str, Any]:
    """Add batches of real records to ``feeds``; return their record (or why there are none)."""
    modalities = spec.modality_specs()
    missing = [m for m, info in modalities.items() if info.required and m not in data.modalities]
    if missing:
        reason = f"the data has no {', '.join(missing)}, which the model requires"
        log.warning("parity on real records skipped: %s", reason)
        return {"skipped": reason, "data": data_spec}
    pre = Preprocessor(bundle_dir, spec.preprocessing, spec.modalities)
    names = [m for m in modalities if m in data.modalities]
    usable, refused = [], 0
    for record in _pool(data, names):
        raw = {m: [record.inputs(names)[m]] for m in names}
        if any(raw[m][0] is None for m in names if modalities[m].required):
            continue
        try:
            pre(raw)  # a record the kiosk would refuse (too long, bad image) is no parity input
        except InvalidInputError as exc:
            refused += 1
            log.debug("real record %s not used for parity: %s", record.meta.get("id", "?"), exc.message)
            continue
        usable.append(raw)
        if len(usable) == PARITY_RECORDS:
            break
    if not usable:
        log.warning("parity on real records skipped: none of the records fits the model")
        return {"skipped": "none of the records fits the model's inputs", "data": data_spec}
    if len(usable) < PARITY_RECORDS:
        log.warning("parity on real records: only %d usable records (wanted %d)", len(usable), PARITY_RECORDS)
    independent = getattr(pre, "rows_independent", True)
    limit = spec.axis_ranges.get("batch", (1, 1))[1] if "batch" in spec.axis_ranges else 1
    sizes = [min(b, limit) for b in KIOSK_BATCHES] if independent else [1]
    start, batches = 0, []
    while start < len(usable):
        chunk = usable[start:start + sizes[len(batches) % len(sizes)]]
        start += len(chunk)
        feed = pre({m: [row[m][0] for row in chunk] for m in names})
        feeds.append(ParityFeed(f"records-{len(batches) + 1:02d}", "real_records", feed))
        batches.append(len(chunk))
    return {"count": len(usable), "batches": batches, "data": data_spec, "fingerprint": data.fingerprint(),
            "refused_by_preprocessing": refused}


def _pool(data: Any, modalities: list[str]) -> list[Any]:
    """Records in the order parity takes them: held-out splits first, each shuffled (seeded),
    the longest texts of each split up front (long inputs are where traced shapes break)."""
    rng = np.random.default_rng(0)
    pool = []
    for split in _SPLIT_ORDER:
        records = data.split(split)
        order = [records[i] for i in rng.permutation(len(records))]
        if "text" in modalities:
            longest = sorted(order, key=lambda r: -len(r.text or ""))[:4]
            order = longest + [r for r in order if r not in longest]
        pool.extend(order)
    return pool
