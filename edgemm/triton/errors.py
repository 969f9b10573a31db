"""Errors of the Triton model-repository export (typed, with exit codes and hints)."""

from __future__ import annotations

from edgemm.errors import EdgemmError, UsageError


class UnsupportedArtifactError(UsageError):
    """A bundle artifact has a kind that no Triton backend of this exporter can serve."""

    code = "E_TRITON_UNSUPPORTED_ARTIFACT"


class UnsupportedForTritonError(UsageError):
    """The bundle's interface cannot be expressed as a batched Triton model (e.g. two batch axes)."""

    code = "E_TRITON_UNSUPPORTED_MODEL"


class RepositoryExistsError(UsageError):
    """The output model repository already exists and ``--force`` was not given."""

    code = "E_TRITON_REPOSITORY_EXISTS"


class ModelConfigError(EdgemmError):
    """A generated ``config.pbtxt`` is not a valid Triton ``ModelConfig``, or an ensemble names a model
    or tensor the repository lacks (a bug in edgemm)."""

    code = "E_TRITON_CONFIG"
