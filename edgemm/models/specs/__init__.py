"""Built-in export families; importing this package registers them.

The registry itself lives in :mod:`edgemm.models.spec` (families register into it); looking a
checkpoint up happens here, where every built-in family is known to be registered.
"""

from __future__ import annotations

from pathlib import Path

from edgemm.errors import UnsupportedModelError
from edgemm.models.spec import Family, registered_families
from edgemm.models.specs import clip, fusion  # noqa: F401  (registers fusion, clip, siglip)


def families() -> dict[str, Family]:
    """Every registered family by name: the built-in ones and any registered since."""
    return registered_families()


def family_for(path: Path) -> Family:
    """The family whose ``detect`` accepts ``path``.

    Raises:
        UnsupportedModelError: No family recognises it; the message lists the known ones.
    """
    for family in families().values():
        if family.detect(path):
            return family
    known = "; ".join(f"{f.name}: {f.description}" for f in families().values())
    raise UnsupportedModelError(
        f"{path} is not a checkpoint edgemm knows how to export.",
        hint=f"Known inputs — {known}; or use --spec package.module:factory for your own nn.Module.",
    )
