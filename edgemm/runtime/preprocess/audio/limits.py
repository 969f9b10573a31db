"""What the audio front end accepts: sample-rate and channel limits, and checks on samples.

Every other audio module (the WAV codec, the resampler, loading, the features) judges rates and
in-memory samples through these two checks, so they refuse the same inputs with the same words.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgemm.errors import InvalidInputError

__all__ = [
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "check_float_samples",
    "check_sample_rate",
]

MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
MAX_CHANNELS = 8


def check_sample_rate(rate: Any, name: str) -> int:
    """Check that ``rate`` is an integer number of Hz within the supported range.

    Args:
        rate: The value to check (``bool`` and floats are refused, numpy integers accepted).
        name: How the message names it, e.g. ``"target sample rate"``.

    Returns:
        The rate as a Python ``int``.

    Raises:
        InvalidInputError: Not an integer, or outside ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE``.
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)):
        raise InvalidInputError(
            f"The {name} must be an integer number of Hz, got {rate!r}.",
            hint="Pass the sample rate as an int, e.g. 16000.",
        )
    if not MIN_SAMPLE_RATE <= int(rate) <= MAX_SAMPLE_RATE:
        raise InvalidInputError(
            f"The {name} {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz.",
            hint="Pass a realistic sample rate, e.g. 16000.",
        )
    return int(rate)


def check_float_samples(arr: np.ndarray, what: str) -> None:
    """Check that an in-memory signal is non-empty, floating point and finite.

    Args:
        arr: The samples, of any shape.
        what: How the message names them, e.g. ``"Wave 2"``.

    Raises:
        InvalidInputError: Integer (unscaled PCM) dtype, no samples, or NaN/infinite values.
    """
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidInputError(
            f"{what} must be floating point, got dtype {arr.dtype}.",
            hint="Scale integer PCM to float in [-1, 1] first.",
        )
    if arr.size == 0:
        raise InvalidInputError(f"{what} is empty.", hint="Send a non-empty recording.")
    if not np.isfinite(arr).all():
        raise InvalidInputError(
            f"{what} contains NaN or infinite values.", hint="Clean the signal first."
        )
