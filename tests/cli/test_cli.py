"""The command line: help, exit codes, --json, and bad inputs that must not show tracebacks."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from edgemm.cli import COMMANDS, cli
from edgemm.data.synthetic import synthesize_image
from tests.conftest import REPO, run_edge


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgemm", *args], capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "answer.png"
    Image.fromarray(synthesize_image(40, 50, seed=2)).save(path)
    return path


def _bomb_png(width: int, height: int) -> bytes:
    """A valid grayscale PNG header claiming a huge size, with a tiny compressed body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\x00" * (width // 8 + 1) * 16)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_help_is_fast_and_torch_free(command):
    code, out, err, guard = run_edge(*command, "--help")
    assert code == 0, err
    assert "Usage:" in out
    assert guard["modules"] == [] and guard["sockets"] == 0


def test_export_help_names_every_target():
    from edgemm.recipes import available_recipes

    code, out, err, _ = run_edge("export", "--help")
    assert code == 0, err
    text = " ".join(out.split()).replace("- ", "-")  # click wraps the help, also after hyphens
    names = available_recipes()
    assert {"default", "cpu-kiosk", "desktop-gpu", "jetson-orin-nano", "jetson-orin-agx", "triton"} <= set(names)
    assert all(name in text for name in names) and "export/*.toml" not in text


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "edgemm" in result.output


def test_export_inspect_verify_predict_round_trip(tiny_ckpt, tmp_path, image):
    out = tmp_path / "b"
    exported = _run("export", str(tiny_ckpt), "-o", str(out), "--json")
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(exported.stdout)  # exactly one JSON document on stdout
    assert doc["ok"] and doc["parity"]["passed"] and doc["bundle"] == str(out)

    again = _run("export", str(tiny_ckpt), "-o", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr

    code, stdout, err, _ = run_edge("inspect", str(out), "--json")
    info = json.loads(stdout)
    assert code == 0 and info["artifacts"][0]["precision"] == "fp32" and info["inputs"][0]["profile"]["batch"] == [1, 2, 64]
    code, stdout, err, _ = run_edge("inspect", str(out))
    assert code == 0 and "fp32" in stdout and "parity" in stdout

    code, stdout, err, _ = run_edge("verify", str(out), "--json")
    report = json.loads(stdout)
    assert code == 0 and report["ok"] and report["artifacts"][0]["passed"]
    assert report["artifacts"][0]["preprocessing"]["checked"]

    code, stdout, err, _ = run_edge("predict", str(out), "--text", "7", "--text", "seven", "--image", str(image),
                                    "--image", str(image), "--json")
    assert code == 0, err
    assert len(json.loads(stdout)["predictions"]) == 2


def test_force_replaces_atomically(tiny_ckpt, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = CliRunner().invoke(cli, ["export", str(tiny_ckpt), "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert not (out / "old.txt").exists() and (out / "edgemm.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_export_bad_inputs(tmp_path, tiny_ckpt):
    runner = CliRunner()

    def export(src, *extra):
        return runner.invoke(cli, ["export", str(src), "-o", str(tmp_path / "out"), *extra])

    missing = export(tmp_path / "nope")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr

    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    unknown = export(gpt)
    assert unknown.exit_code == 2 and "not a checkpoint edgemm knows" in unknown.stderr and "--spec" in unknown.stderr

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_ckpt, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bad = export(corrupt)
    assert bad.exit_code == 1 and "safetensors" in bad.stderr and "Hint:" in bad.stderr

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_ckpt, pickled)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    refused = export(pickled)
    assert refused.exit_code == 2 and "--allow-pickle" in refused.stderr
    allowed = export(pickled, "--allow-pickle")
    assert allowed.exit_code == 0, allowed.output

    bare = tmp_path / "weights.pt"
    bare.write_bytes(b"\x80\x04junk")
    assert export(bare).exit_code == 2

    recipe = export(tiny_ckpt, "--target", "no-such-target", "--force")
    assert recipe.exit_code == 2 and "default" in recipe.stderr

    labels = export(tiny_ckpt, "--labels", "onlyone", "--force")
    assert labels.exit_code == 2 and "two distinct" in labels.stderr
    assert not (tmp_path / "out").exists() or (tmp_path / "out" / "edgemm.json").is_file()


def test_failed_export_leaves_nothing(tmp_path, tiny_ckpt):
    corrupt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, corrupt)
    config = json.loads((corrupt / "fusion_config.json").read_text())
    config["fusion"]["dim"] = 48  # weights no longer fit the config
    (corrupt / "fusion_config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(cli, ["export", str(corrupt), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "do not match" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_predict_bad_inputs(tiny_bundle, tmp_path, image):
    cases = []
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all")
    cases.append((["--text", "7", "--image", str(garbage)], 2, "image"))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(20000, 20000))
    cases.append((["--text", "7", "--image", str(bomb)], 2, "pixels"))
    cases.append((["--text", "7"], 2, "requires image"))
    cases.append((["--text", "7", "--image", str(tmp_path / "missing.png")], 2, "does not exist"))
    cases.append((["--text", "x" * 5000, "--image", str(image)], 2, "characters"))
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF....WAVE")
    cases.append((["--text", "7", "--image", str(image), "--audio", str(wav)], 2, "does not take audio"))
    cases.append((["--text", "7", "--image", str(image), "--device", "cuda"], 3, "CUDA"))
    cases.append((["--text", "7", "--image", str(image), "--artifact", "int8"], 2, "no artifact 'int8'"))
    cases.append(([], 2, "Nothing to predict"))
    for args, code, needle in cases:
        rc, out, err, guard = run_edge("predict", str(tiny_bundle), *args, "--json")
        assert rc == code, (args, err)
        assert needle in err and "Hint:" in err and "Traceback" not in err, (args, err)
        assert json.loads(out)["ok"] is False  # --json: the error is the one JSON document
        assert guard["modules"] == []


def test_export_without_the_export_extra_names_it(tiny_ckpt, tmp_path):
    code, _, err, _ = run_edge("export", str(tiny_ckpt), "-o", str(tmp_path / "b"))
    assert code == 3, err
    assert "pip install 'edgemm[export]'" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_usage_errors_exit_2():
    assert _run("export").returncode == 2
    assert _run("predict").returncode == 2
    result = _run("frobnicate")
    assert result.returncode == 2 and "No such command" in result.stderr
