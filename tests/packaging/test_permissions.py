"""What edgemm publishes is readable by the kiosk's other local users, unless the umask says otherwise.

``tempfile.mkdtemp`` makes ``0o700`` directories; a bundle staged that way would be unreadable by
the service user that runs ``edgemm serve``. Every published tree must carry the mode a plain
``mkdir`` / ``open`` gives under the caller's umask: ``0o755`` / ``0o644`` under the default
``022``, ``0o700`` / ``0o600`` under a restrictive ``077``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgemm.cli import cli


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def run(*args: str) -> None:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


def wrong_modes(root: Path, mask: int, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Every directory and regular file under ``root`` (itself included) whose mode is not the umask's."""
    want = {"dir": 0o777 & ~mask, "file": 0o666 & ~mask}
    found = []
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode) else None
        if kind is None or path.name in skip:  # store pointers are symlinks
            continue
        if stat.S_IMODE(info.st_mode) != want[kind]:
            found.append(f"{path.relative_to(root.parent)}: {oct(stat.S_IMODE(info.st_mode))}, want {oct(want[kind])}")
    return found


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("perm-keys")
    run("keygen", "--out", str(root))
    return {"key": root / "edgemm-signing.key", "pub": root / "edgemm-signing.pub"}


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_bundles_stores_and_triton_repositories_follow_the_umask(mask, tiny_ckpt, signing_key, tmp_path):
    pytest.importorskip("tritonclient", reason="Triton repositories need the triton extra")
    with umask(mask):
        bundle = tmp_path / "out" / "kiosk.bundle"  # parents created by the export too
        run("export", str(tiny_ckpt), "-o", str(bundle))
        run("triton", str(bundle), str(tmp_path / "triton-repo"))
        archive = tmp_path / "kiosk.edgemm"
        run("pack", str(bundle), "-o", str(archive), "--key", str(signing_key["key"]), "--version", "1")
        store = tmp_path / "store"
        run("install", str(archive), "--store", str(store), "--trusted-key", str(signing_key["pub"]))
    assert wrong_modes(tmp_path / "out", mask) == []
    assert wrong_modes(tmp_path / "triton-repo", mask) == []
    assert wrong_modes(store, mask, skip=("active", "previous")) == []
    assert wrong_modes(archive, mask) == []
    assert (store / "active").is_symlink()
