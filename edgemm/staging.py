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
from typing import BinaryIO

from edgemm.errors import EdgemmError, UsageError
from edgemm.fsio import check_output_dir, check_output_file, error_path, os_error


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
                     staging_root: Path | None = None, action: str | None = None) -> Iterator[Path]:
    """Yield an empty staging directory; on a clean exit it becomes ``target`` in one rename.

    The staging directory sits next to ``target`` (or under ``staging_root``, which must be on
    the same filesystem), so the final rename is atomic. On success every file is fsynced
    before the rename and the parent directory after it. An existing ``target`` is replaced
    only with ``replace``: it is renamed aside first and removed only once the new directory is
    in place (restored if that rename fails). On any exception the staging directory and the
    directories this call created (parents, ``staging_root``) are removed, and the exception
    propagates — an environmental :class:`OSError` (full disk, file size limit, permissions,
    read-only filesystem, wrong kind of path) as the typed error of :func:`edgemm.fsio.os_error`,
    naming the file as it would have been published.

    Args:
        target: The directory to publish.
        replace: Replace an existing ``target``.
        exists_error: Raised when ``target`` exists and ``replace`` is false (default: a
            :class:`UsageError`).
        copy_from: Start from a copy of this directory instead of an empty one (edits to an
            existing bundle).
        staging_root: Where to stage instead of beside ``target`` (a store's ``staging/``).
        action: What the caller is doing, for messages (default: ``"write <target>"``).

    Raises:
        EdgemmError: ``target`` exists without ``replace``, is not a directory, or the
            filesystem refused (:class:`DiskFullError`, :class:`PathPermissionError` …).
    """
    target = Path(target)
    check_output_dir(target, "Output directory")
    _refuse_existing(target, replace, exists_error)
    root = staging_root or target.parent
    created = missing_directories(target.parent, root)
    staging: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_partial_prefix(target), dir=root))
        os.chmod(staging, shared_mode())
        if copy_from is not None:
            shutil.copytree(copy_from, staging, dirs_exist_ok=True, symlinks=True)
        yield staging
        _refuse_existing(target, replace, exists_error)
        fsync_tree(staging)
        _rename_into_place(staging, target)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        remove_empty(created)
        if isinstance(exc, OSError):
            mapped = os_error(exc, action or f"write {target}", path=_published_name(error_path(exc), target))
            if mapped is not None:
                raise mapped from exc
        raise


@contextlib.contextmanager
def staged_file(target: str | os.PathLike[str], *, mode: int | None = None, replace: bool = False,
                exists_error: EdgemmError | None = None, what: str = "Output file") -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``target`` in one rename when the block exits cleanly.

    The file is written beside ``target`` under a hidden temporary name, fsynced, renamed over
    it, and the directory fsynced: a reader sees the old file or the complete new one. On any
    exception the temporary file and the parent directories this call created are removed and
    the exception propagates, an environmental :class:`OSError` as its typed error (as for
    :func:`staged_directory`).

    Args:
        target: The file to publish.
        mode: Its permission bits (default: ``0o666`` less the umask); set before a byte is written.
        replace: Replace an existing ``target``.
        exists_error: Raised when ``target`` exists and ``replace`` is false.
        what: What the file is, for messages (``"Archive"``, ``"Private key"``).

    Raises:
        EdgemmError: ``target`` exists without ``replace``, is a directory or special file, or
            the filesystem refused.
    """
    target = Path(target)
    check_output_file(target, what)
    _refuse_existing(target, replace, exists_error)
    created = missing_directories(target.parent)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_partial_prefix(target), dir=target.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), shared_mode() & 0o666 if mode is None else mode)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _refuse_existing(target, replace, exists_error)
        os.replace(tmp, target)
        tmp = None
        fsync_directory(target.parent)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        remove_empty(created)
        if isinstance(exc, OSError):
            mapped = os_error(exc, f"write {what.lower()} {target}", path=_published_name(error_path(exc), target))
            if mapped is not None:
                raise mapped from exc
        raise


def missing_directories(*paths: Path) -> list[Path]:
    """The directories among ``paths`` and their ancestors that do not exist yet, innermost first."""
    missing: list[Path] = []
    for path in paths:
        for candidate in (path, *path.parents):
            if candidate.exists() or candidate.is_symlink():
                break
            if candidate not in missing:
                missing.append(candidate)
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def remove_empty(directories: list[Path]) -> None:
    """Remove the (innermost-first) directories a failed write created, while they are empty."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _published_name(filename: str | bytes | None, target: Path) -> Path | str | bytes:
    """The name the user knows for a file the error names: under a staging directory or a
    temporary file of ``target``, the name it would have been published as."""
    if filename is None:
        return target
    parts = Path(os.fsdecode(filename)).parts
    for index, part in enumerate(parts):
        if part.startswith(_partial_prefix(target)):
            return target.joinpath(*parts[index + 1:])
    return filename


def _partial_prefix(target: Path) -> str:
    """How the hidden staging directory or file of ``target`` is named: ``.<name>.partial-<random>``."""
    return f".{target.name}.partial-"


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
