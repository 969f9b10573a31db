"""Bundle format v1: a directory with ``edgemm.json`` that lists and hashes every file.

Torch-free. :func:`verify_bundle` must succeed before any other code reads a bundle file.
"""

from __future__ import annotations

from edgemm.bundle.manifest import (
    MANIFEST_NAME,
    SCHEMA,
    Artifact,
    FileEntry,
    Manifest,
    TensorSpec,
)
from edgemm.bundle.verify import verify_bundle
from edgemm.bundle.writer import write_manifest

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA",
    "Artifact",
    "FileEntry",
    "Manifest",
    "TensorSpec",
    "verify_bundle",
    "write_manifest",
]
