"""Bundle verification: runs before any parser touches a bundle file.

Refused: a missing or invalid manifest, any file on disk that the manifest does not list, any
listed file that is missing, a symlink / hardlink / device / FIFO anywhere, a path that leaves the
bundle, a size mismatch (checked before hashing, so a huge file is not read), a hash mismatch.

Damage to the bundle's structure (what is listed, what exists, links) is a
:class:`~edgemm.errors.BundleError`; bytes that differ from the recorded size or sha256 are a
failed integrity check, :class:`~edgemm.errors.BundleIntegrityError` (exit 4), naming the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgemm.bundle.hashing import open_nofollow, sha256_file
from edgemm.bundle.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest
from edgemm.errors import BundleError, BundleIntegrityError, InputPathError

_HINT = "Do not edit a bundle by hand; export it again or restore it from its archive."


def _raise_walk_error(exc: OSError) -> None:
    raise BundleError(f"Cannot read the bundle directory: {exc}.", hint="Check its permissions.")


def read_manifest(root: Path) -> Manifest:
    """Read and strictly parse ``edgemm.json`` (no link, bounded size)."""
    path = root / MANIFEST_NAME
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BundleError(f"{root} has no {MANIFEST_NAME}: it is not an edgemm bundle.",
                          hint="Point at the directory that `edgemm export` wrote.") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{MANIFEST_NAME} in {root} is not a regular file.", hint=_HINT)
    if st.st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST_NAME} is {st.st_size} bytes; the limit is 16 MiB.", hint=_HINT)
    fd = open_nofollow(path)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)
    return Manifest.from_json(data)


def verify_bundle(path: str | os.PathLike[str], *, check_hashes: bool = True) -> Manifest:
    """Verify a bundle directory and return its manifest.

    Args:
        path: The bundle directory.
        check_hashes: Hash every file (default). ``False`` checks listing, links, types and sizes
            only; the caller must then :func:`verify_hashes` every file it is about to read.

    Returns:
        The parsed :class:`Manifest`.

    Raises:
        InputPathError: ``path`` does not exist or is not a directory.
        BundleError: Anything about the bundle is wrong; the message names the file.
    """
    root = Path(path)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        raise InputPathError(f"Bundle {root} does not exist.", hint="Check the path; `edgemm export` writes bundles.") from None
    if stat.S_ISLNK(st.st_mode):
        raise BundleError(f"Bundle path {root} is a symlink.", hint="Point at the real directory.")
    if not stat.S_ISDIR(st.st_mode):
        raise InputPathError(f"Bundle {root} is not a directory.", hint="Point at the directory that `edgemm export` wrote.")

    manifest = read_manifest(root)
    if not manifest.files:
        raise BundleError("The manifest lists no files.", hint=_HINT)
    listed = {entry.path: entry for entry in manifest.files}
    listed_dirs = {p.rsplit("/", 1)[0] for p in listed if "/" in p}
    listed_dirs |= {d.rsplit("/", i)[0] for d in list(listed_dirs) for i in range(1, d.count("/") + 1)}

    # 1. Walk what is on disk: only listed regular files and their parent directories may exist.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=_raise_walk_error):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in dirnames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            mode = os.lstat(Path(dirpath, name)).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"The bundle contains a symlink: {rel}.", hint=_HINT)
            if rel not in listed_dirs:
                raise BundleError(f"The bundle contains an unknown directory: {rel}.", hint=_HINT)
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(Path(dirpath, name))
            if stat.S_ISLNK(st.st_mode):
                raise BundleError(f"The bundle contains a symlink: {rel}.", hint=_HINT)
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"The bundle contains a special file: {rel}.", hint=_HINT)
            if rel == MANIFEST_NAME:
                continue
            if rel not in listed:
                raise BundleError(f"The bundle contains a file its manifest does not list: {rel}.", hint=_HINT)
            if st.st_nlink > 1:
                raise BundleError(f"{rel} is hard-linked elsewhere ({st.st_nlink} links).", hint=_HINT)

    # 2. Every listed file exists with its size, then its hash.
    for entry in manifest.files:
        full = root / entry.path
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            raise BundleError(f"The bundle is missing {entry.path}.", hint=_HINT) from None
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{entry.path} is not a regular file.", hint=_HINT)
        if st.st_size != entry.bytes:
            raise BundleIntegrityError(
                f"{entry.path} is {st.st_size} bytes; the manifest says {entry.bytes} (truncated or altered).",
                hint=_HINT, details={"file": entry.path},
            )
    if check_hashes:
        verify_hashes(root, manifest, [entry.path for entry in manifest.files])
    return manifest


def verify_hashes(root: Path, manifest: Manifest, paths: list[str]) -> None:
    """Hash-check the given listed files (each size-checked first, opened without following links).

    Raises:
        BundleError: A path is not listed, missing, or not a regular file.
        BundleIntegrityError: Its size or sha256 differs from the manifest (exit 4).
    """
    entries = {entry.path: entry for entry in manifest.files}
    for rel in paths:
        entry = entries.get(rel)
        if entry is None:
            raise BundleError(f"{rel} is not listed in the manifest.", hint=_HINT)
        full = root / rel
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            raise BundleError(f"The bundle is missing {rel}.", hint=_HINT) from None
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{rel} is not a regular file.", hint=_HINT)
        if st.st_size != entry.bytes:
            raise BundleIntegrityError(f"{rel} is not the file the manifest lists (truncated or altered).",
                                       hint=_HINT, details={"file": rel})
        digest, _ = sha256_file(full, limit=entry.bytes)
        if digest != entry.sha256:
            raise BundleIntegrityError(f"{rel} does not match its sha256 in the manifest (altered or corrupt).",
                                       hint=_HINT, details={"file": rel})
