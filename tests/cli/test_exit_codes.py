"""Exit codes as the README says: 2 for a bad path, option or name the user gave, never a traceback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgemm.cli import cli


@pytest.fixture()
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize("args", [
    ["keygen", "--out", "{file}"],
    ["train", "-o", "{file}"],
    ["bench", "{bundle}", "--peers", "none", "-o", "{file}"],
])
def test_an_output_directory_that_is_a_file_is_a_usage_error(args, a_file, tiny_bundle):
    result = CliRunner().invoke(cli, [a.format(file=a_file, bundle=tiny_bundle) for a in args])
    assert result.exit_code == 2, result.output
    assert "is a file" in result.stderr and "Traceback" not in result.output
    assert a_file.read_text() == "not a directory"


def test_serving_a_bundle_that_does_not_exist_is_refused_at_once(tmp_path):
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "typo.bundle"), "--port", "0"])
    assert result.exit_code == 2 and "does not exist" in result.stderr


@pytest.mark.parametrize("command", [
    ["predict", "{bundle}", "--text", "7", "--artifact", "int4", "--json"],
    ["build-engine", "{bundle}", "--emit-trtexec", "--artifact", "int4", "--json"],
])
def test_an_unknown_artifact_name_is_a_usage_error(command, tiny_bundle):
    result = CliRunner().invoke(cli, [a.format(bundle=tiny_bundle) for a in command])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "E_UNKNOWN_ARTIFACT" and "no artifact 'int4'" in error["message"] and "fp32" in error["hint"]
