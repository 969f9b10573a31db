"""The ``[triton]`` table of an export recipe (``export/triton.toml``) → :class:`RepositoryOptions`."""

from __future__ import annotations

from typing import Any

from edgemm.errors import RecipeError
from edgemm.triton.repository import RepositoryOptions

# key → (type, RepositoryOptions field)
_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "name": (str, "name"),
    "artifacts": (list, "artifacts"),
    "version": (int, "version"),
    "device": (str, "device"),
    "instances": (int, "instances"),
    "max_batch_size": (int, "max_batch_size"),
    "preferred_batch_sizes": (list, "preferred_batch_sizes"),
    "queue_delay_us": (int, "queue_delay_us"),
    "ort_ep": (str, "ort_ep"),
    "threads": (int, "threads"),
    "text_padding": (str, "text_padding"),
    "warmup": (bool, "warmup"),
}


def options_from_recipe(table: dict[str, Any], *, recipe: str = "recipe", force: bool = False) -> RepositoryOptions:
    """Build repository options from a recipe's ``[triton]`` table.

    Args:
        table: The parsed ``[triton]`` table.
        recipe: The recipe file name, for messages.
        force: Replace an existing repository directory.

    Raises:
        RecipeError: An unknown key or a value of the wrong type (exit 2).
    """
    values: dict[str, Any] = {"force": force}
    for key, value in table.items():
        if key not in _KEYS:
            raise RecipeError(f"{recipe}: unknown key {key!r} in [triton].", hint=f"Valid keys: {', '.join(_KEYS)}.")
        expected, field_name = _KEYS[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise RecipeError(f"{recipe}: {key} in [triton] has the wrong type ({type(value).__name__}).")
        if key == "artifacts" and not all(isinstance(v, str) for v in value):
            raise RecipeError(f"{recipe}: [triton] artifacts must be artifact names.")
        if key == "preferred_batch_sizes" and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise RecipeError(f"{recipe}: [triton] preferred_batch_sizes must be integers.")
        values[field_name] = tuple(value) if isinstance(value, list) else value
    return RepositoryOptions(**values)
