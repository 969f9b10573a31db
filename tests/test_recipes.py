"""Recipes: typed, frozen sections; the schema is the dataclasses; overrides resolved once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgemm.bundle.compare import Tolerance
from edgemm.errors import RecipeError
from edgemm.recipes import (
    Recipe,
    TensorRTSection,
    available_recipes,
    load_recipe,
    parse_recipe,
    recipe_files,
)

EXPORT_DIR = Path(__file__).resolve().parents[1] / "export"


def test_packaged_recipes_are_the_export_folder():
    assert {"default", "cpu-kiosk", "desktop-gpu", "jetson-orin-nano", "jetson-orin-agx", "triton"} <= set(available_recipes())
    assert sorted(p.stem for p in EXPORT_DIR.glob("*.toml")) == available_recipes()
    for name, path in recipe_files().items():
        assert path.read_bytes() == (EXPORT_DIR / f"{name}.toml").read_bytes()
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.description


@pytest.mark.parametrize("path", sorted((EXPORT_DIR.parent / "benchmarks" / "recipes").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_benchmark_recipes_parse(path: Path):
    # The suites export with these: a key the parser does not know would stop a recording midway.
    assert load_recipe(str(path)).variants


def test_sections_are_typed_and_frozen():
    agx = load_recipe("jetson-orin-agx")
    assert agx.limits.max_batch == 32 and agx.limits.workspace_mb == 4096
    assert agx.tensorrt.build and agx.tensorrt.precisions == ("fp16", "int8")
    assert agx.tensorrt.profiles[1] == {"name": "batch", "batch": [1, 8, 32]}
    assert agx.calibration.method == "entropy" and agx.gate.budget == 0.5
    kiosk = load_recipe("cpu-kiosk")
    assert kiosk.export.exporter == "legacy" and kiosk.optimize.graph
    assert [v.name for v in kiosk.variants] == ["fp32-opt", "int8", "int8-text", "ov-int8", "ov-bf16", "ov-int8-bf16"]
    assert all(v.base == "plain" for v in kiosk.variants[3:])
    assert kiosk.variants[2].modalities["text"] == "int8"
    with pytest.raises(dataclasses.FrozenInstanceError):
        kiosk.gate.budget = 5  # type: ignore[misc]


@pytest.mark.parametrize("text, needle, hint", [
    ("[gate]\nbudgett = 1\n", "unknown key 'budgett' in \\[gate\\]", "budget, metric, repair_rounds, repair_fraction"),
    ("[optimise]\ngraph = true\n", "unknown section \\[optimise\\]", "[optimize]"),
    ("[runtime]\ndevice = 'cpu'\n", "unknown section \\[runtime\\]", "[limits]"),
    ("[limits]\nmemory_mb = 3072\n", "unknown key 'memory_mb'", "max_batch, max_seq, workspace_mb"),
    ("[[variants]]\nname = 'x'\nprecision = 'int4'\n", "precision = 'int4' in \\[\\[variants\\]\\] is not one of", "int8-dynamic"),
    ("[[variants]]\nname = 'x'\nprecision = 'mixed'\nmodalities = { text = 'fp32' }\n", "at least one int8", "fusion"),
    ("[[variants]]\nprecision = 'fp16'\n", "has no 'name'", "name and precision"),
    ("[gate]\nbudget = 'half'\n", "budget in \\[gate\\] has the wrong type \\(str\\); it takes a number", None),
    ("[gate]\nmetric = 'f1'\n", "metric = 'f1'", "accuracy, macro_f1"),
    ("[export]\nexporter = 'onnx'\n", "exporter = 'onnx'", "dynamo, legacy"),
    ("[tensorrt]\nprecisions = ['fp8']\n", "unknown engine precision 'fp8'", "fp32, fp16, int8"),
    ("[tensorrt]\nprofiles = [1]\n", "profiles in \\[tensorrt\\] has the wrong type \\(list\\); it takes a list of tables", None),
    ("[triton]\ndevice = 'tpu'\n", "device = 'tpu'", "auto, cpu, gpu"),
    ("[limits]\nmax_batch = true\n", "wrong type \\(bool\\); it takes an integer", None),
    ("[optimize]\ngraph = false\n[[variants]]\nname = 'int8'\nprecision = 'int8-dynamic'\n", "need \\[optimize\\] graph = true", None),
    ("name = \n", "not valid TOML", None),
])
def test_bad_recipes_are_refused_with_the_valid_choices(tmp_path: Path, text: str, needle: str, hint: str | None):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=needle) as info:
        load_recipe(str(path))
    assert info.value.exit_code == 2
    if hint is not None:
        assert hint in (info.value.hint or ""), info.value.hint


def test_unknown_target_lists_the_packaged_ones():
    with pytest.raises(RecipeError, match="Unknown target 'cpu-kisok'") as info:
        load_recipe("cpu-kisok")
    assert "cpu-kiosk" in info.value.hint and "jetson-orin-nano" in info.value.hint


def test_overrides_are_resolved_once_and_checked():
    recipe = load_recipe("cpu-kiosk")
    changed = recipe.override(exporter="dynamo", opset=19, budget=1.5, calibration="entropy",
                              tolerance=Tolerance(atol=1e-3))
    assert (changed.export.exporter, changed.export.opset) == ("dynamo", 19)
    assert changed.gate.budget == 1.5 and changed.gate.metric == recipe.gate.metric
    assert changed.calibration.method == "entropy" and changed.calibration.samples == recipe.calibration.samples
    assert changed.parity == Tolerance(atol=1e-3)
    assert recipe.override() == recipe and recipe.export.exporter == "legacy"
    with pytest.raises(RecipeError, match="not one of the choices"):
        recipe.override(calibration="kl")
    with pytest.raises(RecipeError, match="must not be negative"):
        recipe.override(budget=-1)


def test_every_schema_key_is_read_somewhere():
    """A key the schema accepts must change what edgemm does: each field is read in the package."""
    package = Path(__file__).resolve().parents[1] / "edgemm"
    source = "\n".join(p.read_text(encoding="utf-8") for p in package.rglob("*.py") if p.name != "recipes.py")
    from edgemm import recipes

    for section in (recipes.ExportSection, recipes.OptimizeSection, recipes.GateSection,
                    recipes.CalibrationSection, recipes.LimitsSection, recipes.VariantSpec):
        for f in dataclasses.fields(section):
            assert f".{f.name}" in source, f"{section.__name__}.{f.name} is accepted but never read"
    assert TensorRTSection().build_options() == {}
    assert isinstance(parse_recipe({}, Path("empty.toml")), Recipe)
