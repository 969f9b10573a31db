"""OpenVINO IR variants (ov-fp32 / ov-bf16 / ov-int8 / ov-int8-bf16): built at export, gated, recorded, hashed, verified."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgemm.bundle.verify import verify_bundle
from edgemm.cli import cli
from edgemm.errors import RecipeError
from edgemm.export.pipeline import ExportOptions, export_bundle
from edgemm.recipes import load_recipe
from edgemm.runtime.backends.openvino import has_bf16
from tests.conftest import REPO

pytest.importorskip("openvino")
pytest.importorskip("nncf")

LABELS = ("zero", "one", "two")  # the tiny FusionModel's (tests/factories.py)
# A random-weight tiny model's accuracy is noise: the budget is wide so that the variants ship and
# their records can be checked; the gate's verdict logic has its own tests (test_variants.py).
RECIPE = """
name = "ov-test"
[optimize]
graph = false
[[variants]]
name = "ov-int8"
precision = "ov-int8"
[[variants]]
name = "ov-bf16"
precision = "ov-bf16"
[[variants]]
name = "ov-fp32"
precision = "ov-fp32"
[[variants]]
name = "ov-int8-bf16"
precision = "ov-int8-bf16"
[gate]
budget = 60
[calibration]
samples = 16
"""
# Blocks openvino / nncf imports in a subprocess (an environment without edgemm[openvino]).
BLOCK_OPENVINO = """
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('openvino', 'nncf'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, _Blocker())
"""


def held_out_data(folder: Path) -> Path:
    """A small labelled dataset (train / val / calibration / test jsonl beside their images)."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for split, count in {"train": 3, "val": 3, "calibration": 16, "test": 50}.items():
        rows = []
        for i in range(count):
            image = f"images/{split}-{i}.png"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / image)
            rows.append({"text": f"it is {i}", "image": image, "label": LABELS[i % 3]})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def export_ov_bundle(work: Path, tiny_ckpt: Path) -> Path:
    """The tiny model exported with :data:`RECIPE`, once per session (tests/runtime shares it)."""
    folder = work / "openvino-variants"
    bundle = folder / "ov.bundle"
    if (bundle / "edgemm.json").exists():
        return bundle
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    recipe_path = folder / "ov-test.toml"
    recipe_path.write_text(RECIPE, encoding="utf-8")
    options = ExportOptions(recipe=load_recipe(str(recipe_path)), eval_data=str(held_out_data(folder / "data")))
    return export_bundle(tiny_ckpt, bundle, options=options).bundle


@pytest.fixture(scope="module")
def ov_bundle(work, tiny_ckpt, edgemm_cache) -> Path:
    return export_ov_bundle(work, tiny_ckpt)


def test_variants_are_gated_through_openvino_and_recorded(ov_bundle):
    manifest = verify_bundle(ov_bundle)
    arts = {a.name: a for a in manifest.artifacts}
    reports = {r["variant"]: r for r in manifest.validation["gate"]["variants"]}
    expected = {"ov-int8": ("int8", "f32"), "ov-fp32": ("fp32", "f32")}
    if has_bf16():
        expected["ov-bf16"] = ("bf16", "bf16")
        expected["ov-int8-bf16"] = ("int8", "bf16")
    else:
        for name in ("ov-bf16", "ov-int8-bf16"):
            assert name not in arts
            assert reports[name]["outcome"].startswith("not applicable: CPU lacks BF16"), reports[name]
    listed = {f.path for f in manifest.files}
    for name, (precision, inference) in expected.items():
        art = arts[name]
        own = "ov-int8" if name == "ov-int8-bf16" else name  # INT8 in BF16 shares ov-int8's IR
        assert art.kind == "openvino" and art.precision == precision and art.providers == ["OpenVINO:CPU"]
        assert art.path == f"model/{own}.xml" and art.files == [f"model/{own}.xml", f"model/{own}.bin"]
        assert set(art.files) <= listed  # hashed like every file
        req = art.requirements
        assert req["engine"] == "openvino" and req["openvino"] and req["inference_precision"] == inference
        assert req["cpu_flags_any"] == (["avx512_bf16", "amx_bf16"] if inference == "bf16" else [])
        gate = art.validation["gate"]
        assert gate["passed"] and gate["nonfinite"] == 0 and gate["samples"] == 50
        assert gate["evaluated_on"].startswith("openvino") and f"INFERENCE_PRECISION_HINT={inference}" in gate["evaluated_on"]
        assert reports[name]["attempts"][-1]["edge_inputs"]["nonfinite"] == 0
    assert arts["ov-fp32"].validation["gate"]["max_abs_diff"] < 1e-3  # FP32 IR: FP32's numerics
    quant = arts["ov-int8"].quantization
    assert quant["method"] in ("nncf-ptq", "nncf-accuracy-control") and quant["engine"] == "openvino"
    assert quant["model_type"] == "transformer"  # the model has a text encoder
    if "ov-int8-bf16" in arts:  # the same quantization, recorded as such, compiled in BF16
        twin = arts["ov-int8-bf16"].quantization
        assert twin["ir_of"] == "ov-int8" and {k: v for k, v in twin.items() if k != "ir_of"} == quant
        assert not (ov_bundle / "model" / "ov-int8-bf16.xml").exists()
    sizes = {f.path: f.bytes for f in manifest.files}
    assert sizes["model/ov-int8.bin"] < 0.5 * sizes["model/ov-fp32.bin"]


def test_verify_runs_the_golden_set_through_openvino_and_catches_a_changed_bin(ov_bundle, tmp_path):
    result = CliRunner().invoke(cli, ["verify", str(ov_bundle), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    checked = {r["artifact"]: r for r in doc["artifacts"]}
    assert {"ov-int8", "ov-fp32"} <= set(checked) and doc["skipped"] == []
    assert all(checked[n]["passed"] for n in checked)
    copy = tmp_path / "tampered"
    shutil.copytree(ov_bundle, copy)
    binary = copy / "model" / "ov-int8.bin"
    data = bytearray(binary.read_bytes())
    data[len(data) // 2] ^= 0xFF
    binary.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["verify", str(copy)])
    assert result.exit_code == 4, result.output


def test_without_openvino_the_variant_is_recorded_and_verify_skips_it(ov_bundle, tmp_path):
    code = BLOCK_OPENVINO + f"""
import json
from pathlib import Path
from types import SimpleNamespace
from edgemm.optimize.openvino import build_openvino_variant
from edgemm.recipes import VariantSpec
for precision in ("ov-int8", "ov-fp32"):
    report = {{"attempts": []}}
    ctx = SimpleNamespace(staging=Path({str(tmp_path)!r}))
    assert build_openvino_variant(ctx, VariantSpec(name=precision, precision=precision, base="plain"), report) is None
    print(json.dumps(report))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines():
        report = json.loads(line)
        assert report["shipped"] is None
        assert report["outcome"] == "not built: openvino not installed (pip install 'edgemm[openvino]')"
    verify = BLOCK_OPENVINO + f"""
import sys
from edgemm.cli import main
sys.argv = ["edgemm", "verify", {str(ov_bundle)!r}]
main()
"""
    proc = subprocess.run([sys.executable, "-c", verify], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ov-int8  skipped: openvino not installed" in proc.stdout, proc.stdout
    assert "golden    fp32     on cpu: ok" in proc.stdout


def test_accuracy_control_mode_runs_on_the_held_out_split(ov_bundle):
    """The retry path (NNCF's accuracy control with the gate's metric and budget) on real NNCF."""
    import openvino as ov

    from edgemm.optimize.openvino import _quantize
    from edgemm.runtime.preprocess.pipeline import Preprocessor

    manifest = verify_bundle(ov_bundle)
    pre = Preprocessor(ov_bundle, manifest.preprocessing, manifest.modalities)
    rng = np.random.default_rng(0)
    feeds = [pre({"text": [f"it is {i}", "seven"], "image": [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)] * 2})
             for i in range(4)]
    ctx = SimpleNamespace(calibration_feeds=feeds, evalset=SimpleNamespace(feeds=feeds, labels=np.array([0, 1] * 4)),
                          modalities=("text", "image"), output="logits", bases={"plain": ov_bundle / "model" / "fp32.onnx"},
                          recipe=SimpleNamespace(gate=SimpleNamespace(metric="accuracy", budget=100.0)))
    model, info = _quantize(ctx, ov.convert_model(str(ov_bundle / "model" / "fp32.onnx")), accuracy_control=True)
    assert info["method"] == "nncf-accuracy-control" and info["max_drop_points"] == 100.0
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


@pytest.mark.parametrize("text, needle", [
    ("[[variants]]\nname = 'x'\nprecision = 'ov-int8'\nbase = 'optimized'\n", "built from the plain graph"),
    ("[[variants]]\nname = 'x'\nprecision = 'ov-int8'\nfallback = ['int8-dynamic']\n", "takes no fallback"),
])
def test_recipes_keep_openvino_variants_on_the_plain_graph(tmp_path, text, needle):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=needle):
        load_recipe(str(path))
    path.write_text("[[variants]]\nname = 'x'\nprecision = 'ov-int8'\n")
    assert load_recipe(str(path)).variants[0].base == "plain"


def test_triton_default_selection_leaves_openvino_artifacts_out(ov_bundle):
    from edgemm.recipes import TritonSection
    from edgemm.triton.errors import UnsupportedArtifactError
    from edgemm.triton.plan import plan_repository

    manifest = verify_bundle(ov_bundle)
    plan = plan_repository(ov_bundle, manifest, TritonSection())
    assert plan.artifacts and all(a.kind == "onnx" for a in plan.artifacts)
    with pytest.raises(UnsupportedArtifactError, match="openvino"):
        plan_repository(ov_bundle, manifest, TritonSection(artifacts=("ov-int8",)))


def test_int8_in_bf16_shares_the_shipped_int8_ir_and_a_failed_gate_leaves_it_alone(tmp_path, monkeypatch):
    """ov-int8-bf16 gates ov-int8's own files (no second quantization, no copy); failing the gate
    must not delete the files the INT8 artifact still ships."""
    from edgemm.optimize import openvino as builder
    from edgemm.optimize.gate import GateResult
    from edgemm.recipes import VariantSpec
    from edgemm.runtime.backends import openvino as backend

    model = tmp_path / "model"
    model.mkdir()
    for suffix in (".xml", ".bin"):
        (model / f"ov-int8{suffix}").write_bytes(b"ir")
    shipped = {"variant": "ov-int8", "shipped": "ov-int8", "quantization": {"method": "nncf-ptq"}}
    float_twin = {"variant": "ov-bf16", "shipped": "ov-bf16"}
    gated = []

    def attempt(ctx, spec, target, inference, precision, report, *, label):
        gated.append((target, inference))
        return GateResult("accuracy", 0.5, 0.9, 40.0, 0.5, 0.5, 0, 1.0, 0, 8, passed=False)

    monkeypatch.setattr(builder, "_attempt", attempt)
    monkeypatch.setattr(backend, "has_bf16", lambda: True)
    ctx = SimpleNamespace(staging=tmp_path, reports=[float_twin, shipped])
    report = {"variant": "ov-int8-bf16", "attempts": []}
    ctx.reports.append(report)
    spec = VariantSpec(name="ov-int8-bf16", precision="ov-int8-bf16", base="plain")
    assert builder.build_openvino_variant(ctx, spec, report) is None
    assert gated == [(model / "ov-int8.xml", "bf16")]  # the INT8 twin, not the float one
    assert report["outcome"].startswith("failed the gate")
    assert (model / "ov-int8.xml").exists() and (model / "ov-int8.bin").exists()
    assert not (model / "ov-int8-bf16.xml").exists()
