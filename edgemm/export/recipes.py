"""Export recipes: one TOML per deployment target under the top-level ``export/`` folder.

Recipes resolve by name (packaged with edgemm, e.g. ``--target default``) or by path
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

_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "": {"name": str, "description": str},
    "export": {"exporter": str, "opset": int},
    "parity": {"atol": (float, int), "rtol": (float, int), "min_cosine": (float, int), "min_top1": (float, int)},
    "runtime": {"device": str},
}


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
    parity = data.get("parity")
    return Recipe(
        name=data.get("name", path.stem),
        description=data.get("description", ""),
        path=str(path),
        exporter=data.get("export", {}).get("exporter", "dynamo"),
        opset=data.get("export", {}).get("opset"),
        tolerance=Tolerance.from_dict(parity) if parity else None,
        device=data.get("runtime", {}).get("device", "auto"),
        raw=data,
    )


def _validate(data: dict[str, Any], path: Path) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in _SCHEMA or key == "":
                raise RecipeError(f"{path.name}: unknown section [{key}].",
                                  hint=f"Sections: {', '.join(k for k in _SCHEMA if k)}.")
            section, where = value, f"[{key}]"
        else:
            section, where, key = {key: value}, "top level", ""
        for name, item in section.items():
            expected = _SCHEMA[key].get(name)
            if expected is None:
                raise RecipeError(f"{path.name}: unknown key {name!r} in {where}.",
                                  hint=f"Valid keys: {', '.join(_SCHEMA[key])}.")
            if not isinstance(item, expected) or isinstance(item, bool):
                raise RecipeError(f"{path.name}: {name} in {where} has the wrong type ({type(item).__name__}).")
