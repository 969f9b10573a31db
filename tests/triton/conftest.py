"""Fixtures of the Triton tests: a generated repository and a real tritonserver on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.triton.server import TritonProcess, find_server


@pytest.fixture(scope="session")
def triton_repo(tiny_bundle: Path, work: Path) -> Path:
    """A repository for the shared tiny bundle (CPU instances)."""
    from edgemm.triton import RepositoryOptions, write_repository

    return write_repository(tiny_bundle, work / "triton-repo",
                            RepositoryOptions(device="cpu", queue_delay_us=5000)).repository


@pytest.fixture(scope="module")
def triton_server(triton_repo: Path, tmp_path_factory):
    """tritonserver serving the Python-backend ensemble (and so every model it runs)."""
    pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
    paths, reason = find_server()
    if paths is None:
        pytest.skip(f"cannot run tritonserver here: {reason}")
    name = Path(triton_repo).joinpath("edgemm-triton.json")
    import json

    python_ensemble = json.loads(name.read_text())["python_ensemble"]
    server = TritonProcess(paths, triton_repo, tmp_path_factory.mktemp("tritonserver"), [python_ensemble])
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
