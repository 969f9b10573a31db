"""CLAP's audio front end (transformers' ``ClapFeatureExtractor``) in numpy, for the edge runtime.

``ClapFeatureExtractor`` turns a 48 kHz recording into a dB-scaled log-mel spectrogram of a fixed
``max_length_s`` window: shorter recordings are repeated and/or zero-padded to the window
(``padding``: ``repeatpad``, ``repeat`` or ``pad``). The ``truncation`` mode decides the mel
scale and the layout:

* ``"fusion"`` (fused CLAP checkpoints): HTK-scale filters without norm, and four copies of the
  spectrogram ``[4, frames, n_mels]`` that HTSAT's fusion block reads;
* ``"rand_trunc"`` (unfused checkpoints): Slaney-scale, Slaney-normalised filters, one channel.

What transformers does at random is not reproduced; it is refused (never a silently different
answer):

* a recording longer than the window is cut at a random offset (``rand_trunc``) or as three
  random crops (``fusion``): edgemm refuses recordings longer than ``max_length_s``;
* with ``fusion``, when no recording of a batch is longer than the window, transformers marks a
  *random* row ``is_longer``; for one recording (what the ``zero-shot-audio-classification``
  pipeline sends) that row is always the recording itself. edgemm therefore treats every
  recording as transformers treats a batch of one, and the exported graph applies the fusion
  block to every row (see :mod:`edgemm.models.specs.hf_clap`).

Only numpy here: this module runs on the kiosk.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from edgemm.errors import InputTooLargeError, UnsupportedModelError

__all__ = [
    "CLAP_PADDINGS",
    "CLAP_TRUNCATIONS",
    "clap_feature_shape",
    "clap_features",
    "clap_preprocessing_from_hf",
    "clap_section_problem",
]

CLAP_TRUNCATIONS = ("fusion", "rand_trunc")
CLAP_PADDINGS = ("repeatpad", "repeat", "pad")
# transformers' spectrogram(): mel_floor, and power_to_db's min_value with reference 1.0.
_MEL_FLOOR = 1e-10
_DB_MIN = 1e-10


def _hz_to_mel(freq: Any, scale: str) -> np.ndarray:
    """``transformers.audio_utils.hertz_to_mel`` (``"htk"`` or ``"slaney"``)."""
    freq = np.asarray(freq, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    mels = 3.0 * freq / 200.0
    logstep = 27.0 / np.log(6.4)
    return np.where(freq >= 1000.0, 15.0 + np.log(np.maximum(freq, 1e-12) / 1000.0) * logstep, mels)


def _mel_to_hz(mels: np.ndarray, scale: str) -> np.ndarray:
    """``transformers.audio_utils.mel_to_hertz`` (``"htk"`` or ``"slaney"``)."""
    mels = np.asarray(mels, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (np.power(10, mels / 2595.0) - 1.0)
    freq = 200.0 * mels / 3.0
    logstep = np.log(6.4) / 27.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(logstep * (mels - 15.0)), freq)


@functools.lru_cache(maxsize=8)
def _mel_filters(n_bins: int, n_mels: int, fmin: float, fmax: float, rate: int, scale: str,
                 norm: str | None) -> np.ndarray:
    """``transformers.audio_utils.mel_filter_bank`` ``[n_bins, n_mels]`` (float64)."""
    mel_points = np.linspace(_hz_to_mel(fmin, scale), _hz_to_mel(fmax, scale), n_mels + 2)
    filter_freqs = _mel_to_hz(mel_points, scale)
    fft_freqs = np.linspace(0, rate // 2, n_bins)
    filter_diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / filter_diff[:-1]
    up = slopes[:, 2:] / filter_diff[1:]
    filters = np.maximum(np.zeros(1), np.minimum(down, up))
    if norm == "slaney":
        filters = filters * (2.0 / (filter_freqs[2 : n_mels + 2] - filter_freqs[:n_mels]))[None, :]
    filters.setflags(write=False)
    return filters


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    window = np.hanning(n_fft + 1)[:-1]  # periodic, as transformers' window_function
    window.setflags(write=False)
    return window


def _log_mel_db(wave: np.ndarray, n_fft: int, hop: int, filters: np.ndarray) -> np.ndarray:
    """``ClapFeatureExtractor._np_extract_fbank_features``: ``[frames, n_mels]`` float32 dB."""
    half = n_fft // 2
    padded = np.pad(wave, (half, half), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    # transformers stores each frame's FFT as complex64 before |.|^2 in float64: same rounding.
    spectrum = np.fft.rfft(frames * _hann(n_fft), axis=1).astype(np.complex64)
    power = np.abs(spectrum, dtype=np.float64) ** 2
    mel = np.maximum(_MEL_FLOOR, np.dot(filters.T, power.T))
    db = 10.0 * (np.log10(np.clip(mel, _DB_MIN, None)) - np.log10(1.0))
    return np.asarray(db, np.float32).T


def _fit_window(wave: np.ndarray, max_length: int, padding: str) -> np.ndarray:
    """Repeat and/or zero-pad a recording shorter than the window, as ``_get_input_mel`` does."""
    if wave.shape[0] >= max_length:
        return wave
    if padding == "repeat":
        n_repeat = int(max_length / len(wave))
        wave = np.tile(wave, n_repeat + 1)[:max_length]
    elif padding == "repeatpad":
        n_repeat = int(max_length / len(wave))
        wave = np.tile(wave, n_repeat)
    return np.pad(wave, (0, max_length - wave.shape[0]), mode="constant", constant_values=0)


def clap_feature_shape(config: dict[str, Any]) -> tuple[int, int, int]:
    """``(channels, frames, n_mels)`` of one recording's features under a validated section."""
    mel = config["log_mel"]
    channels = 4 if config["clap"]["truncation"] == "fusion" else 1
    return channels, int(mel["n_samples"]) // int(mel["hop_length"]) + 1, int(mel["n_mels"])


def clap_features(waves: list[np.ndarray], config: dict[str, Any]) -> np.ndarray:
    """CLAP's ``input_features`` for mono waves at the section's rate.

    Args:
        waves: Mono float samples at ``config["sampling_rate"]``, each at most
            ``log_mel.n_samples`` long.
        config: A validated audio section with ``features == "clap"``.

    Returns:
        float32 ``[B, channels, n_samples // hop_length + 1, n_mels]`` (``channels`` 4 for
        ``fusion``, 1 for ``rand_trunc``): ``ClapFeatureExtractor``'s ``input_features``.

    Raises:
        InputTooLargeError: A recording is longer than the window: transformers would crop it at
            random, so no answer could be reproduced.
    """
    mel, clap = config["log_mel"], config["clap"]
    n_fft, hop, n_mels = int(mel["n_fft"]), int(mel["hop_length"]), int(mel["n_mels"])
    max_length = int(mel["n_samples"])
    rate = int(config["sampling_rate"])
    fusion = clap["truncation"] == "fusion"
    filters = _mel_filters(n_fft // 2 + 1, n_mels, float(mel["fmin"]), float(mel["fmax"]), rate,
                           "htk" if fusion else "slaney", None if fusion else "slaney")
    out = np.empty((len(waves), *clap_feature_shape(config)), dtype=np.float32)
    for i, wave in enumerate(waves):
        if wave.shape[0] > max_length:
            raise InputTooLargeError(
                f"The recording is {wave.shape[0] / rate:.2f} s long; this CLAP model listens to "
                f"at most {max_length / rate:g} s (transformers crops longer ones at random, "
                f"truncation {clap['truncation']!r}, so no answer for them is reproducible).",
                hint=f"Trim the recording to at most {max_length / rate:g} s.",
            )
        # transformers computes in float64 from the float32 samples.
        out[i] = _log_mel_db(_fit_window(wave.astype(np.float64), max_length, clap["padding"]),
                             n_fft, hop, filters)[None]
    return out


def clap_preprocessing_from_hf(fe_config: dict[str, Any]) -> dict[str, Any]:
    """The audio section of a ``ClapFeatureExtractor`` config (``input``/``mask_input`` unset).

    Raises:
        UnsupportedModelError: A truncation or padding mode transformers does not implement, or
            numbers the extractor itself would reject.
    """

    def number(key: str, default: float) -> float:
        value = fe_config.get(key, default)
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UnsupportedModelError(f"The CLAP feature-extractor field {key!r} is {value!r}, not a number.",
                                        hint="Fix preprocessor_config.json.")
        return value

    truncation = fe_config.get("truncation") or "fusion"
    padding = fe_config.get("padding") or "repeatpad"
    if truncation not in CLAP_TRUNCATIONS:
        raise UnsupportedModelError(f"CLAP truncation {truncation!r} is not one transformers implements.",
                                    hint=f"Use one of: {', '.join(CLAP_TRUNCATIONS)}.")
    if padding not in CLAP_PADDINGS:
        raise UnsupportedModelError(f"CLAP padding {padding!r} is not one transformers implements.",
                                    hint=f"Use one of: {', '.join(CLAP_PADDINGS)}.")
    rate = int(number("sampling_rate", 48_000))
    max_seconds = number("max_length_s", 10)
    n_samples = int(max_seconds * rate)
    if n_samples < 1:
        raise UnsupportedModelError(f"CLAP max_length_s {max_seconds!r} is not positive.",
                                    hint="Fix preprocessor_config.json.")
    # padding_value and top_db are stored by the extractor but never used by its features.
    return {
        "kind": "audio",
        "features": "clap",
        "sampling_rate": rate,
        "max_seconds": n_samples / rate,
        "normalize": False,
        "padding_value": 0.0,
        "log_mel": {
            "n_fft": int(number("fft_window_size", 1024)),
            "hop_length": int(number("hop_length", 480)),
            "n_mels": int(number("feature_size", 64)),
            "fmin": float(number("frequency_min", 0)),
            "fmax": float(number("frequency_max", 14_000)),
            "n_samples": n_samples,
        },
        "clap": {"truncation": truncation, "padding": padding},
    }


def clap_section_problem(config: dict[str, Any]) -> str | None:
    """What is wrong with the ``clap`` part of an audio section read from a bundle, or None."""
    clap = config.get("clap")
    if not isinstance(clap, dict):
        return "features 'clap' needs a 'clap' object (truncation, padding)."
    if clap.get("truncation") not in CLAP_TRUNCATIONS:
        return f"clap.truncation {clap.get('truncation')!r} is not one of {', '.join(CLAP_TRUNCATIONS)}."
    if clap.get("padding") not in CLAP_PADDINGS:
        return f"clap.padding {clap.get('padding')!r} is not one of {', '.join(CLAP_PADDINGS)}."
    n_samples = config["log_mel"].get("n_samples")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        return f"log_mel.n_samples {n_samples!r} is not a positive integer."
    return None
