"""``.edgemm`` archives: one signed file that carries a bundle to a device.

Layout (a plain POSIX ustar file, readable by ``tar tvf`` for inspection):

1. ``EDGEMM-ARCHIVE.json`` — the statement: schema, bundle name, version, and every file's path,
   size and sha256;
2. ``EDGEMM-ARCHIVE.sig`` — the 64-byte Ed25519 signature of the statement's exact bytes;
3. ``bundle/<path>`` — each listed file, in statement order, nothing else.

The reader here is our own: it parses ustar headers itself and accepts only regular files with
exactly the names, order and sizes the *signed* statement lists, so links, devices, directories,
PAX/GNU extensions, traversal, duplicates, unlisted names and size bombs are refused before a
byte of them is written. The signature is checked before any bundle byte is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from edgemm.bundle.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, check_relative_path
from edgemm.bundle.verify import verify_bundle
from edgemm.deploy.keys import load_private_key, sign, verify_signature
from edgemm.errors import ArchiveError, BundleExistsError, EdgemmError, UsageError
from edgemm.fsio import check_output_file, open_input, read_bounded, require_free_space
from edgemm.staging import staged_file

SCHEMA = "edgemm.archive/1"
STATEMENT = "EDGEMM-ARCHIVE.json"
SIGNATURE = "EDGEMM-ARCHIVE.sig"
PREFIX = "bundle/"
BLOCK = 512
MAX_STATEMENT_BYTES = 4 * 2**20
MAX_FILES = 10_000
DEFAULT_MAX_TOTAL_BYTES = 16 * 2**30
_VERSION = re.compile(r"^\d{1,9}(\.\d{1,9}){0,3}$")
_CHUNK = 1 << 20


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.2.3"`` → ``(1, 2, 3)``; versions compare numerically, missing parts count as 0.

    Raises:
        UsageError: Not one to four dot-separated numbers.
    """
    if not isinstance(text, str) or not _VERSION.match(text):
        raise UsageError(f"Version {text!r} is not of the form 1, 1.2, 1.2.3 or 1.2.3.4.",
                         hint="Give --version a release number such as 3 or 2.1.0.")
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


@dataclass(frozen=True)
class Statement:
    """The signed description of an archive's contents."""

    name: str
    version: str
    files: tuple[tuple[str, int, str], ...]  # (path inside the bundle, bytes, sha256)
    raw: bytes

    @property
    def total_bytes(self) -> int:
        """Bytes of all listed files together (what an install needs on disk)."""
        return sum(size for _, size, _ in self.files)

    @property
    def digest(self) -> str:
        """sha256 of the statement's exact bytes (what the signature covers)."""
        return hashlib.sha256(self.raw).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """Summary for reports: name, version, file count, bytes and the statement's sha256."""
        return {"name": self.name, "version": self.version, "files": len(self.files),
                "bytes": self.total_bytes, "statement_sha256": self.digest}


def parse_statement(raw: bytes) -> Statement:
    """Strictly parse a statement (after its signature verified).

    Raises:
        ArchiveError: Wrong schema, missing fields, bad paths or sizes, duplicates.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveError(f"The archive statement is not valid JSON ({exc}).") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ArchiveError(f"Not an {SCHEMA} statement.", hint="Pack it again with this edgemm.")
    name, version, files = doc.get("name"), doc.get("version"), doc.get("files")
    if not isinstance(name, str) or not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise ArchiveError("The archive statement lacks a name or a valid file list.")
    try:
        parse_version(version)
    except UsageError as exc:
        raise ArchiveError(f"The archive statement's version is invalid: {exc.message}") from None
    seen: set[str] = set()
    entries = []
    for item in files:
        if not isinstance(item, dict) or set(item) != {"path", "bytes", "sha256"}:
            raise ArchiveError("An archive file entry is not {path, bytes, sha256}.")
        path, size, digest = item["path"], item["bytes"], item["sha256"]
        try:
            check_relative_path(path, "archive path")
        except EdgemmError as exc:
            raise ArchiveError(f"Unsafe path in the archive statement: {path!r} ({exc}).") from None
        if path.lower() in seen:
            raise ArchiveError(f"The archive statement lists {path!r} twice.")
        seen.add(path.lower())
        if type(size) is not int or size < 0 or not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ArchiveError(f"Bad size or sha256 for {path!r} in the archive statement.")
        entries.append((path, size, digest))
    return Statement(name, version, tuple(entries), raw)


# --- ustar writing --------------------------------------------------------------------------


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def _header(name: str, size: int, mtime: int) -> bytes:
    encoded = name.encode("utf-8")
    prefix = b""
    if len(encoded) > 100:
        cut = encoded.rfind(b"/", 0, 156)
        prefix, encoded = encoded[:cut], encoded[cut + 1:]
        if cut <= 0 or len(encoded) > 100:
            raise UsageError(f"Path too long for an archive: {name!r}.")
    header = bytearray(BLOCK)
    header[0:len(encoded)] = encoded
    header[100:108] = _octal(0o644, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[124:136] = _octal(size, 12)
    header[136:148] = _octal(mtime, 12)
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[345:345 + len(prefix)] = prefix
    header[148:156] = f"{sum(header):06o}".encode() + b"\0 "
    return bytes(header)


def _write_member(out: BinaryIO, name: str, data_source: Path | bytes, size: int, mtime: int) -> None:
    out.write(_header(name, size, mtime))
    if isinstance(data_source, bytes):
        out.write(data_source)
    else:
        with open(data_source, "rb") as fh:
            written = 0
            while chunk := fh.read(_CHUNK):
                out.write(chunk)
                written += len(chunk)
        if written != size:
            raise ArchiveError(f"{data_source} changed size while packing.")
    out.write(b"\0" * (-size % BLOCK))


def _member_bytes(size: int) -> int:
    """Bytes one member of ``size`` takes in the archive: header, data, padding."""
    return BLOCK + size + (-size % BLOCK)


def pack(bundle: Path, output: Path, *, key: Path, version: str, force: bool = False) -> Statement:
    """Verify ``bundle`` and write it as one signed archive (atomically: temp file + rename).

    Nothing is left behind on failure: the archive is staged under a hidden name beside
    ``output`` and published by one rename; a full disk is refused up front when the archive
    cannot fit, and any filesystem fault on the way is a typed error naming ``output``.

    Raises:
        BundleError: The bundle does not verify (hashes included).
        UsageError / BundleExistsError: Bad version, missing key, existing output without force.
        InputPathError: ``output`` is a directory or special file, or lies under a file.
        DiskFullError / FileSizeLimitError / PathPermissionError: The filesystem refused.
    """
    parse_version(version)
    private_key = load_private_key(key)
    check_output_file(output, "Archive")
    exists = BundleExistsError(f"{output} exists.", hint="Pass --force to replace it.")
    if output.exists() and not force:
        raise exists
    manifest = verify_bundle(bundle, check_hashes=True)
    entries = [{"path": e.path, "bytes": e.bytes, "sha256": e.sha256} for e in manifest.files]
    manifest_bytes = read_bounded(bundle / MANIFEST_NAME, MAX_MANIFEST_BYTES, "Manifest")
    entries.append({"path": MANIFEST_NAME, "bytes": len(manifest_bytes),
                    "sha256": hashlib.sha256(manifest_bytes).hexdigest()})
    raw = json.dumps({"schema": SCHEMA, "name": manifest.name, "version": version,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": entries},
                     indent=1, sort_keys=True).encode()
    statement = parse_statement(raw)
    signature = sign(private_key, raw)
    size = (_member_bytes(len(raw)) + _member_bytes(len(signature))
            + sum(_member_bytes(n) for _, n, _ in statement.files) + 2 * BLOCK)
    require_free_space(output.parent, size, f"the archive {output}")
    mtime = int(time.time())
    with staged_file(output, replace=force, exists_error=exists, what="Archive") as out:
        _write_member(out, STATEMENT, raw, len(raw), mtime)
        _write_member(out, SIGNATURE, signature, len(signature), mtime)
        for path, size, _ in statement.files:
            # The manifest is the bytes read above, so what is signed is what is shipped.
            source = manifest_bytes if path == MANIFEST_NAME else bundle / path
            _write_member(out, PREFIX + path, source, size, mtime)
        out.write(b"\0" * (2 * BLOCK))
    return statement


# --- our own reader ---------------------------------------------------------------------------


@dataclass
class Member:
    """One archive member as the header describes it: its name and size."""
    name: str
    size: int


def _parse_octal(field: bytes, what: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text or not all(48 <= c <= 55 for c in text):
        raise ArchiveError(f"Malformed {what} field in an archive header.")
    return int(text, 8)


class ArchiveReader:
    """Sequential reader of the members of a ``.edgemm`` (ustar) file; regular files only.

    Args:
        fh: The open file.
        file_size: Its size in bytes (no member may claim more).
        name: Its path, for messages.
    """

    def __init__(self, fh: BinaryIO, *, file_size: int, name: str | None = None):
        self.fh = fh
        self.remaining = file_size
        self.name = name

    def _read_exact(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise ArchiveError("The archive is truncated.", hint="Copy it again; check its size.")
        self.remaining -= n
        return data

    def next_member(self) -> Member | None:
        """The next member's header, or ``None`` at the end-of-archive marker."""
        header = self._read_exact(BLOCK)
        if header == b"\0" * BLOCK:
            return None
        stored = _parse_octal(header[148:156], "checksum")
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise ArchiveError("An archive header fails its checksum.")
        kind = header[156:157]
        if kind not in (b"0", b"\0"):
            names = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device",
                     b"5": "directory", b"6": "FIFO", b"x": "PAX header", b"g": "PAX global header",
                     b"L": "GNU long name", b"K": "GNU long link"}
            raise ArchiveError(f"The archive holds a {names.get(kind, f'type {kind!r}')} entry; only regular files are allowed.")
        name = header[0:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
        full = (prefix + b"/" + name) if prefix else name
        try:
            text = full.decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError("An archive member name is not UTF-8.") from None
        size = _parse_octal(header[124:136], "size")
        if size > self.remaining:
            raise ArchiveError(f"Archive member {text!r} claims {size} bytes; the file is shorter.")
        return Member(text, size)

    def read_small(self, member: Member, cap: int) -> bytes:
        """Read a small member (statement, signature) whole, refusing one larger than ``cap`` bytes.

        Raises:
            ArchiveError: The member is larger than ``cap`` or the archive ends early.
        """
        if member.size > cap:
            raise ArchiveError(f"Archive member {member.name!r} is {member.size} bytes; at most {cap} expected.")
        data = self._read_exact(member.size)
        self._read_exact(-member.size % BLOCK)
        return data

    def stream(self, member: Member) -> Iterator[bytes]:
        """Yield a member's bytes in bounded chunks (bundle files are never read whole).

        Raises:
            ArchiveError: The archive ends before the member does.
        """
        left = member.size
        while left:
            chunk = self._read_exact(min(_CHUNK, left))
            left -= len(chunk)
            yield chunk
        self._read_exact(-member.size % BLOCK)


def read_signed_statement(reader: ArchiveReader, public_key: Any) -> Statement:
    """Read the statement and signature members, verify the signature, then parse the statement.

    Raises:
        ArchiveError: The first two members are not the statement and its signature.
        SignatureError: The signature does not verify.
    """
    first = reader.next_member()
    if first is None or first.name != STATEMENT:
        raise ArchiveError(f"{reader.name or 'The file'} is not an edgemm archive: the signed statement is missing.",
                           hint="Create archives with: edgemm pack BUNDLE --key KEY --version V")
    raw = reader.read_small(first, MAX_STATEMENT_BYTES)
    second = reader.next_member()
    if second is None or second.name != SIGNATURE:
        raise ArchiveError(f"{reader.name or 'The archive'} is not signed.", hint="Pack it with: edgemm pack --key KEY")
    signature = reader.read_small(second, 64)
    verify_signature(public_key, signature, raw)
    return parse_statement(raw)


@contextlib.contextmanager
def open_archive(path: Path) -> Iterator[ArchiveReader]:
    """A reader of the archive at ``path``, opened only if ``stat`` shows a regular file.

    Raises:
        InputPathError: ``path`` is missing, a directory, FIFO, device or socket.
    """
    with open_input(path, "Archive") as fh:
        yield ArchiveReader(fh, file_size=os.fstat(fh.fileno()).st_size, name=str(path))


def inspect_archive(path: Path, public_key: Any) -> Statement:
    """Verify an archive's signature and return its statement (no extraction)."""
    with open_archive(path) as reader:
        return read_signed_statement(reader, public_key)
