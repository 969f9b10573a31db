"""Publish a directory atomically: stage it beside the target, fsync, rename, roll back on failure.

Every writer of a directory goes through :func:`staged_directory` (export bundles, TensorRT
engine builds, Triton repositories, generated datasets, device-store installs), so a reader
sees either the old directory or the complete new one — never a half-written one — and a
failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from edgemm.errors import EdgemmError, UsageError


def shared_mode() -> int:
    """The mode a plain ``mkdir`` would give a directory: ``0o777`` less this process's umask.

    ``tempfile.mkdtemp`` creates ``0o700`` directories, which a kiosk's service user cannot
    read; staged directories get the ordinary mode instead (a umask of 077 keeps them private).
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike[str], *, replace: bool = False,
                     exists_error: EdgemmError | None = None, copy_from: Path | None = None,
                     staging_root: Path | None = None) -> Iterator[Path]:
    """Yield an empty staging directory; on a clean exit it becomes ``target`` in one rename.

    The staging directory sits next to ``target`` (or under ``staging_root``, which must be on
    the same filesystem), so the final rename is atomic. On success every file is fsynced
    before the rename and the parent directory after it. An existing ``target`` is replaced
    only with ``replace``: it is renamed aside first and removed only once the new directory is
    in place (restored if that rename fails). On any exception the staging directory and the
    parent directories this call created are removed, and the exception propagates.

    Args:
        target: The directory to publish.
        replace: Replace an existing ``target``.
        exists_error: Raised when ``target`` exists and ``replace`` is false (default: a
            :class:`UsageError`).
        copy_from: Start from a copy of this directory instead of an empty one (edits to an
            existing bundle).
        staging_root: Where to stage instead of beside ``target`` (a store's ``staging/``).

    Raises:
        EdgemmError: ``target`` exists without ``replace``.
        OSError: The filesystem refused (the caller maps it to a user-facing error).
    """
    target = Path(target)
    _refuse_existing(target, replace, exists_error)
    created = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    root = staging_root or target.parent
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=root))
    try:
        os.chmod(staging, shared_mode())
        if copy_from is not None:
            shutil.copytree(copy_from, staging, dirs_exist_ok=True, symlinks=True)
        yield staging
        _refuse_existing(target, replace, exists_error)
        fsync_tree(staging)
        _rename_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in created:  # innermost first; only the empty directories this call made
            try:
                parent.rmdir()
            except OSError:
                break
        raise


def fsync_tree(root: Path) -> None:
    """fsync every regular file and directory under ``root`` (and ``root`` itself)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(Path(dirpath))


def fsync_directory(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_existing(target: Path, replace: bool, exists_error: EdgemmError | None) -> None:
    if not replace and (target.exists() or target.is_symlink()):
        raise exists_error or UsageError(f"{target} already exists.", hint="Choose another path or pass --force.")


def _rename_into_place(staging: Path, target: Path) -> None:
    retired = None
    if target.exists() or target.is_symlink():
        retired = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(target, retired)
    try:
        os.rename(staging, target)
    except BaseException:
        if retired is not None:
            os.rename(retired, target)
        raise
    fsync_directory(target.parent)
    if retired is not None:
        if retired.is_dir() and not retired.is_symlink():
            shutil.rmtree(retired, ignore_errors=True)
        else:
            retired.unlink()
