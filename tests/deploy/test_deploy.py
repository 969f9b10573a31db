"""Signed archives onto a device store: keys, pack, install, refusals, rollback, crash safety."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import MANIFEST_NAME, Manifest
from edgemm.bundle.verify import verify_bundle
from edgemm.bundle.writer import write_manifest
from edgemm.cli import cli
from edgemm.deploy.archive import BLOCK, SIGNATURE, STATEMENT, _header, pack
from edgemm.deploy.store import DeviceStore
from edgemm.errors import ArchiveError, DowngradeError, GoldenSetError, SignatureError
from tests.conftest import REPO


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    assert run("keygen", "--out", str(root / "fleet")).exit_code == 0
    assert run("keygen", "--out", str(root / "other")).exit_code == 0
    assert oct((root / "fleet" / "edgemm-signing.key").stat().st_mode & 0o777) == "0o600"
    return {"key": root / "fleet" / "edgemm-signing.key", "pub": root / "fleet" / "edgemm-signing.pub",
            "other_key": root / "other" / "edgemm-signing.key"}


@pytest.fixture(scope="module")
def archives(tiny_bundle, keys, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archives")
    out = {}
    for version in ("1", "2", "3"):
        out[version] = root / f"v{version}.edgemm"
        assert run("pack", str(tiny_bundle), "-o", str(out[version]), "--key", str(keys["key"]),
                   "--version", version).exit_code == 0
    return out


def installed(store: Path) -> str | None:
    active = DeviceStore(store).active()
    if active is None:
        return None
    verify_bundle(active.bundle, check_hashes=True)  # whatever is active is complete
    return active.version


def test_pack_install_switch_and_rollback(archives, keys, tmp_path):
    store = tmp_path / "store"
    res = run("install", str(archives["1"]), "--store", str(store), "--trusted-key", str(keys["pub"]), "--json")
    doc = json.loads(res.output)
    assert doc["installed"] == "1" and doc["previous"] is None and doc["canary"]["passed"] is True
    assert installed(store) == "1"
    run("install", str(archives["2"]), "--store", str(store), "--trusted-key", str(keys["pub"]))
    assert installed(store) == "2" and DeviceStore(store).previous().version == "1"
    assert run("install", "--store", str(store), "--rollback").exit_code == 0
    assert installed(store) == "1"
    assert not (store / "staging").exists()
    assert run("verify", str(DeviceStore(store).active().bundle)).exit_code == 0


def test_wrong_signature_is_refused_before_extraction(tiny_bundle, archives, keys, tmp_path):
    store = tmp_path / "store"
    DeviceStore(store).install(archives["1"], keys["pub"])
    forged = tmp_path / "forged.edgemm"
    pack(tiny_bundle, forged, key=keys["other_key"], version="9")
    with pytest.raises(SignatureError):
        DeviceStore(store).install(forged, keys["pub"])
    assert installed(store) == "1"
    assert not (store / "staging").exists()  # nothing was staged, nothing is left
    res = CliRunner().invoke(cli, ["install", str(forged), "--store", str(store), "--trusted-key", str(keys["pub"])])
    assert res.exit_code == 4 and "signature" in res.output.lower()


def test_older_or_same_version_is_refused(archives, keys, tmp_path):
    store = tmp_path / "store"
    DeviceStore(store).install(archives["2"], keys["pub"])
    for version in ("1", "2"):
        with pytest.raises(DowngradeError):
            DeviceStore(store).install(archives[version], keys["pub"])
    assert installed(store) == "2"


def test_corrupt_file_is_refused(archives, keys, tmp_path):
    store = tmp_path / "store"
    DeviceStore(store).install(archives["1"], keys["pub"])
    corrupt = tmp_path / "corrupt.edgemm"
    data = bytearray(archives["2"].read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside some bundle file; the signed statement is intact
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        DeviceStore(store).install(corrupt, keys["pub"])
    assert installed(store) == "1"


def test_failing_canary_never_becomes_active(tiny_bundle, archives, keys, tmp_path):
    store = tmp_path / "store"
    DeviceStore(store).install(archives["1"], keys["pub"])
    bad = tmp_path / "bad.bundle"
    shutil.copytree(tiny_bundle, bad)
    manifest = Manifest.from_dict(json.loads((bad / MANIFEST_NAME).read_text()))
    golden = GoldenSet.load(bad / manifest.golden)
    for outputs in golden.artifacts.values():  # record answers the model will not give
        for name in outputs:
            outputs[name] = outputs[name] + 5.0
    golden.save(bad / manifest.golden)
    write_manifest(bad, manifest)
    archive = tmp_path / "bad.edgemm"
    pack(bad, archive, key=keys["key"], version="5")
    with pytest.raises(GoldenSetError):
        DeviceStore(store).install(archive, keys["pub"])
    assert installed(store) == "1"


def _tar(members: list[tuple[str, bytes]], *, kinds: dict[str, bytes] | None = None) -> bytes:
    out = bytearray()
    for name, data in members:
        header = bytearray(_header(name, len(data), 0))
        if kinds and name in kinds:
            header[156:157] = kinds[name]
            header[148:156] = b" " * 8
            header[148:156] = f"{sum(header):06o}".encode() + b"\0 "
        out += header + data + b"\0" * (-len(data) % BLOCK)
    return bytes(out + b"\0" * 2 * BLOCK)


def _signed(statement: dict, key: Path) -> tuple[bytes, bytes]:
    from edgemm.deploy.keys import load_private_key

    raw = json.dumps(statement).encode()
    return raw, load_private_key(key).sign(raw)


def _entry(path: str, data: bytes) -> dict:
    return {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("case", ["traversal", "symlink", "unlisted", "duplicate", "size_bomb", "truncated",
                                  "unsigned", "absolute", "device", "wrong_size"])
def test_hostile_archives_are_refused(case, keys, tmp_path):
    data = b"hello"
    files = [_entry("edgemm.json", data)]
    members = [("bundle/edgemm.json", data)]
    kinds = None
    if case == "traversal":
        files, members = [_entry("../escape", data)], [("bundle/../escape", data)]
    elif case == "absolute":
        files, members = [_entry("/etc/x", data)], [("bundle//etc/x", data)]
    elif case == "symlink":
        kinds = {"bundle/edgemm.json": b"2"}
    elif case == "device":
        kinds = {"bundle/edgemm.json": b"3"}
    elif case == "unlisted":
        members.append(("bundle/extra.bin", data))
    elif case == "duplicate":
        members.append(("bundle/edgemm.json", data))
    elif case == "size_bomb":
        files = [{"path": "edgemm.json", "bytes": 2**50, "sha256": "0" * 64}]
    elif case == "wrong_size":
        members = [("bundle/edgemm.json", data + b"!")]
    statement = {"schema": "edgemm.archive/1", "name": "x", "version": "7", "files": files}
    raw, sig = _signed(statement, keys["key"])
    head = [(STATEMENT, raw)] + ([] if case == "unsigned" else [(SIGNATURE, sig)])
    blob = _tar(head + members, kinds=kinds)
    if case == "truncated":
        blob = blob[: len(blob) - 3 * BLOCK]
    archive = tmp_path / f"{case}.edgemm"
    archive.write_bytes(blob)
    store = tmp_path / "store"
    with pytest.raises(ArchiveError):
        DeviceStore(store).install(archive, keys["pub"])
    assert DeviceStore(store).active() is None
    assert not (tmp_path / "escape").exists() and not (store / "escape").exists()


def _install_proc(archive: Path, store: Path, pub: Path, kill_at: int | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if kill_at:
        env["EDGEMM_FAULT_KILL_AT"] = str(kill_at)
    return subprocess.Popen([sys.executable, "-m", "edgemm", "install", str(archive), "--store", str(store),
                             "--trusted-key", str(pub)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_install_killed_at_random_points_leaves_old_or_new(archives, keys, tmp_path):
    """SIGKILL at >= 50 points of an install (durability checkpoints and random times)."""
    base = tmp_path / "base"
    DeviceStore(base).install(archives["1"], keys["pub"])
    # How many checkpoints a full install passes: count them by killing far past the end.
    probe = tmp_path / "probe"
    shutil.copytree(base, probe, symlinks=True)
    from edgemm.deploy import store as store_module

    os.environ["EDGEMM_FAULT_KILL_AT"] = "0"
    before = store_module._checkpoints
    DeviceStore(probe).install(archives["2"], keys["pub"], canary=False)
    total = store_module._checkpoints - before
    assert total >= 10
    rng = random.Random(7)
    points = sorted(set(range(1, total + 1)) | {rng.randint(1, total) for _ in range(10)})
    outcomes = {"1": 0, "2": 0}
    runs = 0
    for kill_at in points[:60]:
        store = tmp_path / f"k{kill_at}"
        shutil.copytree(base, store, symlinks=True)
        proc = _install_proc(archives["2"], store, keys["pub"], kill_at)
        proc.wait(timeout=120)
        outcomes[installed(store)] += 1
        runs += 1
        shutil.rmtree(store)
    for delay in (rng.uniform(0.2, 1.5) for _ in range(max(0, 55 - runs))):
        store = tmp_path / "timed"
        shutil.copytree(base, store, symlinks=True)
        proc = _install_proc(archives["2"], store, keys["pub"], None)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        outcomes[installed(store)] += 1
        runs += 1
        # The next install after a crash completes normally.
        DeviceStore(store).install(archives["3"], keys["pub"], canary=False)
        assert installed(store) == "3"
        shutil.rmtree(store)
    assert runs >= 50
    assert outcomes["1"] > 0 and outcomes["2"] > 0, outcomes


def test_archive_statement_rejects_bad_versions(tiny_bundle, keys, tmp_path):
    res = CliRunner().invoke(cli, ["pack", str(tiny_bundle), "-o", str(tmp_path / "x.edgemm"), "--key",
                                   str(keys["key"]), "--version", "1.0-beta"])
    assert res.exit_code == 2 and "Version" in res.output
    assert not (tmp_path / "x.edgemm").exists()
