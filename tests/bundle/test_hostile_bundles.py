"""Hostile or damaged bundles are refused before any parser reads their files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgemm.bundle.manifest import MANIFEST_NAME, Manifest
from edgemm.bundle.verify import verify_bundle
from edgemm.bundle.writer import write_manifest
from edgemm.errors import BundleError, InputPathError, RuntimeFailure
from tests.conftest import run_edge


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST_NAME).read_text())


def _write(bundle: Path, data: dict) -> None:
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))


def _refused(bundle: Path, match: str) -> None:
    from edgemm.runtime import Predictor

    with pytest.raises(BundleError, match=match):
        verify_bundle(bundle)
    with pytest.raises(BundleError, match=match):
        Predictor.load(bundle, device="cpu")


def test_pristine_bundle_verifies(bundle):
    manifest = verify_bundle(bundle)
    assert {f.path for f in manifest.files} == {"model/fp32.onnx", "golden.npz", "text/tokenizer.json"}


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "model/../../x", "a\\b", "C:/x", "./golden.npz",
                                  "model//fp32.onnx", "bad\x00name"])
def test_manifest_paths_that_leave_the_bundle(bundle, path, no_parsers):
    data = _manifest(bundle)
    data["files"][0]["path"] = path
    _write(bundle, data)
    _refused(bundle, "Unsafe")


def test_artifact_path_escaping(bundle, no_parsers):
    data = _manifest(bundle)
    data["artifacts"][0]["path"] = "../../etc/passwd"
    _write(bundle, data)
    _refused(bundle, "Unsafe")


def test_unlisted_file(bundle, no_parsers):
    (bundle / "model" / "extra.onnx").write_bytes(b"x")
    _refused(bundle, "does not list: model/extra.onnx")


def test_unlisted_directory(bundle, no_parsers):
    (bundle / "cache").mkdir()
    _refused(bundle, "unknown directory: cache")


def test_symlinked_file(bundle, no_parsers, tmp_path):
    target = tmp_path / "outside.json"
    target.write_text("{}")
    tok = bundle / "text" / "tokenizer.json"
    tok.unlink()
    tok.symlink_to(target)
    _refused(bundle, "symlink")


def test_symlinked_directory_and_root(bundle, no_parsers, tmp_path):
    (bundle / "link").symlink_to("/etc")
    _refused(bundle, "symlink")
    (bundle / "link").unlink()
    root_link = tmp_path / "root-link"
    root_link.symlink_to(bundle)
    with pytest.raises(BundleError, match="symlink"):
        verify_bundle(root_link)


def test_hardlink(bundle, no_parsers, tmp_path):
    os.link(bundle / "golden.npz", tmp_path / "second-name")
    _refused(bundle, "hard-linked")


def test_fifo(bundle, no_parsers):
    os.mkfifo(bundle / "model" / "pipe")
    _refused(bundle, "special file")


@pytest.mark.parametrize("name", ["model/fp32.onnx", "text/tokenizer.json"])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_one_flipped_byte_in_each_file(bundle, name, where, no_parsers):
    path = bundle / name
    data = bytearray(path.read_bytes())
    index = {"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[where]
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    _refused(bundle, "sha256")


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_flipped_golden_set_is_refused_before_it_is_read(bundle, where, monkeypatch):
    """The predictor hashes what it reads (model, tokenizer); the golden set is hashed whenever
    something reads it (verify, canary), and by a full verification."""
    from edgemm.runtime import Predictor
    from edgemm.runtime.golden import load_golden

    path = bundle / "golden.npz"
    data = bytearray(path.read_bytes())
    data[{"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[where]] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        verify_bundle(bundle)
    manifest = verify_bundle(bundle, check_hashes=False)
    monkeypatch.setattr(np, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("parsed before hashing")))
    with pytest.raises(BundleError, match=r"golden\.npz does not match its sha256"):
        load_golden(bundle, manifest)
    with Predictor.load(bundle, device="cpu") as predictor:  # never opens golden.npz
        assert predictor.artifact.name == "fp32"


@pytest.mark.parametrize("name", ["model/fp32.onnx", "golden.npz", "text/tokenizer.json"])
def test_truncated_file(bundle, name, no_parsers):
    path = bundle / name
    path.write_bytes(path.read_bytes()[:-7])
    _refused(bundle, "truncated or altered")


def test_missing_file(bundle, no_parsers):
    (bundle / "golden.npz").unlink()
    _refused(bundle, "missing golden.npz")


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(schema="edgemm.bundle/9"), "Unsupported bundle schema"),
    (lambda d: d["files"].append(dict(d["files"][0])), "twice"),
    (lambda d: d["files"][0].update(sha256="zz"), "sha256 hex"),
    (lambda d: d["files"][0].update(bytes=-1), "below 0"),
    (lambda d: d.update(files=[]), "lists no files"),
    (lambda d: d.update(artifacts=[]), "no artifacts"),
    (lambda d: d.update(task="mine bitcoin"), "Unknown task"),
    (lambda d: d["inputs"][0].update(dtype="object"), "Unknown dtype"),
    # One flag per character would ask the CPU for "a", "v", "x" ...: refused, not misread.
    (lambda d: d["artifacts"][0].setdefault("requirements", {}).update(cpu_flags_any="avx512_bf16"),
     r"requirements\.cpu_flags_any should be a list"),
    (lambda d: d["artifacts"][0].setdefault("requirements", {}).update(cpu_flags_any=[1]),
     r"requirements\.cpu_flags_any should be a string"),
])
def test_malformed_manifest(bundle, mutate, match, no_parsers):
    data = _manifest(bundle)
    mutate(data)
    _write(bundle, data)
    _refused(bundle, match)


@pytest.mark.parametrize("text, match", [
    ('{"schema": "edgemm.bundle/1", "schema": "x"}', "duplicate key"),
    ('{"schema": NaN}', "non-finite"),
    ("not json", "not valid JSON"),
    ("\xff\xfe", "not valid JSON"),
])
def test_unparsable_manifest(bundle, text, match, no_parsers):
    (bundle / MANIFEST_NAME).write_bytes(text.encode("utf-8", "surrogateescape") if "\xff" not in text else b"\xff\xfe")
    _refused(bundle, match)


def test_not_a_bundle(tmp_path):
    with pytest.raises(InputPathError):
        verify_bundle(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not an edgemm bundle"):
        verify_bundle(tmp_path / "empty")


def test_cli_refuses_hostile_bundle_without_traceback(bundle):
    (bundle / "evil.sh").write_text("rm -rf /")
    for command in (["inspect"], ["verify"], ["predict", "--text", "x"]):
        code, _, err, guard = run_edge(*command[:1], str(bundle), *command[1:])
        assert code == 1, err
        assert "evil.sh" in err and "Hint:" in err and "Traceback" not in err
        assert guard["modules"] == []


def test_external_data_pointing_outside_is_refused_by_the_runtime(bundle, tmp_path):
    """Even a correctly *listed* ONNX whose weights live outside the bundle never loads them."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(64, dtype=np.float32).tobytes())
    model = onnx.load(str(bundle / "model" / "fp32.onnx"))
    init = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 1
                and i.dims[0] <= 64)
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../../secret.bin"), ("offset", "0"), ("length", str(4 * init.dims[0]))):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(bundle / "model" / "fp32.onnx"))
    manifest = Manifest.from_json((bundle / MANIFEST_NAME).read_text())
    write_manifest(bundle, manifest)  # re-hash: the attacker controls an unsigned manifest
    from edgemm.runtime import Predictor

    with pytest.raises(RuntimeFailure, match="External data path escapes model directory"):
        Predictor.load(bundle, device="cpu")
