"""Integrity while serving: a served bundle's files are re-verified on SIGHUP and on an interval; a
change makes the server not ready with the reason, a device store rolls back to its previous
bundle, and restored files serve again — on real ``edgemm serve`` processes and real files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgemm.deploy.archive import pack
from edgemm.deploy.keys import generate_keypair
from edgemm.deploy.store import DeviceStore
from tests.serve.conftest import Server, png_bytes, start_server, stop_server

IMAGE = {"Content-Type": "image/png"}


def model_file(bundle: Path) -> Path:
    """The ONNX file of the bundle's (only) artifact: what the server runs."""
    manifest = json.loads((bundle / "edgemm.json").read_text())
    (artifact,) = manifest["artifacts"]
    return bundle / artifact["files"][0]


def flip_byte(path: Path) -> None:
    """Change one byte in the middle of ``path`` in place (same size, same inode)."""
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))


def wait_until(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def metric(srv: Server, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(srv.metrics()) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def predict(srv: Server):
    return srv.request("POST", "/v1/predict?text=seven", png_bytes(), IMAGE)


def assert_not_ready_naming(srv: Server, rel: str) -> None:
    ready = srv.get("/v1/health/ready")
    assert ready.status == 503 and ready.headers["retry-after"]
    message = ready.json()["error"]["message"]
    assert rel in message and "sha256" in message and str(srv.log.parent) not in message, message
    res = predict(srv)
    assert (res.status, res.code) == (503, "not_ready") and rel in res.json()["error"]["message"]
    assert metric(srv, "edgemm_ready") == 0 and metric(srv, "edgemm_integrity_failed") == 1
    assert metric(srv, "edgemm_integrity_checks_total", result="failed") >= 1


@pytest.fixture
def bundle(serve_bundle, tmp_path) -> Path:
    """A copy of the tiny bundle that a test may damage."""
    return Path(shutil.copytree(serve_bundle, tmp_path / "kiosk.bundle"))


def break_then_restore(srv: Server, bundle: Path, poke: Callable[[], None]) -> str:
    """Flip a byte of the model file, ``poke``, see the server not ready naming it; restore it,
    ``poke``, see it ready and answering again. Returns the file's path in the bundle."""
    model = model_file(bundle)
    rel, original = model.relative_to(bundle).as_posix(), model.read_bytes()
    flip_byte(model)
    poke()
    wait_until(lambda: srv.get("/v1/health/ready").status == 503, "not ready after the change")
    assert_not_ready_naming(srv, rel)
    assert srv.get("/v1/health/live").status == 200  # alive, just not serving
    model.write_bytes(original)
    poke()
    wait_until(lambda: srv.get("/v1/health/ready").status == 200, "ready again after the restore")
    assert predict(srv).status == 200
    assert metric(srv, "edgemm_integrity_failed") == 0 and metric(srv, "edgemm_ready") == 1
    return rel


def test_sighup_notices_a_changed_model_file_and_a_restored_one(bundle, tmp_path):
    srv = start_server(tmp_path, str(bundle), "--device", "cpu", "--verify-interval", "0")
    try:
        assert predict(srv).status == 200
        rel = break_then_restore(srv, bundle, lambda: srv.proc.send_signal(signal.SIGHUP))
        log = srv.log.read_text()
        assert f"failed re-verification: {rel} does not match its sha256" in log
        assert "files verified again, serving" in log
    finally:
        stop_server(srv)


def test_the_interval_notices_it_without_a_signal_and_predictions_go_on_meanwhile(bundle, tmp_path):
    srv = start_server(tmp_path, str(bundle), "--device", "cpu", "--verify-interval", "0.2")
    try:
        # The healthy bundle is re-hashed over and over while predictions are answered.
        wait_until(lambda: metric(srv, "edgemm_integrity_checks_total", result="ok") >= 3, "three passing checks")
        # Predictions are answered while further checks pass: keep asking until two more have run
        # (a count of requests would race the interval: cached answers take a millisecond).
        before = metric(srv, "edgemm_integrity_checks_total", result="ok")
        deadline = time.monotonic() + 90
        while True:
            assert predict(srv).status == 200
            if metric(srv, "edgemm_integrity_checks_total", result="ok") >= before + 2:
                break
            assert time.monotonic() < deadline, "no further integrity checks while predicting"
        break_then_restore(srv, bundle, lambda: None)
    finally:
        stop_server(srv)


def test_an_unlisted_file_and_a_missing_file_are_changes_too(bundle, tmp_path):
    srv = start_server(tmp_path, str(bundle), "--device", "cpu", "--verify-interval", "0")
    try:
        planted = bundle / "model" / "extra.onnx"
        planted.write_bytes(b"not listed")
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: srv.get("/v1/health/ready").status == 503, "not ready after a planted file")
        assert "model/extra.onnx" in srv.get("/v1/health/ready").json()["error"]["message"]
        planted.unlink()
        golden = bundle / "golden.npz"
        saved = golden.read_bytes()
        golden.unlink()
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "golden.npz" in (srv.get("/v1/health/ready").json().get("error") or {}).get("message", ""),
                   "the missing file named")
        golden.write_bytes(saved)
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: srv.get("/v1/health/ready").status == 200, "ready again")
    finally:
        stop_server(srv)


@pytest.fixture
def store(serve_bundle, tmp_path) -> Path:
    """A device store with version 1 installed, then version 2 (active; 1 is previous)."""
    key, pub = tmp_path / "k.key", tmp_path / "k.pub"
    generate_keypair(key, pub)
    root = tmp_path / "store"
    for version in ("1", "2"):
        pack(serve_bundle, tmp_path / f"v{version}.edgemm", key=key, version=version)
        DeviceStore(root).install(tmp_path / f"v{version}.edgemm", pub)
    return root


def served_version(srv: Server) -> str | None:
    res = srv.get("/v1/model")
    return res.json()["version"] if res.status == 200 else None


def test_a_store_rolls_back_from_a_corrupted_active_bundle(store, tmp_path):
    v1, v2 = DeviceStore(store).previous(), DeviceStore(store).active()
    srv = start_server(tmp_path, "--store", str(store), "--device", "cpu", "--verify-interval", "0")
    try:
        assert served_version(srv) == "2"
        flip_byte(model_file(v2.bundle))
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: served_version(srv) == "1" and srv.get("/v1/health/ready").status == 200,
                   "the rollback to version 1")
        assert predict(srv).status == 200
        assert DeviceStore(store).active().version == "1"  # the store's pointers switched too
        assert metric(srv, "edgemm_reloads_total", result="rollback") == 1
        assert "rolled back to version 1" in srv.log.read_text()

        # Now version 1 breaks too, and its previous (the corrupted 2) cannot take over: not ready
        # until version 1 is restored.
        break_then_restore(srv, v1.bundle, lambda: srv.proc.send_signal(signal.SIGHUP))
        assert served_version(srv) == "1"
    finally:
        stop_server(srv)


def _read_only(path: Path) -> list[str]:
    """Run the server in a mount namespace where ``path`` is read-only (as the shipped unit mounts the store)."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(path)]


def test_a_read_only_store_serves_the_previous_bundle_without_switching_it(store, tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a read-only bind mount needs root and unshare")
    probe = os.system(f"unshare -m sh -c 'mount --bind {store} {store} && mount -o remount,bind,ro {store}' 2>/dev/null")
    if probe != 0:
        pytest.skip("this machine does not allow a read-only bind mount in a mount namespace")
    flip_byte(model_file(DeviceStore(store).active().bundle))
    # At start: the active bundle (2) fails verification, so the server starts on version 1.
    srv = start_server(tmp_path, "--store", str(store), "--device", "cpu", "--verify-interval", "0",
                       wrap=_read_only(store))
    try:
        assert served_version(srv) == "1" and predict(srv).status == 200
        assert DeviceStore(store).active().version == "2"  # the store could not be switched
        log = srv.log.read_text()
        assert "read-only" in log.lower() and f"edgemm install --store {store} --rollback" in log
        srv.proc.send_signal(signal.SIGHUP)  # the store watcher does not go back to the corrupted 2
        wait_until(lambda: metric(srv, "edgemm_integrity_checks_total", result="ok") >= 1, "a passing check")
        assert served_version(srv) == "1"
    finally:
        stop_server(srv)
