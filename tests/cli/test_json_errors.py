"""``--json`` prints exactly one JSON document on stdout in every case: success, a user error, a
usage error and a bug (``E_INTERNAL``, whose traceback still goes to stderr)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from edgemm.cli import cli
from edgemm.data.synthetic import synthesize_image
from tests.conftest import REPO


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("json-img") / "seven.png"
    Image.fromarray(synthesize_image(40, 50, seed=3)).save(path)
    return path


def _boom(*_args, **_kwargs):
    raise ZeroDivisionError("a bug inside edgemm")


def test_success_user_error_and_bug_each_print_one_document(tiny_bundle, image, monkeypatch):
    runner = CliRunner()
    ok = runner.invoke(cli, ["predict", str(tiny_bundle), "--text", "7", "--image", str(image), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True

    user = runner.invoke(cli, ["predict", str(tiny_bundle), "--text", "7", "--image", str(image.with_name("no.png")),
                               "--json"])
    assert user.exit_code == 2
    assert json.loads(user.stdout)["error"]["code"] == "E_PATH" and "Error:" in user.stderr

    monkeypatch.setattr("edgemm.runtime.predictor.postprocess", _boom)
    bug = runner.invoke(cli, ["predict", str(tiny_bundle), "--text", "7", "--image", str(image), "--json"])
    assert bug.exit_code == 1 and isinstance(bug.exception, ZeroDivisionError)  # the bug itself propagates
    error = json.loads(bug.stdout)["error"]
    assert json.loads(bug.stdout)["ok"] is False and error["code"] == "E_INTERNAL"
    assert "ZeroDivisionError: a bug inside edgemm" in error["message"] and "bug" in error["hint"]

    plain = runner.invoke(cli, ["predict", str(tiny_bundle), "--text", "7", "--image", str(image)])
    assert plain.exit_code == 1 and plain.stdout == ""  # without --json: nothing on stdout


def test_a_bug_in_any_json_command_prints_e_internal(tiny_bundle, monkeypatch):
    monkeypatch.setattr("edgemm.cli.inspect_cmd.summary", _boom)
    result = CliRunner().invoke(cli, ["inspect", str(tiny_bundle), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["error"]["code"] == "E_INTERNAL"


def test_a_bug_in_a_real_process_keeps_its_traceback_and_prints_one_document(tiny_bundle, image):
    script = textwrap.dedent(f"""
        import edgemm.runtime.predictor as predictor

        def boom(*args, **kwargs):
            raise ZeroDivisionError("a bug inside edgemm")

        predictor.postprocess = boom
        from edgemm.cli import main
        main(["predict", {str(tiny_bundle)!r}, "--text", "7", "--image", {str(image)!r}, "--json"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1
    document = json.loads(proc.stdout)
    assert document == {"ok": False, "error": {
        "code": "E_INTERNAL", "message": "Internal error: ZeroDivisionError: a bug inside edgemm",
        "hint": document["error"]["hint"], "details": {"exception": "ZeroDivisionError"}}}
    assert "Traceback (most recent call last)" in proc.stderr and "ZeroDivisionError: a bug inside edgemm" in proc.stderr


@pytest.mark.parametrize("args", [
    ["predict", "{bundle}", "--text", "7", "--device", "tpu", "--json"],  # a bad choice, after --json
    ["predict", "{bundle}", "--no-such-option", "--json"],  # fails before --json is even parsed
    ["predict", "--json"],  # missing BUNDLE
    ["inspect", "--json"],
])
def test_usage_errors_with_json_print_one_document_and_exit_2(tiny_bundle, args):
    result = CliRunner().invoke(cli, [a.format(bundle=tiny_bundle) for a in args])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "E_USAGE" and error["message"] and "--help" in error["hint"]
    assert "Usage:" in result.stderr


def test_without_json_usage_errors_print_nothing_on_stdout(tiny_bundle):
    result = CliRunner().invoke(cli, ["predict", str(tiny_bundle), "--device", "tpu"])
    assert result.exit_code == 2 and result.stdout == ""
