"""``edgemm build-engine``, and engines in ``inspect`` / ``verify`` — without TensorRT."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import edgemm.runtime.trt_compat as trt_compat
from edgemm.cli import COMMANDS, cli
from tests.tensorrt.conftest import DESKTOP, NO_TRT, ORIN_NANO, engine_record, make_bundle


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    # The lead registers the command in edgemm/cli/__init__.py; tests do not depend on that edit.
    monkeypatch.setitem(COMMANDS, "build-engine", ("edgemm.cli.build_engine_cmd", "build_engine", "Build TensorRT engines."))


def _invoke(*args):
    return CliRunner().invoke(cli, list(args))


def _host(monkeypatch, host):
    monkeypatch.setattr(trt_compat, "probe_host", lambda **_: host)


def test_build_engine_without_tensorrt_exits_3_with_hint(tmp_path, monkeypatch):
    import edgemm.tensorrt.build as build

    def missing():
        from edgemm._deps import require

        return require("tensorrt_not_installed_here", extra="trt", purpose="building TensorRT engines")

    monkeypatch.setattr(build, "import_tensorrt", missing)
    bundle = make_bundle(tmp_path / "b")
    result = _invoke("build-engine", str(bundle), "--fp16")
    assert result.exit_code == 3, result.output
    assert "Error:" in result.output and "pip install 'edgemm[trt]'" in result.output
    result = _invoke("build-engine", str(bundle), "--fp16", "--json")
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["error"]["code"] == "E_MISSING_DEPENDENCY"


def test_emit_trtexec_works_without_tensorrt(tmp_path):
    bundle = make_bundle(tmp_path / "b", extra_onnx=True)
    result = _invoke("build-engine", str(bundle), "--fp16", "--emit-trtexec", "--trt-version", "10.3.0", "--jetson",
                     "--profile", "name=b1;batch=1", "--profile", "name=b8;batch=1,4,8")
    assert result.exit_code == 0, result.output
    assert "trtexec" in result.output and "--fp16" in result.output and "model/fp32.onnx" in result.output
    assert "--memPoolSize=workspace:1024M" in result.output  # Jetson default
    assert result.output.count("--minShapes=x:") == 2
    # The MatMul is not a LayerNorm, so no layer names: the command says to add them if any.
    result = _invoke("build-engine", str(bundle), "--fp16", "--emit-trtexec", "--trt-version", "11.0.0", "--json")
    doc = json.loads(result.stdout)
    assert doc["ok"] and "--stronglyTyped" in doc["trtexec"][0]["command"]
    assert "model/fp16.onnx" in doc["trtexec"][0]["command"]  # TensorRT 11 builds FP16 from the fp16 graph


def test_emit_trtexec_from_recipe(tmp_path):
    bundle = make_bundle(tmp_path / "b", extra_onnx=True)
    result = _invoke("build-engine", str(bundle), "--target", "jetson-orin-nano", "--emit-trtexec",
                     "--trt-version", "10.3.0", "--jetson", "--json")
    assert result.exit_code == 0, result.output
    (item,) = json.loads(result.stdout)["trtexec"]
    assert item["engine"] == "trt-fp16" and [p["name"] for p in item["plan"]["profiles"]] == ["interactive", "batch"]


def test_build_engine_usage_errors(tmp_path):
    bundle = make_bundle(tmp_path / "b")
    result = _invoke("build-engine", str(bundle), "--int8", "--emit-trtexec", "--trt-version", "10.3.0")
    assert result.exit_code == 2 and "Q/DQ INT8 artifact" in result.output
    result = _invoke("build-engine", str(bundle), "--emit-trtexec", "--profile", "batch=1,2")
    assert result.exit_code == 2 and "min,opt,max" in result.output


def test_inspect_shows_engines_and_compat(tmp_path, monkeypatch):
    _host(monkeypatch, DESKTOP)
    bundle = make_bundle(tmp_path / "b", engines=[("trt-fp16", engine_record(ORIN_NANO))])
    result = _invoke("inspect", str(bundle), "--json")
    assert result.exit_code == 0, result.output
    (engine,) = json.loads(result.stdout)["engines"]
    assert engine["record"]["tensorrt"] == "10.3.0" and engine["record"]["jetpack"] == "6.1"
    assert engine["compat"]["status"] == "mismatch"
    text = _invoke("inspect", str(bundle)).output
    assert "TensorRT 10.3.0, sm 8.7" in text and "JetPack 6.1" in text and "here: mismatch" in text


def test_verify_refuses_a_mismatched_engine(tmp_path, monkeypatch):
    _host(monkeypatch, DESKTOP)
    bundle = make_bundle(tmp_path / "b", engines=[("trt-fp16", engine_record(ORIN_NANO))])
    result = _invoke("verify", str(bundle))
    assert result.exit_code == 4, result.output
    assert "mismatch" in result.output and "build-engine" in result.output
    doc = json.loads(_invoke("verify", str(bundle), "--json").stdout)
    assert doc["ok"] is False and doc["error"]["code"] == "E_ENGINE_MISMATCH"


def test_verify_without_tensorrt_reports_engine_not_checked(tmp_path, monkeypatch):
    _host(monkeypatch, NO_TRT)
    bundle = make_bundle(tmp_path / "b", engines=[("trt-fp16", engine_record(ORIN_NANO))])
    result = _invoke("verify", str(bundle))
    assert result.exit_code == 0, result.output
    assert "not checked here" in result.output
    assert _invoke("verify", str(bundle), "--device", "tensorrt").exit_code == 4


def test_verify_refuses_version_compatible_engine_everywhere(tmp_path, monkeypatch):
    _host(monkeypatch, NO_TRT)
    bundle = make_bundle(tmp_path / "b", engines=[("trt-vc", engine_record(ORIN_NANO, version_compatible=True))])
    result = _invoke("verify", str(bundle))
    assert result.exit_code == 4 and "refused" in result.output
