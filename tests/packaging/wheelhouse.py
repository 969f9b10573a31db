"""The wheels that the wheel test installs from: downloaded once, the one step that needs PyPI.

``make test`` fills it before pytest starts (``python -m tests.packaging.wheelhouse``), so the
test itself installs with ``pip --no-index``: offline like every other test, and from exactly
the versions pinned in ``.ci/constraints.txt``. It holds the build backend, the base
dependencies, the ``export`` and ``serve`` extras, and the torch this dev environment runs (the
CPU build lies on the machine's disk; pinning it keeps pip from pulling CUDA wheels). A stamp
records what it was filled for; a change to ``pyproject.toml``, the constraints or torch
refills it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / ".ci" / "constraints.txt"
EXTRAS = ("export", "serve")  # what the wheel test installs besides the base
DEFAULT_FOLDER = Path(sys.prefix) / "wheelhouse"  # beside the dev environment, gone with it


def torch_pin() -> str:
    """``torch==X.Y.Z`` of the torch installed here (its local ``+cpu`` tag dropped)."""
    return f"torch=={metadata.version('torch').split('+')[0]}"


def requirements() -> list[str]:
    """The build backend, the base dependencies and :data:`EXTRAS`, as ``pyproject.toml`` lists them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    optional = project["project"]["optional-dependencies"]
    return [*project["build-system"]["requires"], *project["project"]["dependencies"],
            *(req for extra in EXTRAS for req in optional[extra])]


def _fingerprint(pins: list[str]) -> str:
    return hashlib.sha256(json.dumps([pins, CONSTRAINTS.read_text(encoding="utf-8")]).encode()).hexdigest()


def ensure(folder: Path = DEFAULT_FOLDER) -> Path:
    """Fill ``folder`` unless its stamp says it already holds these requirements; returns it.

    Raises:
        subprocess.CalledProcessError: pip could not download (no network and nothing there).
    """
    pins = [torch_pin(), *requirements()]
    want = _fingerprint(pins)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as lock:  # concurrent test runs share it
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = folder / ".complete"
        if stamp.is_file() and stamp.read_text() == want:
            return folder
        shutil.rmtree(folder)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(folder),
                        "--constraint", str(CONSTRAINTS), *pins], check=True)
        stamp.write_text(want)
    return folder


if __name__ == "__main__":
    print(ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FOLDER))
