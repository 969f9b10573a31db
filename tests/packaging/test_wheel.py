"""The wheel a new user installs: built from this tree, installed into fresh virtual environments.

* The wheel holds every module, every export recipe (``export/*.toml`` as ``edgemm.targets``),
  the kiosk page and the systemd unit.
* **Base install** (torch-free): ``predict``, ``verify``, ``inspect`` and ``bench --peers none``
  run a small bundle; every command that needs an extra says which one (``Error:`` and
  ``Hint: pip install 'edgemm[extra]'``, exit 3, no traceback).
* **``[export,serve]``**: ``export --target cpu-kiosk`` (INT8 variants gated on held-out data),
  then one request answered by ``edgemm serve`` on loopback.

Everything installs with ``pip --no-index`` from the wheelhouse that ``make test`` fills
(:mod:`tests.packaging.wheelhouse`), so nothing here reaches the network. The environments run
from a scratch folder with ``PYTHONPATH`` unset: what runs is the installed wheel, never this tree.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.packaging import wheelhouse
from tests.packaging.test_permissions import wrong_modes
from tests.serve.conftest import Server, stop_server

SOURCE = ("pyproject.toml", "setup.py", "README.md", "edgemm", "export")  # what `pip wheel .` reads
LABELS = ("zero", "one", "two")  # the tiny FusionModel's (tests/factories.py)


@dataclass(frozen=True)
class Env:
    """A fresh virtual environment with the wheel installed."""

    root: Path
    scratch: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def environ(self) -> dict[str, str]:
        """This process's environment without anything that points at the dev tree or its caches."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "EDGEMM_CACHE")}
        return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "EDGEMM_CACHE": str(self.scratch / "cache")}

    def edgemm(self, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
        """``edgemm ARGS`` through the environment's console script, under the default umask."""
        return subprocess.run([str(self.root / "bin" / "edgemm"), *map(str, args)], capture_output=True, text=True,
                              cwd=self.scratch, env=self.environ(), timeout=timeout, umask=0o022)

    def python_code(self, code: str) -> str:
        result = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True,
                                cwd=self.scratch, env=self.environ(), timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


def pip(*args: str | Path, target: Path | None = None, timeout: float = 900) -> None:
    """The dev environment's pip, offline, from the wheelhouse, with the tested constraints."""
    where = ["--python", str(target / "bin" / "python")] if target else []
    command = [sys.executable, "-m", "pip", *where, *map(str, args), "--quiet", "--no-index",
               "--find-links", str(wheelhouse.DEFAULT_FOLDER)]
    subprocess.run(command, check=True, timeout=timeout, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def make_env(root: Path, *requirements: str) -> Env:
    """A new environment (no pip of its own; the dev pip installs into it) holding ``requirements``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    for requirement in requirements:  # in order: torch first, so nothing else picks a torch
        pip("install", "--constraint", wheelhouse.CONSTRAINTS, requirement, target=root)
    scratch = root.with_name(root.name + "-run")
    scratch.mkdir()
    return Env(root, scratch)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the source tree it was built from): ``pip wheel --no-deps`` on a copy of this tree."""
    wheelhouse.ensure()
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    for part in SOURCE:
        origin = wheelhouse.REPO / part
        if origin.is_dir():
            shutil.copytree(origin, source / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(origin, source / part)
    pip("wheel", "--no-deps", "--wheel-dir", root / "dist", source)
    (wheel,) = (root / "dist").glob("edgemm-*.whl")
    return wheel, source


@pytest.fixture(scope="module")
def base_env(built, tmp_path_factory) -> Env:
    return make_env(tmp_path_factory.mktemp("venvs") / "base", str(built[0]))


@pytest.fixture(scope="module")
def export_env(built, tmp_path_factory) -> Env:
    return make_env(tmp_path_factory.mktemp("venvs") / "export-serve", wheelhouse.torch_pin(),
                    f"{built[0]}[{','.join(wheelhouse.EXTRAS)}]")


@pytest.fixture(scope="module")
def answer_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "answer.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def held_out_data(folder: Path) -> Path:
    """A small labelled dataset in the format edgemm.data reads (folder of split files)."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    sizes = {"train": 3, "val": 3, "calibration": 16, "test": 60}  # the gate needs 16 / 50
    words = ("zero", "one", "two", "a cat", "the number", "I think it is", "七", "")
    for split, count in sizes.items():
        rows = []
        for i in range(count):
            image = f"images/{split}-{i}.png"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / image)
            rows.append({"text": f"{words[i % len(words)]} {i}", "image": image, "label": LABELS[i % 3]})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                               encoding="utf-8")
    return folder


def test_wheel_ships_every_module_recipe_and_static_file(built):
    wheel, source = built
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.name for p in (source / "export").glob("*.toml"))
    assert recipes and "cpu-kiosk.toml" in recipes
    expected = {f"edgemm/targets/{name}" for name in recipes}
    expected |= {f"edgemm/serve/static/{p.name}" for p in (source / "edgemm" / "serve" / "static").iterdir()}
    expected |= {"edgemm/serve/systemd/edgemm-serve.service", "edgemm/py.typed"}
    # Every module, namespace packages (a folder without __init__.py) included.
    expected |= {p.relative_to(source).as_posix() for p in (source / "edgemm").rglob("*.py")}
    assert sorted(expected - names) == []
    assert {n.split("/")[0] for n in names} == {"edgemm", wheel.name.split("-py3")[0] + ".dist-info"}


def test_base_install_runs_a_bundle_torch_free(base_env, tiny_bundle, answer_png):
    located = base_env.python_code(
        "import importlib.util as u, edgemm; print(edgemm.__file__); "
        "print([m for m in ('torch', 'transformers', 'onnx', 'sklearn', 'matplotlib', 'starlette') if u.find_spec(m)])")
    where, optional = located.splitlines()
    assert Path(where).is_relative_to(base_env.root) and optional == "[]"

    predicted = base_env.edgemm("predict", tiny_bundle, "--text", "seven", "--image", answer_png, "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["predictions"][0]["label"] in LABELS
    verified = base_env.edgemm("verify", tiny_bundle)
    assert verified.returncode == 0, verified.stderr
    inspected = base_env.edgemm("inspect", tiny_bundle, "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["name"]
    # The torch-free bench: edgemm's own artifacts, cold start and peak RSS included.
    bench = base_env.edgemm("bench", tiny_bundle, "--peers", "none", "--iterations", "3", "--warmup", "1",
                            "--rounds", "1", "--cold-runs", "1", "--json")
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["ok"] and {row["contender"].split(":")[0] for row in report["latency"]} == {"edgemm"}
    assert report["cold_start"] and "Traceback" not in bench.stderr
    # -o without matplotlib: the numbers and bench.html are written, and they say why no plot is.
    out = base_env.scratch / "bench-report"
    reported = base_env.edgemm("bench", tiny_bundle, "--peers", "none", "--iterations", "2", "--warmup", "1",
                               "--rounds", "1", "--cold-runs", "1", "-o", out)
    assert reported.returncode == 0, reported.stderr
    assert {p.name for p in out.iterdir()} == {"bench.json", "bench.csv", "bench.html"}
    assert "edgemm[bench]" in (out / "bench.html").read_text(encoding="utf-8")  # quotes are HTML-escaped there
    assert "pip install 'edgemm[bench]'" in reported.stdout + reported.stderr


MISSING_EXTRA = {  # command line → the extra its hint must name
    "train": (["train", "-o", "{out}"], "export"),
    "export": (["export", "{ckpt}", "-o", "{out}"], "export"),
    "export-cpu-kiosk": (["export", "{ckpt}", "-o", "{out}", "--target", "cpu-kiosk", "--eval-data", "digit-match"],
                         "export"),
    "serve": (["serve", "{bundle}"], "serve"),
    "serve-store": (["serve", "--store", "{out}"], "serve"),
    "bench-digit-match": (["bench", "{bundle}", "--peers", "none", "--eval-data", "digit-match", "--iterations", "1"],
                          "bench"),
    "bench-peer": (["bench", "{bundle}", "--peers", "torch-eager", "--iterations", "1"], "export"),
    "keygen": (["keygen", "--out", "{out}"], "serve"),
    "build-engine": (["build-engine", "{bundle}"], "trt"),
}


@pytest.mark.parametrize("case", sorted(MISSING_EXTRA))
def test_base_install_names_the_extra_a_command_needs(case, base_env, tiny_bundle, tiny_ckpt, tmp_path):
    args, extra = MISSING_EXTRA[case]
    out = tmp_path / "out"
    result = base_env.edgemm(*(a.format(out=out, ckpt=tiny_ckpt, bundle=tiny_bundle) for a in args))
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "Error: " in result.stderr and f"Hint: pip install 'edgemm[{extra}]'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists()  # failed before writing anything
    assert not (base_env.scratch / "cache").exists()  # nothing half-generated


def test_export_with_cpu_kiosk_and_serve_from_the_wheel(export_env, tiny_ckpt, tmp_path, answer_png):
    bundle = tmp_path / "kiosk.bundle"
    exported = export_env.edgemm("export", tiny_ckpt, "-o", bundle, "--target", "cpu-kiosk",
                                 "--eval-data", held_out_data(tmp_path / "data"), "--json", timeout=900)
    assert exported.returncode == 0, exported.stderr
    report = json.loads(exported.stdout)
    assert report["recipe"] == "cpu-kiosk"  # the recipe came out of the wheel (edgemm.targets)
    variants = {v["variant"]: v["outcome"] for v in report["gate"]["variants"]}
    assert set(variants) == {"fp32-opt", "int8", "int8-text", "ov-int8", "ov-bf16", "ov-int8-bf16"}, variants
    # [export,serve] has no openvino: recorded as not built, and the export still succeeds.
    assert variants["ov-int8"] == variants["ov-bf16"] == variants["ov-int8-bf16"] == \
        "not built: openvino not installed (pip install 'edgemm[openvino]')", variants
    assert "fp32" in {a["name"] for a in report["artifacts"]}
    assert wrong_modes(bundle, 0o022) == []  # readable by the kiosk's service user

    port_file, log = tmp_path / "port", tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(export_env.root / "bin" / "edgemm"), "serve", str(bundle), "--device", "cpu",
                                 "--port", "0", "--port-file", str(port_file)], stdout=fh, stderr=subprocess.STDOUT,
                                cwd=export_env.scratch, env=export_env.environ())
    try:
        server = _when_ready(proc, port_file, log)
        body = json.dumps({"text": "seven", "image": base64.b64encode(answer_png.read_bytes()).decode()}).encode()
        answer = server.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
        assert answer.status == 200, answer.body
        assert answer.json()["label"] in LABELS and len(answer.json()["scores"]) == len(LABELS)
    finally:
        stop_server(Server(proc, 0, log))


def test_export_to_triton_without_tritonclient_fails_before_exporting(export_env, tiny_ckpt, tmp_path):
    result = export_env.edgemm("export", tiny_ckpt, "-o", tmp_path / "b", "--target", "triton")
    assert result.returncode == 3, result.stderr
    assert "Error: " in result.stderr and "Hint: pip install" in result.stderr and "tritonclient" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def _when_ready(proc: subprocess.Popen, port_file: Path, log: Path, timeout: float = 180) -> Server:
    """The server once ``/v1/health/ready`` answers 200 (it binds first, then loads the bundle)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"edgemm serve exited with {proc.returncode}:\n{log.read_text()}"
        port = port_file.read_text() if port_file.is_file() else ""
        try:
            if port and (server := Server(proc, int(port), log)).get("/v1/health/ready", timeout=5).status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"edgemm serve was not ready in {timeout} s:\n{log.read_text()}")
