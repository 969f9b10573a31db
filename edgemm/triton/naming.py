"""Model names of a Triton repository: what Triton accepts, and the name of each role's model.

With the base name ``N`` (``--name``, else the bundle's name sanitised): ``N`` is the ensemble
(or the similarity model), ``N_python`` the ensemble over the Python-backend model variant,
``N_preprocess`` / ``N_postprocess`` the Python-backend pre- and postprocessing, ``N_<artifact>``
the onnxruntime / tensorrt model of an artifact and ``N_<artifact>_python`` that artifact on
ONNX Runtime inside the Python backend.
"""

from __future__ import annotations

import re

from edgemm.errors import UsageError

__all__ = ["ROLES", "check_name", "model_name", "sanitize"]

# Model name by role, from the base name and (for the models that run one) the artifact's name.
ROLES = {
    "ensemble": "{base}",
    "python_ensemble": "{base}_python",
    "preprocess": "{base}_preprocess",
    "postprocess": "{base}_postprocess",
    "backend_model": "{base}_{artifact}",
    "python_model": "{base}_{artifact}_python",
}

# What Triton accepts as a model directory name (and so as a model name).
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_name(name: str, *, hint: str) -> str:
    """Return ``name`` if Triton accepts it as a model name.

    Args:
        name: The model name.
        hint: What the user should do when it is refused.

    Returns:
        ``name``, unchanged.

    Raises:
        UsageError: The name has characters Triton refuses, or more than 100 of them.
    """
    if not _NAME_OK.match(name):
        raise UsageError(f"Model name {name!r} is not usable by Triton.", hint=hint)
    return name


def sanitize(name: str) -> str:
    """``name`` with every run of characters Triton refuses replaced by ``-`` (at most 80 characters).

    Args:
        name: A bundle or artifact name.

    Returns:
        A non-empty name part (``model`` when nothing usable is left).
    """
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._") or "model"
    return clean[:80]


def model_name(base: str, role: str, artifact: str | None = None) -> str:
    """The name of a model of the repository.

    Args:
        base: The repository's base name ``N``.
        role: One of :data:`ROLES`.
        artifact: The artifact's name (sanitised here), for the roles that run one.

    Returns:
        The model name.

    Raises:
        ValueError: An unknown role, or an artifact role without its artifact (a bug).
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if "{artifact}" in ROLES[role] and artifact is None:
        raise ValueError(f"the {role} model needs an artifact name")
    return ROLES[role].format(base=base, artifact=sanitize(artifact or ""))
