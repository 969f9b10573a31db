"""Built-in export families; importing this package registers them.

The registry itself lives in :mod:`edgemm.models.spec` (families register into it); looking a
checkpoint up happens here, where every built-in family is known to be registered.
"""

from __future__ import annotations

from pathlib import Path

from edgemm.errors import UnsupportedModelError
from edgemm.models.spec import Family, registered_families

# Importing a family module registers its families (fusion; clip, siglip; vilt, blip;
# hf-text-classification, hf-token-classification; clap, chinese_clip, vision_text_dual_encoder;
# hf-image-classification, hf-audio-classification).
from edgemm.models.specs import (  # noqa: F401
    clip,
    fusion,
    hf_audio,
    hf_blip,
    hf_clap,
    hf_dual,
    hf_text,
    hf_vilt,
    hf_vision,
)
from edgemm.models.specs.hf import unsupported_architecture


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
    unsupported = unsupported_architecture(path)
    if unsupported is not None:  # a transformers directory of an architecture no family exports
        raise unsupported
    known = "; ".join(f"{f.name}: {f.description}" for f in families().values())
    raise UnsupportedModelError(
        f"{path} is not a checkpoint edgemm knows how to export.",
        hint=f"Known inputs — {known}; or use --spec package.module:factory for your own nn.Module.",
    )
