"""Export recipes: one TOML per deployment target under the top-level ``export/`` folder.

Recipes resolve by name (packaged with edgemm, e.g. ``--target cpu-kiosk``) or by path
(``--target ./my-kiosk.toml``). Unknown sections or keys are errors, never silently ignored.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgemm.errors import RecipeError
from edgemm.runtime.compare import Tolerance

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

PRECISIONS = ("fp32-opt", "fp16", "int8-dynamic", "int8-static", "mixed")
BASES = ("optimized", "plain")
NUMBER = (float, int)
_SCHEMA: dict[str, dict[str, Any]] = {
    "": {"name": str, "description": str},
    "export": {"exporter": str, "opset": int},
    "parity": {"atol": NUMBER, "rtol": NUMBER, "min_cosine": NUMBER, "min_top1": NUMBER},
    "optimize": {"graph": bool},
    "gate": {"budget": NUMBER, "metric": str, "repair_rounds": int, "repair_fraction": NUMBER},
    "calibration": {"method": str, "samples": int},
    "runtime": {"device": str},
    "limits": {"max_batch": int, "max_seq": int, "workspace_mb": int, "memory_mb": int},
    "tensorrt": {"build": bool, "device": str, "precisions": list, "artifacts": list, "profiles": list, "dla_core": int,
                 "gpu_fallback": bool, "layernorm_fp32": bool, "hardware_compatibility": str,
                 "builder_optimization_level": int, "waive_fp16_overflow": bool},
    # Checked key by key in edgemm.triton.recipe (same names as `edgemm triton` options).
    "triton": {"name": str, "artifacts": list, "version": int, "device": str, "instances": int,
               "max_batch_size": int, "preferred_batch_sizes": list, "queue_delay_us": int,
               "ort_ep": str, "threads": int, "text_padding": str, "warmup": bool},
    "variants": {"name": str, "precision": str, "base": str, "per_channel": bool, "reduce_range": bool,
                 "calibration": str, "fallback": list, "modalities": dict, "providers": list},
}


@dataclass(frozen=True)
class VariantSpec:
    """One requested precision variant (a ``[[variants]]`` table)."""

    name: str
    precision: str
    base: str = "optimized"
    per_channel: bool = True
    reduce_range: bool | None = None
    calibration: str | None = None
    fallback: tuple[str, ...] | None = None
    modalities: dict[str, str] = field(default_factory=dict)
    providers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Recipe:
    """A parsed export recipe."""

    name: str
    description: str
    path: str
    exporter: str = "dynamo"
    opset: int | None = None
    tolerance: Tolerance | None = None
    device: str = "auto"
    optimize_graph: bool = False
    variants: tuple[VariantSpec, ...] = ()
    budget_points: float = 0.5
    metric: str = "accuracy"
    repair_rounds: int = 2
    repair_fraction: float = 0.1
    calibration_method: str = "minmax"
    calibration_samples: int = 128
    limits: dict[str, int] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)
    triton: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def recipe_dir() -> Path:
    """Where the packaged recipes live (the repository's ``export/`` folder when run from source)."""
    source_tree = Path(__file__).resolve().parents[2] / "export"
    if source_tree.is_dir():
        return source_tree
    return Path(str(resources.files("edgemm") / "recipes"))


def available_recipes() -> list[str]:
    """Names of the packaged recipes."""
    return sorted(p.stem for p in recipe_dir().glob("*.toml"))


def load_recipe(target: str) -> Recipe:
    """Load a recipe by name or path; RecipeError lists the valid names."""
    path = Path(target)
    if not (target.endswith(".toml") or path.is_file()):
        path = recipe_dir() / f"{target}.toml"
        if not path.is_file():
            raise RecipeError(f"Unknown target {target!r}.",
                              hint=f"Known targets: {', '.join(available_recipes())}; or give a path to a .toml file.")
    if not path.is_file():
        raise RecipeError(f"Recipe file {path} does not exist.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path} is not valid TOML: {exc}") from exc
    _validate(data, path)
    section = lambda key: data.get(key, {})  # noqa: E731
    parity = section("parity")
    variants = tuple(_variant(v, path) for v in data.get("variants", []))
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or "fp32" in names:
        raise RecipeError(f"{path.name}: variant names must be unique and not 'fp32' (always shipped).")
    if any(v.precision in ("fp32-opt", "mixed") or v.base == "optimized" for v in variants) and not section("optimize").get("graph", True):
        raise RecipeError(f"{path.name}: variants on the optimized graph need [optimize] graph = true.")
    gate = section("gate")
    calibration = section("calibration")
    return Recipe(
        name=data.get("name", path.stem),
        description=data.get("description", ""),
        path=str(path),
        exporter=section("export").get("exporter", "dynamo"),
        opset=section("export").get("opset"),
        tolerance=Tolerance.from_dict(parity) if parity else None,
        device=section("runtime").get("device", "auto"),
        optimize_graph=bool(section("optimize").get("graph", bool(variants))),
        variants=variants,
        budget_points=float(gate.get("budget", 0.5)),
        metric=gate.get("metric", "accuracy"),
        repair_rounds=int(gate.get("repair_rounds", 2)),
        repair_fraction=float(gate.get("repair_fraction", 0.1)),
        calibration_method=calibration.get("method", "minmax"),
        calibration_samples=int(calibration.get("samples", 128)),
        limits=dict(section("limits")),
        tensorrt=_tensorrt_section(section("tensorrt"), path),
        triton=dict(section("triton")) if "triton" in data else None,
        raw=data,
    )


def _tensorrt_section(table: dict[str, Any], path: Path) -> dict[str, Any]:
    """``[tensorrt]``: which engines export builds when TensorRT is present (checked here, built later)."""
    if table.get("device", "any") not in ("any", "jetson", "desktop"):
        raise RecipeError(f"{path.name}: [tensorrt] device must be any, jetson or desktop.")
    for i, profile in enumerate(table.get("profiles", [])):
        if not isinstance(profile, dict):
            raise RecipeError(f"{path.name}: [tensorrt] profiles[{i}] must be a table like "
                              "{ name = \"b1\", batch = [1, 1, 1] }.")
    if not all(isinstance(a, str) for a in table.get("artifacts", [])):
        raise RecipeError(f"{path.name}: [tensorrt] artifacts must be artifact names.")
    return dict(table)


def _variant(table: dict[str, Any], path: Path) -> VariantSpec:
    for key in ("name", "precision"):
        if key not in table:
            raise RecipeError(f"{path.name}: a [[variants]] table has no {key!r}.")
    if table["precision"] not in PRECISIONS:
        raise RecipeError(f"{path.name}: unknown precision {table['precision']!r}.", hint=f"Choose one of: {', '.join(PRECISIONS)}.")
    base = table.get("base", "plain" if table["precision"] in ("fp16",) else "optimized")
    if base not in BASES:
        raise RecipeError(f"{path.name}: unknown base {base!r}.", hint=f"Choose one of: {', '.join(BASES)}.")
    modalities = dict(table.get("modalities", {}))
    if table["precision"] == "mixed":
        bad = {k: v for k, v in modalities.items() if k not in ("text", "image", "audio", "fusion", "head")
               or v not in ("int8", "fp32")}
        if bad or not any(v == "int8" for v in modalities.values()):
            raise RecipeError(f"{path.name}: mixed variant {table['name']!r} needs modalities like "
                              "{ text = \"int8\", image = \"fp32\" } with at least one int8 branch.")
    fallback = table.get("fallback")
    if fallback is not None and any(p not in (*PRECISIONS, "fp32") for p in fallback):
        raise RecipeError(f"{path.name}: unknown precision in fallback {fallback}.")
    return VariantSpec(
        name=table["name"], precision=table["precision"], base=base,
        per_channel=bool(table.get("per_channel", True)), reduce_range=table.get("reduce_range"),
        calibration=table.get("calibration"), fallback=tuple(fallback) if fallback is not None else None,
        modalities=modalities, providers=tuple(table["providers"]) if "providers" in table else None,
    )


def _validate(data: dict[str, Any], path: Path) -> None:
    for key, value in data.items():
        if key == "variants":
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise RecipeError(f"{path.name}: variants must be [[variants]] tables.")
            tables = [("[[variants]]", "variants", v) for v in value]
        elif isinstance(value, dict):
            if key not in _SCHEMA or key == "":
                raise RecipeError(f"{path.name}: unknown section [{key}].",
                                  hint=f"Sections: {', '.join(k for k in _SCHEMA if k)}.")
            tables = [(f"[{key}]", key, value)]
        else:
            tables = [("top level", "", {key: value})]
        for where, schema_key, section in tables:
            for name, item in section.items():
                expected = _SCHEMA[schema_key].get(name)
                if expected is None:
                    raise RecipeError(f"{path.name}: unknown key {name!r} in {where}.",
                                      hint=f"Valid keys: {', '.join(_SCHEMA[schema_key])}.")
                if not isinstance(item, expected) or (isinstance(item, bool) and expected is not bool):
                    raise RecipeError(f"{path.name}: {name} in {where} has the wrong type ({type(item).__name__}).")
