"""Built-in export families; importing this package registers them."""

from __future__ import annotations

from edgemm.models.specs import clip, fusion  # noqa: F401
