"""A newly installed bundle is picked up by the running server under load, with zero failures."""

from __future__ import annotations

import threading
import time

import pytest

from benchmarks.serve_load import request_mix, run_load
from edgemm.deploy.archive import pack
from edgemm.deploy.keys import generate_keypair
from edgemm.deploy.store import DeviceStore
from edgemm.errors import SignatureError
from tests.serve.conftest import start_server, stop_server


def test_bundle_swap_under_load(serve_bundle, tmp_path):
    key, pub = tmp_path / "k.key", tmp_path / "k.pub"
    generate_keypair(key, pub)
    other_key, other_pub = tmp_path / "o.key", tmp_path / "o.pub"
    generate_keypair(other_key, other_pub)
    v1, v2, forged = tmp_path / "v1.edgemm", tmp_path / "v2.edgemm", tmp_path / "forged.edgemm"
    pack(serve_bundle, v1, key=key, version="1")
    pack(serve_bundle, v2, key=key, version="2")
    pack(serve_bundle, forged, key=other_key, version="9")
    store = tmp_path / "store"
    DeviceStore(store).install(v1, pub)
    srv = start_server(tmp_path, "--store", str(store), "--device", "cpu", "--reload-interval", "0.3")
    try:
        assert srv.get("/v1/model").json()["version"] == "1"
        report: dict = {}
        load = threading.Thread(target=lambda: report.update(run_load(srv.port, request_mix(900, seed=3), 8)))
        load.start()
        time.sleep(1.0)
        DeviceStore(store).install(v2, pub)
        with pytest.raises(SignatureError):
            DeviceStore(store).install(forged, pub)
        deadline = time.monotonic() + 30
        while srv.get("/v1/model").json()["version"] != "2" and time.monotonic() < deadline:
            time.sleep(0.1)
        swapped_during_load = load.is_alive()
        load.join()
        assert srv.get("/v1/model").json()["version"] == "2"
        assert swapped_during_load, "the load finished before the swap: make it longer"
        assert report["server_errors"] == 0 and report["unexpected_count"] == 0, report
        metrics = srv.metrics()
        assert 'edgemm_reloads_total{result="ok"} 1' in metrics
        assert 'version="2"' in metrics
    finally:
        stop_server(srv)
