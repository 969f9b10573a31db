"""The device store: installed bundles and the one pointer that says which is active.

Layout::

    STORE/
      active            symlink → bundles/<id>   (switched by rename: atomic)
      previous          symlink → the bundle active before the last switch
      bundles/<id>/     statement.json + bundle/   (complete, hashed and fsynced before use)
      staging/          installs in progress (a crashed one is cleared by the next)
      install.lock      one install at a time

Crash safety: until the ``active`` rename, nothing the server reads has changed; after it,
``active`` names a complete, fsynced, canaried bundle. A power cut at any point therefore leaves
the old bundle or the new one active, never a mix — tested by SIGKILL at many points.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemm.bundle.manifest import MANIFEST_NAME, Manifest
from edgemm.bundle.verify import verify_bundle
from edgemm.deploy.archive import (
    DEFAULT_MAX_TOTAL_BYTES,
    PREFIX,
    ArchiveReader,
    Statement,
    open_archive,
    parse_statement,
    parse_version,
    read_signed_statement,
)
from edgemm.deploy.keys import load_public_key
from edgemm.errors import (
    ArchiveError,
    BundleError,
    DowngradeError,
    UsageError,
)
from edgemm.fsio import (
    check_output_dir,
    naming,
    os_errors,
    require_free_space,
    stat_input,
)
from edgemm.staging import fsync_directory, missing_directories, remove_empty, staged_directory

log = logging.getLogger("edgemm.deploy")

# Fault injection for the crash tests: SIGKILL this process at the N-th durability checkpoint.
_KILL_AT = int(os.environ.get("EDGEMM_FAULT_KILL_AT", "0") or 0)
_checkpoints = 0


def _checkpoint() -> None:
    global _checkpoints
    _checkpoints += 1
    if _KILL_AT and _checkpoints == _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class InstalledBundle:
    """One installed bundle: its directory, the bundle inside, and its signed statement."""

    root: Path
    statement: dict[str, Any]

    @property
    def bundle(self) -> Path:
        """The bundle directory of this installation."""
        return self.root / "bundle"

    @property
    def version(self) -> str:
        """The version the signed statement gives."""
        return str(self.statement["version"])

    @property
    def name(self) -> str:
        """The bundle name the signed statement gives."""
        return str(self.statement["name"])


class DeviceStore:
    """A directory of installed bundles with an atomically switched ``active`` pointer."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    # -- reading ----------------------------------------------------------------------

    def _resolve(self, link: str) -> InstalledBundle | None:
        pointer = self.root / link
        try:
            target = os.readlink(pointer)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BundleError(f"{pointer} is not a store pointer ({exc}).") from None
        parts = Path(target).parts
        if len(parts) != 2 or parts[0] != "bundles" or parts[1] in ("", ".", ".."):
            raise BundleError(f"{pointer} points outside the store ({target!r}).",
                              hint="Re-install a bundle with edgemm install.")
        root = self.root / target
        try:
            statement = json.loads((root / "statement.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleError(f"{root} has no readable statement ({exc}).") from None
        return InstalledBundle(root, statement)

    def active(self) -> InstalledBundle | None:
        """The active bundle, or ``None`` before the first install."""
        return self._resolve("active")

    def previous(self) -> InstalledBundle | None:
        """The bundle that was active before the current one (what ``--rollback`` restores), or None."""
        return self._resolve("previous")

    # -- writing ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, action: str) -> Iterator[None]:
        """Lock the store for a change and leave it as it was found if the change fails.

        Filesystem faults become typed errors naming the store (:func:`edgemm.fsio.os_errors`);
        ``staging/`` is removed when the change ends, and a failed change also removes what it
        created: the store directory itself, ``bundles/`` (while empty) and ``install.lock``.
        """
        check_output_dir(self.root, "Store")
        created = missing_directories(self.root)
        existed = {name: os.path.lexists(self.root / name) for name in ("bundles", "install.lock")}
        with os_errors(action, path=self.root):
            try:
                with self._locked():
                    try:
                        yield
                    finally:
                        shutil.rmtree(self.root / "staging", ignore_errors=True)
            except BaseException:
                with contextlib.suppress(OSError):
                    if not existed["bundles"]:
                        (self.root / "bundles").rmdir()
                    if not existed["install.lock"]:
                        (self.root / "install.lock").unlink(missing_ok=True)
                remove_empty(created)
                raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "install.lock", "a+b") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"Another install into {self.root} is running.",
                                 hint="Wait for it to finish.") from None
            yield

    def _switch(self, link: str, target_id: str) -> None:
        tmp = self.root / f".{link}.new"
        tmp.unlink(missing_ok=True)
        os.symlink(f"bundles/{target_id}", tmp)
        _checkpoint()
        os.replace(tmp, self.root / link)
        _checkpoint()
        fsync_directory(self.root)
        _checkpoint()

    def install(self, archive: Path, trusted_key: Path, *, device: str = "cpu", canary: bool = True,
                allow_same_version: bool = False,
                max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> dict[str, Any]:
        """Verify, extract, canary and atomically activate a signed archive.

        Order: signature (before any bundle byte is read) → version (no downgrades) → free
        space → extraction into staging with every name, size and hash checked against the
        signed statement → fsync → bundle verification → canary on this machine → move into
        ``bundles/`` → switch ``active`` → re-verify, rolling back on failure.

        Returns:
            ``{"installed": version, "previous": version|None, "id": ..., "canary": {...}}``.

        Raises:
            SignatureError / DowngradeError (exit 4), ArchiveError, BundleError, GoldenSetError.
        """
        stat_input(archive, "Archive")
        public_key = load_public_key(trusted_key)
        action = f"install {archive} into the store {self.root}"
        with self._writing(action):
            staging_root = self.root / "staging"
            shutil.rmtree(staging_root, ignore_errors=True)  # leftovers of an interrupted install
            (self.root / "bundles").mkdir(parents=True, exist_ok=True)
            with open_archive(archive) as reader:
                statement = read_signed_statement(reader, public_key)
                current = self.active()
                self._check_version(statement, current, allow_same_version)
                self._check_space(statement, max_total_bytes)
                install_id = f"{statement.version}-{statement.digest[:12]}"
                if current is not None and current.root.name == install_id:
                    raise DowngradeError(f"Version {statement.version} is already active.")
                final = self.root / "bundles" / install_id
                # Staged under staging/ (removed when this install ends, and by the next one if
                # this one is killed) and renamed into bundles/ only once extracted, fsynced,
                # verified and canaried.
                with staged_directory(final, replace=True, staging_root=staging_root, action=action) as work:
                    self._extract(reader, statement, work / "bundle")
                    (work / "statement.json").write_bytes(statement.raw)
                    _checkpoint()
                    # Every byte was hashed against the signed statement while it was written; what
                    # is left to prove is that the statement and the manifest describe the same files.
                    manifest = verify_bundle(work / "bundle", check_hashes=False)
                    _check_statement_matches(statement, manifest)
                    report = self._canary(work / "bundle", device) if canary else {"skipped": True}
            _checkpoint()
            self._activate(install_id, current)
            self._prune()
        log.info("installed %s %s (was %s)", statement.name, statement.version, current.version if current else None)
        return {"installed": statement.version, "name": statement.name, "id": install_id,
                "previous": current.version if current else None, "canary": _canary_summary(report)}

    def _activate(self, install_id: str, current: InstalledBundle | None) -> None:
        """Switch ``previous`` and ``active`` to the new bundle; on any failure put both pointers
        back and drop the new bundle unless a pointer still names it (the store is as it was)."""
        before = {link: self._pointer(link) for link in ("previous", "active")}
        try:
            if current is not None:
                self._switch("previous", current.root.name)
            self._switch("active", install_id)
            # the pointer must resolve to the complete bundle (its bytes were hashed above)
            verify_bundle(self.root / "bundles" / install_id / "bundle", check_hashes=False)
        except BaseException:
            with contextlib.suppress(OSError):  # best effort: the old bundle is complete either way
                for link, target in before.items():
                    if self._pointer(link) != target:
                        self._restore_pointer(link, target)
                if install_id not in {Path(t).name for t in before.values() if t}:
                    shutil.rmtree(self.root / "bundles" / install_id, ignore_errors=True)
            raise

    def _pointer(self, link: str) -> str | None:
        try:
            return os.readlink(self.root / link)
        except OSError:
            return None

    def _restore_pointer(self, link: str, target: str | None) -> None:
        if target is None:
            (self.root / link).unlink(missing_ok=True)
        else:
            self._switch(link, Path(target).name)

    def rollback(self) -> dict[str, Any]:
        """Make the previous bundle active again (it stays verified and complete)."""
        with self._writing(f"roll back the store {self.root}"):
            current, previous = self.active(), self.previous()
            if previous is None or current is None:
                raise UsageError("There is no previous bundle to roll back to.")
            verify_bundle(previous.bundle, check_hashes=True)
            self._switch("previous", current.root.name)
            self._switch("active", previous.root.name)
        return {"active": previous.version, "previous": current.version}

    # -- steps ------------------------------------------------------------------------

    @staticmethod
    def _check_version(statement: Statement, current: InstalledBundle | None, allow_same: bool) -> None:
        if current is None:
            return
        new, old = parse_version(statement.version), parse_version(current.version)
        if new < old or (new == old and not allow_same):
            raise DowngradeError(
                f"Archive version {statement.version} is not newer than the active {current.version}.",
                hint="Pack the bundle with a higher --version; downgrades are refused.")

    def _check_space(self, statement: Statement, cap: int) -> None:
        total = statement.total_bytes
        if total > cap:
            raise ArchiveError(f"The archive unpacks to {total} bytes; the cap is {cap}.")
        # Headroom so that the kiosk keeps working after the install (logs, the server's files).
        require_free_space(self.root, total, f"bundle {statement.name} {statement.version}",
                           headroom=total // 10 + 64 * 2**20, headroom_reason="10 % of it + 64 MiB kept free")

    @staticmethod
    def _extract(reader: ArchiveReader, statement: Statement, dest: Path) -> None:
        dest.mkdir(parents=True)
        for path, size, digest in statement.files:
            member = reader.next_member()
            if member is None:
                raise ArchiveError(f"The archive ends before {path!r}.")
            if member.name != PREFIX + path:
                raise ArchiveError(f"Unexpected archive member {member.name!r} (expected {PREFIX + path!r}): "
                                   "unlisted, duplicated or out of order.")
            if member.size != size:
                raise ArchiveError(f"{path!r} is {member.size} bytes in the archive; the signed size is {size}.")
            target = dest / path
            for parent in reversed(target.relative_to(dest).parents):
                folder = dest / parent
                if not folder.exists():
                    folder.mkdir()
                elif folder.is_symlink() or not folder.is_dir():
                    raise ArchiveError(f"{parent} is not a plain directory.")
            hasher = hashlib.sha256()
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(target, flags, 0o644)
            with naming(target), os.fdopen(fd, "wb") as out:
                for chunk in reader.stream(member):
                    hasher.update(chunk)
                    out.write(chunk)
                    _checkpoint()
                out.flush()
                os.fsync(out.fileno())
            if hasher.hexdigest() != digest:
                raise ArchiveError(f"{path!r} does not match its signed sha256.", hint="The archive is corrupt.")
        if reader.next_member() is not None:
            raise ArchiveError("The archive has members beyond the signed list.")

    @staticmethod
    def _canary(bundle: Path, device: str) -> dict[str, Any]:
        from edgemm.runtime.predictor import Predictor

        with Predictor.load(bundle, device=device) as predictor:
            return predictor.check_golden()

    def _prune(self) -> None:
        keep = {b.root.name for b in (self.active(), self.previous()) if b is not None}
        for entry in (self.root / "bundles").iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)


def _check_statement_matches(statement: Statement, manifest: Manifest) -> None:
    """The signed statement lists exactly the manifest's files with the manifest's hashes."""
    if manifest.name != statement.name:
        raise ArchiveError(f"The statement names {statement.name!r} but the bundle is {manifest.name!r}.")
    signed = {path: digest for path, _, digest in statement.files if path != MANIFEST_NAME}
    listed = {entry.path: entry.sha256 for entry in manifest.files}
    if signed != listed:
        differ = sorted(set(signed.items()) ^ set(listed.items()))[:5]
        raise ArchiveError(f"The signed statement and the bundle's manifest disagree on {differ}.",
                           hint="Pack the bundle again with edgemm pack.")


def _canary_summary(report: dict[str, Any]) -> dict[str, Any]:
    if report.get("skipped"):
        return {"skipped": True}
    return {"passed": report["passed"], "artifact": report["artifact"], "device": report["device"]}


__all__ = ["DeviceStore", "InstalledBundle", "parse_statement"]
