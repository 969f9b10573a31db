"""AST's Kaldi-style log-mel filter bank, torch-free: transformers' ``ASTFeatureExtractor``.

``ASTFeatureExtractor`` computes its features with torchaudio's ``kaldi.fbank`` when torchaudio
is installed and with a numpy path (``transformers.audio_utils.spectrogram``) otherwise. edgemm
reproduces the numpy path, operation for operation: frames of 400 samples every 160 samples
(no centring, no padding), each frame's mean removed, pre-emphasis 0.97, a symmetric Hann
window, a 512-point FFT (rounded through complex64 as transformers stores it), the power
spectrum through Kaldi mel filters (triangles in mel space from 20 Hz to half the rate, no area
normalisation), floored at float32's epsilon, natural log. The first ``max_frames`` frames are
kept, zero padded to exactly ``max_frames``, then normalised with the AudioSet statistics
``(x - mean) / (2 * std)``.

The frame sizes are samples, not seconds: the numpy path uses 400 / 160 / 512 whatever the rate.

The features come out mel-major, ``[n_mels, max_frames]`` like edgemm's other log-mel kinds;
the exported graph transposes them to the ``[frames, n_mels]`` AST takes.

Pure numpy; this module runs on the edge device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "FBANK_FEATURES",
    "check_fbank_section",
    "fbank_features",
    "fbank_section",
    "kaldi_mel_filters",
]

# The audio section's ``features`` value for this front end.
FBANK_FEATURES = "kaldi_fbank"

FRAME_LENGTH = 400
HOP_LENGTH = 160
FFT_LENGTH = 512
PREEMPHASIS = 0.97
MIN_FREQUENCY = 20.0
# float32's machine epsilon, the floor Kaldi (and transformers' numpy path) puts under the energies.
MEL_FLOOR = 1.192092955078125e-07
# AudioSet statistics: ASTFeatureExtractor's defaults.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


def _hz_to_kaldi_mel(freq: Any) -> Any:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def kaldi_mel_filters(n_mels: int, rate: int) -> np.ndarray:
    """Kaldi mel filters ``[FFT_LENGTH // 2 + 1, n_mels]`` (float64).

    The numbers of ``transformers.audio_utils.mel_filter_bank(257, n_mels, 20, rate // 2, rate,
    norm=None, mel_scale="kaldi", triangularize_in_mel_space=True)``.
    """
    n_bins = FFT_LENGTH // 2 + 1
    mel_points = np.linspace(_hz_to_kaldi_mel(MIN_FREQUENCY), _hz_to_kaldi_mel(rate // 2), n_mels + 2)
    bin_width = rate / ((n_bins - 1) * 2)
    bin_mels = _hz_to_kaldi_mel(bin_width * np.arange(n_bins))
    diff = np.diff(mel_points)
    slopes = mel_points[None, :] - bin_mels[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(np.zeros(1), np.minimum(down, up))
    filters.setflags(write=False)
    return filters


@functools.lru_cache(maxsize=2)
def _window() -> np.ndarray:
    # window_function(400, "hann", periodic=False): the symmetric Hann window.
    window = np.hanning(FRAME_LENGTH)
    window.setflags(write=False)
    return window


def _log_mel(wave: np.ndarray, n_mels: int, rate: int, max_frames: int) -> np.ndarray:
    """Log-mel energies ``[frames, n_mels]`` (float32) of the first ``max_frames`` frames."""
    samples = wave.astype(np.float64)
    count = 1 + (samples.shape[0] - FRAME_LENGTH) // HOP_LENGTH if samples.shape[0] >= FRAME_LENGTH else 0
    count = min(count, max_frames)
    if count == 0:
        # Shorter than one frame: transformers finds no frame either and pads with zeros.
        return np.zeros((0, n_mels), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(samples, FRAME_LENGTH)[::HOP_LENGTH][:count]
    frames = frames - frames.mean(axis=1, keepdims=True)
    emphasised = np.empty_like(frames)
    emphasised[:, 1:] = frames[:, 1:] - PREEMPHASIS * frames[:, :-1]
    emphasised[:, 0] = frames[:, 0] * (1.0 - PREEMPHASIS)
    emphasised *= _window()
    # transformers keeps the spectrum as complex64 before taking |.|^2 in float64.
    spectrum = np.fft.rfft(emphasised, n=FFT_LENGTH, axis=1).astype(np.complex64)
    power = np.abs(spectrum, dtype=np.float64) ** 2
    mel = np.maximum(MEL_FLOOR, kaldi_mel_filters(n_mels, rate).T @ power.T)
    return np.log(mel).astype(np.float32).T


def fbank_features(waves: list[np.ndarray], section: dict[str, Any]) -> np.ndarray:
    """AST features of mono waves: float32 ``[B, n_mels, max_frames]``.

    Args:
        waves: Mono float32 samples at the section's ``sampling_rate``.
        section: The manifest's audio section with ``features`` :data:`FBANK_FEATURES`.

    Returns:
        The normalised log-mel filter-bank features, mel-major; recordings longer than
        ``max_frames`` frames are cut, shorter ones zero padded before normalisation, as
        ``ASTFeatureExtractor`` does.
    """
    mel = section["log_mel"]
    n_mels, max_frames = int(mel["n_mels"]), int(mel["max_frames"])
    rate = int(section["sampling_rate"])
    out = np.zeros((len(waves), max_frames, n_mels), dtype=np.float32)
    for i, wave in enumerate(waves):
        spec = _log_mel(np.asarray(wave, dtype=np.float32), n_mels, rate, max_frames)
        out[i, : spec.shape[0]] = spec
    if mel.get("normalize", True):
        # float32 arithmetic, as transformers' normalize on float32 arrays with Python floats.
        out = (out - np.float32(mel["mean"])) / np.float32(float(mel["std"]) * 2)
    return np.ascontiguousarray(out.transpose(0, 2, 1))


def fbank_section(*, sampling_rate: int, n_mels: int, max_frames: int, normalize: bool,
                  mean: float, std: float, padding_value: float = 0.0) -> dict[str, Any]:
    """The audio section for ``ASTFeatureExtractor`` settings (inputs are filled in by the caller).

    ``n_fft``, ``hop_length``, ``fmin`` and ``fmax`` record the numpy path's fixed values so that
    the generic checks and readers of log-mel sections understand the section.
    """
    return {
        "kind": "audio",
        "features": FBANK_FEATURES,
        "sampling_rate": int(sampling_rate),
        # The extractor cuts at max_frames; longer recordings are accepted and cut the same way.
        "max_seconds": 30.0,
        "normalize": False,
        "padding_value": float(padding_value),
        "log_mel": {
            "n_fft": FFT_LENGTH,
            "frame_length": FRAME_LENGTH,
            "hop_length": HOP_LENGTH,
            "n_mels": int(n_mels),
            "fmin": MIN_FREQUENCY,
            "fmax": float(int(sampling_rate) // 2),
            "max_frames": int(max_frames),
            "normalize": bool(normalize),
            "mean": float(mean),
            "std": float(std),
        },
    }


def check_fbank_section(mel: dict[str, Any], bad: Callable[[str], Exception]) -> None:
    """Check the ``log_mel`` keys only this kind has; raises ``bad(message)`` on the first problem."""
    frames = mel.get("max_frames")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= 1_000_000:
        raise bad(f"log_mel.max_frames {frames!r} is not an integer in 1..1000000.")
    if not isinstance(mel.get("normalize", True), bool):
        raise bad(f"log_mel.normalize {mel.get('normalize')!r} is not true or false.")
    for key in ("mean", "std"):
        value = mel.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(f"log_mel.{key} {value!r} is not a finite number.")
    if mel["std"] == 0:
        raise bad("log_mel.std must not be 0.")
    if (mel.get("n_fft"), mel.get("frame_length"), mel.get("hop_length")) != (FFT_LENGTH, FRAME_LENGTH, HOP_LENGTH):
        raise bad(f"{FBANK_FEATURES} frames are {FRAME_LENGTH} samples every {HOP_LENGTH} with a "
                  f"{FFT_LENGTH}-point FFT; the section says otherwise.")
