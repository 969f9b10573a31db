"""The backend interface: public methods check, ``_impl`` hooks work (Polygraphy's runner shape)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import InvalidInputError, RuntimeFailure

_NUMPY_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for a manifest dtype name."""
    return np.dtype(_NUMPY_DTYPES[name])


class Backend(ABC):
    """A loaded model that maps a feed dict of numpy arrays to named numpy outputs.

    Heavy work (session creation, engine deserialisation) happens in :meth:`activate`.
    :meth:`run` validates names, dtypes and shapes against :attr:`input_specs` before calling
    the subclass hook, so engines never see malformed tensors.
    """

    name: str = "backend"

    def __init__(self, input_specs: list[TensorSpec], output_specs: list[TensorSpec]):
        self.input_specs = list(input_specs)
        self.output_specs = list(output_specs)
        self._active = False

    # -- lifecycle ------------------------------------------------------------------------

    def activate(self) -> Backend:
        """Load the model; idempotent. Returns ``self`` for chaining."""
        if not self._active:
            self._activate_impl()
            self._active = True
        return self

    def deactivate(self) -> None:
        """Release the model and its device memory."""
        if self._active:
            self._deactivate_impl()
            self._active = False

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @property
    def device(self) -> str:
        """Where the model actually runs (``"cpu"``, ``"cuda"``)."""
        return self._device_impl()

    # -- inference ------------------------------------------------------------------------

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``feed`` and return every declared output by name.

        Raises:
            InvalidInputError: A name is missing or unknown, or a dtype / fixed axis is wrong.
            RuntimeFailure: The engine itself failed (its exception is the ``__cause__``, so a
                caller can still tell e.g. a poisoned CUDA context). Any other exception is a
                bug in edgemm and propagates unchanged, traceback included.
        """
        if not self._active:
            self.activate()
        self.check_feed(feed)
        try:
            return self._run_impl(feed)
        except self._engine_errors() as exc:
            raise RuntimeFailure(f"{self.name} failed: {exc}", hint="Run `edgemm verify` on the bundle.",
                                 details={"engine_error": type(exc).__name__}) from exc

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        """Validate names, dtypes, ranks, fixed axes and shared dynamic axes of ``feed``."""
        expected = {spec.name for spec in self.input_specs}
        missing = sorted(expected - feed.keys())
        unknown = sorted(feed.keys() - expected)
        if missing or unknown:
            raise InvalidInputError(
                f"Model inputs do not match: missing {missing}, unknown {unknown}.",
                hint=f"The model takes: {', '.join(sorted(expected))}.",
            )
        axes: dict[str, int] = {}
        for spec in self.input_specs:
            array = feed[spec.name]
            if not isinstance(array, np.ndarray):
                raise InvalidInputError(f"Input {spec.name} must be a numpy array.")
            if array.dtype != numpy_dtype(spec.dtype):
                raise InvalidInputError(
                    f"Input {spec.name} has dtype {array.dtype}; the model takes {spec.dtype}."
                )
            if array.ndim != len(spec.shape):
                raise InvalidInputError(
                    f"Input {spec.name} has rank {array.ndim}; the model takes shape {spec.shape}."
                )
            for size, dim in zip(array.shape, spec.shape):
                if isinstance(dim, int):
                    if size != dim:
                        raise InvalidInputError(
                            f"Input {spec.name} has shape {list(array.shape)}; the model takes {spec.shape}."
                        )
                    continue
                if axes.setdefault(dim, size) != size:
                    raise InvalidInputError(
                        f"Axis {dim!r} is {axes[dim]} in one input and {size} in {spec.name}."
                    )
                bounds = spec.profile.get(dim)
                if bounds and not bounds[0] <= size <= bounds[-1]:
                    raise InvalidInputError(
                        f"Axis {dim!r} of {spec.name} is {size}; this artifact accepts {bounds[0]}..{bounds[-1]}.",
                        hint="Split the batch or shorten the input.",
                    )

    # -- hooks ----------------------------------------------------------------------------

    @abstractmethod
    def _activate_impl(self) -> None: ...

    @abstractmethod
    def _deactivate_impl(self) -> None: ...

    @abstractmethod
    def _run_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _device_impl(self) -> str: ...

    def _engine_errors(self) -> tuple[type[BaseException], ...]:
        """The engine's own exception types: only these become :class:`RuntimeFailure`."""
        return ()
