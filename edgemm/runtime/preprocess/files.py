"""Reading user-supplied input files (images, recordings) by their size, not their promise."""

from __future__ import annotations

import os

from edgemm.fsio import read_bounded


def read_capped(path: str | os.PathLike[str], max_bytes: int, what: str) -> bytes:
    """Read ``path`` whole if it holds at most ``max_bytes`` bytes (see :func:`edgemm.fsio.read_bounded`).

    The file is ``stat``-ed first: a directory, FIFO, device or socket is refused as what it is
    without being opened for reading, and a file over the cap (a sparse 2 GB file included) is
    refused by its size without being read; at most ``max_bytes + 1`` bytes are ever read.

    Args:
        path: The file to read.
        max_bytes: The caller's cap.
        what: What the file holds, for messages (``"Image"``, ``"Audio"``).

    Returns:
        The file's bytes (never more than ``max_bytes``).

    Raises:
        InputTooLargeError: The file is (or grew) larger than ``max_bytes``.
        InputPathError: The path is missing, not a regular file, or unreadable (``what`` names it).
    """
    return read_bounded(path, max_bytes, f"{what} file",
                        hint=f"Use a smaller or more compressed {what.lower()} file, or raise the bundle's max_bytes.")
