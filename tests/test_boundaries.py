"""Meta-tests: the edge side is torch-free and offline; every export family is exercised."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

EDGE_PACKAGES = ("edgemm/bundle", "edgemm/runtime", "edgemm/bench", "edgemm/data", "edgemm/serve",
                 "edgemm/deploy", "edgemm/triton")
EDGE_MODULES = ("edgemm/errors.py", "edgemm/cli/__init__.py", "edgemm/cli/predict_cmd.py",
                "edgemm/cli/inspect_cmd.py", "edgemm/cli/verify_cmd.py", "edgemm/cli/bench_cmd.py",
                "edgemm/cli/serve_cmd.py", "edgemm/cli/deploy_cmd.py", "edgemm/cli/triton_cmd.py")
# The designated build-side corners of edge packages: the peers (PyTorch / Optimum) of bench, and
# the digit-match generator (scikit-learn's scans), which only the workstation runs.
BUILD_SIDE_EXCEPTIONS = ("edgemm/bench/peers.py",)
NEVER_ON_THE_EDGE = ("torch", "transformers", "optimum")
BUILD_ONLY = (*NEVER_ON_THE_EDGE, "onnxscript", "safetensors")


def _edge_files() -> list[Path]:
    files = [p for pkg in EDGE_PACKAGES for p in (REPO / pkg).rglob("*.py")
             if p.relative_to(REPO).as_posix() not in BUILD_SIDE_EXCEPTIONS]
    return files + [REPO / m for m in EDGE_MODULES]


def test_edge_side_never_imports_build_side_libraries():
    """Static check (any import, even inside a function) over the edge packages."""
    offenders = []
    for path in _edge_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in BUILD_ONLY or name.startswith(("edgemm.export", "edgemm.models", "edgemm.optimize",
                                                         "edgemm.train")):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_edge_modules_import_with_torch_blocked():
    """Dynamic check: import every edge module with torch/transformers/optimum made impossible."""
    modules = sorted({
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in _edge_files()
    })
    code = f"""
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'optimum'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Blocker())
import importlib
for name in {modules!r}:
    importlib.import_module(name)
leaked = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum')]
assert not leaked, leaked
print('ok', len({modules!r}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_importing_edgemm_is_cheap():
    code = "import sys, edgemm, edgemm.runtime, edgemm.cli; print(sorted(m for m in ('onnxruntime','numpy','torch','PIL') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_registered_family_is_exported_by_a_test():
    from edgemm.models.specs import families

    exercised = {
        "fusion": "tests/models/test_fusion_export.py",
        "clip": "tests/models/test_clip_export.py",
        "siglip": "tests/models/test_clip_export.py",
        "vilt": "tests/models/test_hf_vilt.py",
        "blip": "tests/models/test_hf_blip.py",
        "chinese_clip": "tests/models/test_hf_chinese_clip.py",
        "vision_text_dual_encoder": "tests/models/test_hf_dual_encoder.py",
        "clap": "tests/models/test_hf_clap.py",
        "hf-image-classification": "tests/models/test_hf_image_classification.py",
        "hf-audio-classification": "tests/models/test_hf_audio_classification.py",
        "hf-text-classification": "tests/models/test_hf_text.py",
        "hf-token-classification": "tests/models/test_hf_token.py",
    }
    assert set(families()) == set(exercised), "a new export family needs an export test"
    for path in exercised.values():
        assert (REPO / path).is_file()


def test_tests_cannot_reach_the_network():
    import socket

    import pytest

    with socket.socket() as sock, pytest.raises(OSError, match="may not reach the network"):
        sock.connect(("93.184.216.34", 80))
