"""Loading one audio input (WAV bytes, a WAV file, or samples with their rate) for the model.

:func:`load_audio` decodes, mixes down to mono and resamples to the model's rate; it is what the
runtime, the server and the trainer call for every recording.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgemm.errors import InputTooLargeError, InvalidInputError
from edgemm.runtime.preprocess.audio.limits import (
    MAX_CHANNELS,
    check_float_samples,
    check_sample_rate,
)
from edgemm.runtime.preprocess.audio.resample import resample
from edgemm.runtime.preprocess.audio.wav import decode_wav, read_wav_file

__all__ = ["load_audio", "to_mono"]


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of ``[frames, channels]`` samples.

    Args:
        samples: 1-D (already mono) or ``[frames, channels]`` array.

    Returns:
        float32 1-D array of ``frames`` samples.

    Raises:
        InvalidInputError: The array is not 1-D or 2-D.
    """
    arr = np.asarray(samples)
    if arr.ndim == 1:
        return arr.astype(np.float32)
    if arr.ndim != 2:
        raise InvalidInputError(
            f"Audio must be 1-D or [frames, channels], got shape {arr.shape}.",
            hint="Pass mono samples or a [frames, channels] array.",
        )
    if arr.shape[1] == 1:
        return arr[:, 0].astype(np.float32)
    return arr.astype(np.float64).mean(axis=1).astype(np.float32)



def load_audio(source: Any, *, target_rate: int, max_seconds: float | None) -> np.ndarray:
    """Load one audio input as mono float32 samples at ``target_rate``.

    Args:
        source: WAV file contents (``bytes``), a path to a WAV file (``str``/``os.PathLike``), or
            ``(samples, rate)`` with float samples shaped ``[frames]`` or ``[frames, channels]``.
        target_rate: Sample rate the model expects, in Hz.
        max_seconds: Longest accepted duration; ``None`` disables the check.

    Returns:
        float32 1-D array at ``target_rate``.

    Raises:
        InputPathError: The path does not exist or is not a file.
        InputTooLargeError: Longer than ``max_seconds`` or larger than the byte cap.
        UnsupportedMediaError: Not a supported WAV file.
        InvalidInputError: Any other malformed input (wrong type, empty, NaN, bad shape or rate).
    """
    target_rate = check_sample_rate(target_rate, "target sample rate")
    if isinstance(source, (bytes, bytearray, memoryview)):
        samples, rate = decode_wav(bytes(source), max_seconds=max_seconds)
    elif isinstance(source, (str, os.PathLike)):
        samples, rate = decode_wav(read_wav_file(source), max_seconds=max_seconds)
    elif isinstance(source, tuple) and len(source) == 2:
        arr, rate = np.asarray(source[0]), check_sample_rate(source[1], "audio sample rate")
        if arr.ndim not in (1, 2):
            raise InvalidInputError(
                f"The audio array must be 1-D or [frames, channels], got {arr.shape}.",
                hint="Pass mono samples or a [frames, channels] array.",
            )
        if arr.ndim == 2 and not 1 <= arr.shape[1] <= MAX_CHANNELS:
            raise InvalidInputError(
                f"The audio array has shape {arr.shape}: "
                f"1 to {MAX_CHANNELS} channels are supported.",
                hint="Pass [frames, channels]; transpose a [channels, frames] array.",
            )
        check_float_samples(arr, "The audio array")
        if max_seconds is not None and arr.shape[0] / rate > max_seconds:
            raise InputTooLargeError(
                f"The recording is {arr.shape[0] / rate:.2f} s long; "
                f"the limit is {max_seconds:g} s.",
                hint="Trim the recording or send a shorter one.",
            )
        samples = arr
    else:
        raise InvalidInputError(
            f"Unsupported audio input of type {type(source).__name__}.",
            hint="Pass WAV bytes, a path to a WAV file, or a (samples, rate) tuple.",
        )
    return resample(to_mono(samples), rate, target_rate)
