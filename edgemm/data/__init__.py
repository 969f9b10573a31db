"""Datasets: the built-in digit-match reference task and a loader for users' own data.

A dataset is a folder (or one file) of records with ``text``, ``image`` (path), ``audio``
(path) and ``label`` columns, in CSV or JSONL, split into ``train`` / ``val`` /
``calibration`` / ``test`` either by a ``split`` column or by one file per split.
"""

from __future__ import annotations

from edgemm.data.dataset import SPLITS, Dataset, Record, load_dataset

__all__ = ["SPLITS", "Dataset", "Record", "load_dataset"]
