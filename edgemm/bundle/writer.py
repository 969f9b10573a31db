"""Write ``edgemm.json``: list and hash every file under the bundle directory."""

from __future__ import annotations

import os
from pathlib import Path

from edgemm.bundle.hashing import sha256_file
from edgemm.bundle.manifest import MANIFEST_NAME, FileEntry, Manifest, check_relative_path
from edgemm.errors import BundleError


def list_bundle_files(root: Path) -> list[FileEntry]:
    """Hash every regular file under ``root`` except the manifest; links are refused."""
    entries: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath, name)
            if full.is_symlink():
                raise BundleError(f"Refusing to package the symlink {full}.", hint="Copy the file instead.")
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            if rel == MANIFEST_NAME:
                continue
            check_relative_path(rel, "file name")
            digest, size = sha256_file(full)
            entries.append(FileEntry(path=rel, sha256=digest, bytes=size))
    return entries


def write_manifest(root: Path, manifest: Manifest) -> Manifest:
    """Fill ``manifest.files`` from the directory, write ``edgemm.json`` durably, return it.

    Args:
        root: The (staging) bundle directory; every file in it becomes part of the bundle.
        manifest: Manifest without ``files``; it is updated in place.

    Returns:
        The same manifest, with ``files`` set.
    """
    manifest.files = list_bundle_files(root)
    # Round-trip through the strict parser so we never write a manifest we would refuse.
    text = manifest.to_json()
    Manifest.from_json(text)
    target = root / MANIFEST_NAME
    with open(target, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return manifest
