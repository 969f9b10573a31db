"""Resolve a dataset argument: the built-in ``digit-match`` (cached) or a path. Torch-free."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


def training_display(spec: str) -> dict[str, Any] | None:
    """The display texts (edgemm.bundle.display) that go with data ``spec``, for the checkpoint:
    the built-in task's own, else a ``display.json`` / ``display.toml`` in the dataset folder; None: none.

    Raises:
        DisplayError: The dataset's display file is not readable JSON/TOML.
    """
    if spec == "digit-match":
        from edgemm.data.digit_match import DISPLAY

        return DISPLAY
    from edgemm.bundle.display import load_display_file

    for name in ("display.json", "display.toml"):
        if (Path(spec) / name).is_file():
            return load_display_file(Path(spec) / name)
    return None
