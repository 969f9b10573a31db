"""Resolve a dataset argument: the built-in ``digit-match`` (cached) or a path. Torch-free."""

from __future__ import annotations

import os
from pathlib import Path

from edgemm.data.dataset import Dataset, load_dataset

BUILTIN_DATA = ("digit-match",)


def default_cache() -> Path:
    """``$EDGEMM_CACHE`` or ``~/.cache/edgemm``: where built-in datasets are generated."""
    return Path(os.environ.get("EDGEMM_CACHE", Path.home() / ".cache" / "edgemm"))


def resolve_dataset(spec: str, *, cache: Path | None = None) -> Dataset:
    """``digit-match`` (generated once into the cache) or a dataset path."""
    if spec in BUILTIN_DATA:
        from edgemm.data.digit_match import load_digit_match

        return load_digit_match((cache or default_cache()) / "data" / "digit-match-seed0")
    return load_dataset(spec)
