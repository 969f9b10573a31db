"""Reading user-supplied input files (images, recordings) without trusting their size."""

from __future__ import annotations

import os

from edgemm.errors import InputPathError


def read_capped(path: str | os.PathLike[str], max_bytes: int, what: str) -> bytes:
    """Read at most ``max_bytes + 1`` bytes of ``path``; callers refuse ``len > max_bytes``.

    One byte past the cap is read instead of trusting ``stat()``: the file may be a pipe or grow.

    Args:
        path: The file to read.
        max_bytes: The caller's cap.
        what: What the file holds, for messages (``"Image"``, ``"Audio"``).

    Returns:
        The first ``max_bytes + 1`` bytes at most.

    Raises:
        InputPathError: The path is missing, a directory, or unreadable (``what`` names it).
    """
    try:
        with open(path, "rb") as fh:
            return fh.read(max_bytes + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise InputPathError(f"{what} file {os.fspath(path)!r} does not exist.", hint="Check the path.") from None
    except IsADirectoryError:
        raise InputPathError(f"{os.fspath(path)!r} is a directory, not a {what.lower()} file.",
                             hint="Point at a file.") from None
    except OSError as exc:
        raise InputPathError(f"Cannot read {what.lower()} file {os.fspath(path)!r}: {exc.strerror or exc}.",
                             hint="Check the path and its permissions.") from None
