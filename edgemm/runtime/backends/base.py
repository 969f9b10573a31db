"""The backend interface: public methods check, ``_impl`` hooks work (Polygraphy's runner shape)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemm.bundle.manifest import Manifest, TensorSpec
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


@dataclass(frozen=True)
class AxisMeaning:
    """What a dynamic axis counts, in a user's terms, so that a size outside the profile can be
    explained the way the user sees the input (tokens of text, seconds of audio, items of a batch).

    Attributes:
        kind: ``"batch"``, ``"candidates"``, ``"text"``, ``"audio"`` or ``"other"``.
        unit: What one step of the axis is (``"tokens"``, ``"samples"``, ``"frames"``, ``"items"``).
        seconds_per_step: Audio only: seconds per step at the bundle's sample rate (None: unknown).
        offset: Steps that cover no time (a centred log-mel has one frame more than hops).
    """

    kind: str
    unit: str
    seconds_per_step: float | None = None
    offset: int = 0

    @classmethod
    def from_axis_name(cls, axis: str) -> AxisMeaning:
        """The meaning edgemm's own axis names carry when nothing else is known."""
        known = {"batch": cls("batch", "items"), "text_batch": cls("candidates", "texts"),
                 "seq": cls("text", "tokens"), "audio_len": cls("audio", "steps")}
        return known.get(axis, cls("other", ""))

    def amount(self, size: int) -> str:
        """``size`` steps in user terms, e.g. ``"0.05 s (800 samples)"`` or ``"70 tokens"``."""
        steps = f"{size} {self.unit}".strip()
        return steps if self.seconds_per_step is None else f"{self.brief(size)} ({steps})"

    def brief(self, size: int) -> str:
        """``size`` steps in the user's unit only: seconds when known, else steps."""
        if self.seconds_per_step is None:
            return f"{size} {self.unit}".strip()
        return f"{max(size - self.offset, 0) * self.seconds_per_step:.3g} s"

    def out_of_range(self, input_name: str, axis: str, size: int, low: int, high: int) -> InvalidInputError:
        """The error for ``size`` outside ``[low, high]``: "too short … at least" below the profile,
        "too long … split" above it, in the axis's own terms."""
        short = size < low
        subject, adjectives = _SUBJECTS.get(self.kind, (f"Input {input_name} along axis {axis!r}", ("too short", "too long")))
        limit = f"at least {self.amount(low)}" if short else f"at most {self.amount(high)}"
        message = (f"{subject} is {adjectives[0] if short else adjectives[1]}: {self.amount(size)}; "
                   f"this model takes {limit}.")
        if self.kind == "batch":
            hint = f"Send at least {low} items." if short else f"Split the batch into calls of at most {high} items."
        elif self.kind == "candidates":
            hint = (f"Send at least {low} candidate texts." if short
                    else f"Split the candidate texts into calls of at most {high}.")
        elif self.kind == "text":
            hint = f"Send a longer text (at least {low} tokens)." if short else f"Shorten the text to at most {high} tokens."
        elif self.kind == "audio":
            hint = (f"Record at least {self.brief(low)} of audio and send it again." if short
                    else f"Trim the recording, or split it into parts of at most {self.brief(high)}.")
        else:
            hint = (f"Give a larger input: at least {low} along {axis!r}." if short
                    else f"Split the batch or give a smaller input: at most {high} along {axis!r}.")
        return InvalidInputError(message, hint=hint,
                                 details={"input": input_name, "axis": axis, "size": size, "min": low, "max": high})


# What each kind of axis is called in a message, and its adjectives below / above the profile.
_SUBJECTS = {
    "batch": ("The batch", ("too small", "too large")),
    "candidates": ("The list of candidate texts", ("too short", "too long")),
    "text": ("The text", ("too short", "too long")),
    "audio": ("The recording", ("too short", "too long")),
}


def axis_meanings(manifest: Manifest) -> dict[str, AxisMeaning]:
    """What each dynamic input axis of ``manifest`` counts, from its modalities and preprocessing.

    Audio lengths get seconds at the bundle's sample rate (``waveform``: samples; ``log_mel``:
    frames of ``hop_length`` samples); a modality's batch axis is its items (candidate texts for
    an image–text similarity bundle); other text axes are tokens.
    """
    inputs = {spec.name: spec for spec in manifest.inputs}
    meanings: dict[str, AxisMeaning] = {}
    for modality, spec in manifest.modality_specs().items():
        section = manifest.preprocessing.get(modality, {})
        for name in spec.inputs:
            for dim in (inputs[name].shape if name in inputs else []):
                if isinstance(dim, int) or dim in meanings:
                    continue
                if dim == spec.batch_axis:
                    meanings[dim] = AxisMeaning.from_axis_name(dim if dim in ("batch", "text_batch") else "batch")
                elif modality == "text":
                    meanings[dim] = AxisMeaning("text", "tokens")
                elif modality == "audio":
                    meanings[dim] = _audio_meaning(section)
    return meanings


def _audio_meaning(section: dict[str, Any]) -> AxisMeaning:
    """The audio length axis of a preprocessing section: samples or log-mel frames, in seconds if known."""
    rate = section.get("sampling_rate")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0:
        return AxisMeaning("audio", "steps")
    if section.get("features") == "waveform":
        return AxisMeaning("audio", "samples", seconds_per_step=1.0 / rate)
    hop = (section.get("log_mel") or {}).get("hop_length")
    if isinstance(hop, int) and not isinstance(hop, bool) and hop > 0:
        return AxisMeaning("audio", "frames", seconds_per_step=hop / rate, offset=1)
    return AxisMeaning("audio", "frames")


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
        # What each dynamic axis means to a user, for the messages of check_feed; the Predictor
        # sets it from the manifest (see axis_meanings), else edgemm's axis names decide.
        self.axis_meanings: dict[str, AxisMeaning] = {}
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
        return self._checked_run(feed, self._run_impl)

    def run_reference(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``feed`` the way golden sets and accuracy gates measure the artifact.

        The same as :meth:`run` for most backends. One with an answer cache or several routes
        through its graphs (:class:`~edgemm.runtime.backends.split.SplitBackend`) computes every
        row the one recorded way here, leaving its cache alone — safe beside concurrent
        :meth:`run` calls (a server's canary).

        Raises:
            As :meth:`run`.
        """
        return self._checked_run(feed, self._run_reference_impl)

    def _checked_run(self, feed: dict[str, np.ndarray], impl: Any) -> dict[str, np.ndarray]:
        if not self._active:
            self.activate()
        self.check_feed(feed)
        try:
            return impl(feed)
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
                    meaning = self.axis_meanings.get(dim) or AxisMeaning.from_axis_name(dim)
                    raise meaning.out_of_range(spec.name, dim, size, int(bounds[0]), int(bounds[-1]))

    # -- hooks ----------------------------------------------------------------------------

    @abstractmethod
    def _activate_impl(self) -> None: ...

    @abstractmethod
    def _deactivate_impl(self) -> None: ...

    @abstractmethod
    def _run_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _run_reference_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run_impl(feed)

    @abstractmethod
    def _device_impl(self) -> str: ...

    def _engine_errors(self) -> tuple[type[BaseException], ...]:
        """The engine's own exception types: only these become :class:`RuntimeFailure`."""
        return ()
