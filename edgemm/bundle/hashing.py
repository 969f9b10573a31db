"""Streaming sha256 of files opened without following symlinks."""

from __future__ import annotations

import hashlib
import os

_CHUNK = 4 * 2**20


def open_nofollow(path: str | os.PathLike[str]) -> int:
    """Open ``path`` read-only, refusing a symlink as the last component (``O_NOFOLLOW``)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    return os.open(path, flags)


def sha256_file(path: str | os.PathLike[str], *, limit: int | None = None) -> tuple[str, int]:
    """Return ``(hexdigest, bytes_read)``; stops after ``limit`` bytes when given."""
    digest = hashlib.sha256()
    total = 0
    fd = open_nofollow(path)
    with os.fdopen(fd, "rb") as fh:
        while True:
            want = _CHUNK if limit is None else min(_CHUNK, limit - total + 1)
            if want <= 0:
                break
            block = fh.read(want)
            if not block:
                break
            digest.update(block)
            total += len(block)
    return digest.hexdigest(), total
