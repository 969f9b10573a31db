"""``edgemm serve --artifact NAME`` serves that artifact; an unknown name is refused before serving."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from edgemm.bundle.golden import GoldenSet
from edgemm.bundle.manifest import Artifact
from edgemm.bundle.verify import verify_bundle
from edgemm.bundle.writer import write_manifest
from edgemm.cli import cli
from tests.serve.conftest import start_server, stop_server


def _two_artifacts(tiny_bundle: Path, root: Path) -> Path:
    """A copy of the tiny bundle with a second artifact, ``fp32-b`` (the same graph)."""
    bundle = root / "two.bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = verify_bundle(bundle, check_hashes=False)
    fp32 = manifest.artifact("fp32")
    rel = "model/fp32-b.onnx"
    shutil.copyfile(bundle / fp32.path, bundle / rel)
    manifest.artifacts.append(Artifact(name="fp32-b", path=rel, kind="onnx", precision="fp32", files=[rel],
                                       providers=fp32.providers, requirements=dict(fp32.requirements)))
    golden = GoldenSet.load(bundle / manifest.golden)
    golden.artifacts["fp32-b"] = golden.artifacts["fp32"]
    golden.save(bundle / manifest.golden)
    write_manifest(bundle, manifest)
    return bundle


def test_serve_artifact_serves_the_named_artifact(tiny_bundle: Path, tmp_path: Path):
    bundle = _two_artifacts(tiny_bundle, tmp_path)
    server = start_server(tmp_path, str(bundle), "--device", "cpu", "--artifact", "fp32-b",
                          env={"EDGEMM_CACHE": str(tmp_path / "cache")})
    try:
        model = server.get("/v1/model").json()
        assert model["artifact"]["name"] == "fp32-b"
        assert server.get("/v1/health/ready").json()["artifact"] == "fp32-b"
    finally:
        stop_server(server)


def test_serve_refuses_an_unknown_artifact_with_the_names(tiny_bundle: Path):
    result = CliRunner().invoke(cli, ["serve", str(tiny_bundle), "--artifact", "int4", "--port", "0"])
    assert result.exit_code == 2, result.output
    assert "no artifact 'int4'" in result.stderr and "fp32" in result.stderr


def test_serve_help_names_the_option():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0 and "--artifact" in result.output
