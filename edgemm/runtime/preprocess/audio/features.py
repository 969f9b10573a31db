"""Model features from mono waves: the numpy front ends of transformers' feature extractors.

Pure numpy, so the kiosk needs neither torch nor scipy. The front ends reproduce transformers'
feature extractors numerically:

* ``"waveform"`` — ``Wav2Vec2FeatureExtractor`` (zero-mean/unit-variance normalisation of each
  recording, or of each padded row when the extractor returns no attention mask; padding;
  sample-level attention mask);
* ``"whisper_log_mel"`` — ``WhisperFeatureExtractor`` (its numpy path,
  ``_np_extract_fbank_features``, on audio padded or cut to its fixed window; the frame mask of
  ``return_attention_mask=True`` when the section names a mask input);
* ``"log_mel"`` — edgemm's own log-mel front end for its small CNN audio encoder.
* ``"clap"`` — ``ClapFeatureExtractor`` (:mod:`~edgemm.runtime.preprocess.audio.clap`).
* ``"kaldi_fbank"`` — ``ASTFeatureExtractor`` (:mod:`~edgemm.runtime.preprocess.audio.fbank`):
  ``[B, n_mels, max_frames]``, no mask, ``pad_to`` ignored (the length is fixed).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from edgemm.errors import InvalidInputError
from edgemm.runtime.preprocess.audio.clap import clap_features
from edgemm.runtime.preprocess.audio.config import validate_audio_preprocessing
from edgemm.runtime.preprocess.audio.fbank import FBANK_FEATURES, fbank_features
from edgemm.runtime.preprocess.audio.limits import check_float_samples

__all__ = ["LOG_MEL_EPS", "LOG_MEL_PAD_VALUE", "prepare_audio_batch"]

LOG_MEL_EPS = 1e-6
LOG_MEL_PAD_VALUE = float(np.log(LOG_MEL_EPS))


@functools.lru_cache(maxsize=16)
def _hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window`` / transformers ``window_function``)."""
    window = np.hanning(n_fft + 1)[:-1]
    window.setflags(write=False)
    return window


def _hz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    return np.where(
        log_region, 15.0 + np.log(np.maximum(freq, 1e-12) / 1000.0) * (27.0 / np.log(6.4)), mels
    )


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freq = 200.0 * mels / 3.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels - 15.0)), freq)


@functools.lru_cache(maxsize=16)
def _mel_filters(n_fft: int, n_mels: int, fmin: float, fmax: float, rate: int) -> np.ndarray:
    """Slaney-scale, Slaney-normalised mel filters ``[n_fft//2 + 1, n_mels]``.

    Same numbers as ``transformers.audio_utils.mel_filter_bank(..., norm="slaney",
    mel_scale="slaney")``, including its ``rate // 2`` integer bin spacing.
    """
    n_bins = 1 + n_fft // 2
    mel_points = np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2)
    filter_freqs = _mel_to_hz_slaney(mel_points)
    fft_freqs = np.linspace(0, rate // 2, n_bins)
    filter_diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / filter_diff[:-1]
    up = slopes[:, 2:] / filter_diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (filter_freqs[2 : n_mels + 2] - filter_freqs[:n_mels])
    filters.setflags(write=False)
    return filters


def _mel_power(wave: np.ndarray, n_fft: int, hop: int, filters: np.ndarray) -> np.ndarray:
    """Mel power spectrogram ``[n_mels, frames]`` (float64) with centred, reflect-padded frames."""
    half = n_fft // 2
    padded = np.pad(wave.astype(np.float64), (half, half), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    spectrum = np.fft.rfft(frames * _hann_window(n_fft), axis=1)
    # transformers stores the STFT as complex64 before taking |.|^2; rounding the same way
    # keeps parity at the 1e-7 level instead of 1e-6.
    power = np.abs(spectrum.astype(np.complex64), dtype=np.float64) ** 2
    return filters.T @ power.T


def _check_waves(waves: Any) -> list[np.ndarray]:
    if not isinstance(waves, (list, tuple)) or not waves:
        raise InvalidInputError(
            "prepare_audio_batch needs a non-empty list of waves.",
            hint="Pass a list of mono float32 arrays.",
        )
    out = []
    for i, wave in enumerate(waves):
        arr = np.asarray(wave)
        if arr.ndim != 1:
            raise InvalidInputError(
                f"Wave {i} has shape {arr.shape}; mono 1-D samples are required.",
                hint="Load audio with load_audio (it mixes down and resamples).",
            )
        check_float_samples(arr, f"Wave {i}")
        out.append(arr.astype(np.float32, copy=False))
    return out


def _check_pad_to(pad_to: Any) -> int | None:
    if pad_to is None:
        return None
    if isinstance(pad_to, bool) or not isinstance(pad_to, (int, np.integer)) or pad_to < 1:
        raise InvalidInputError(
            f"pad_to must be a positive integer, got {pad_to!r}.",
            hint="Pass None to pad to the longest input.",
        )
    return int(pad_to)


def prepare_audio_batch(
    waves: list[np.ndarray], config: dict[str, Any], *, pad_to: int | None = None
) -> dict[str, np.ndarray]:
    """Turn mono waves into the model feed described by ``config``.

    Args:
        waves: Mono float samples at ``config["sampling_rate"]`` (see :func:`load_audio`).
        config: The manifest's audio preprocessing section.
        pad_to: Pad (or truncate) to this many samples (``"waveform"``) or frames
            (``"log_mel"``) instead of the longest in the batch; ignored by
            ``"whisper_log_mel"``, whose length is fixed.

    Returns:
        ``{config["input"]: features}`` plus ``{config["mask_input"]: mask}`` when a mask input
        is configured. ``"waveform"``: float32 ``[B, T]``, mask int64 ``[B, T]``.
        ``"whisper_log_mel"``: float32 ``[B, n_mels, n_samples // hop_length]``, mask int64
        ``[B, n_samples // hop_length]`` (1 for frames that start inside the recording).
        ``"log_mel"``: float32 ``[B, n_mels, frames]``, mask int64 ``[B, frames]``.

    Raises:
        InvalidInputError: Empty list, a non-1-D, empty or non-finite wave, or a bad ``pad_to``.
        BundleError: ``config`` is malformed.
    """
    validate_audio_preprocessing(config)
    batch = _check_waves(waves)
    pad_to = _check_pad_to(pad_to)
    kind = config["features"]
    padding_value = float(config.get("padding_value", 0.0))
    if kind == "waveform":
        features, mask = _waveform_features(
            batch,
            padding_value,
            pad_to,
            normalize=bool(config.get("normalize", True)),
            includes_padding=bool(config.get("normalize_includes_padding", False)),
        )
    elif kind == FBANK_FEATURES:
        # AST: always max_frames frames (cut or padded by the extractor's rule), no mask.
        features, mask = fbank_features(batch, config), None
    elif kind == "clap":
        # CLAP: one fixed window, 4 stacked spectrograms (fusion) or 1 (rand_trunc), no mask.
        features, mask = clap_features(batch, config), None
    else:
        mel = config["log_mel"]
        n_fft, hop, n_mels = int(mel["n_fft"]), int(mel["hop_length"]), int(mel["n_mels"])
        filters = _mel_filters(
            n_fft,
            n_mels,
            float(mel.get("fmin", 0.0)),
            float(mel.get("fmax", config["sampling_rate"] / 2)),
            int(config["sampling_rate"]),
        )
        if kind == "whisper_log_mel":
            features, mask = _whisper_features(
                batch, n_fft, hop, filters, int(mel["n_samples"]), padding_value
            )
        else:
            features, mask = _log_mel_features(batch, n_fft, hop, filters, pad_to)
    feed = {config["input"]: features}
    if config.get("mask_input") and mask is not None:
        feed[config["mask_input"]] = mask
    return feed


def _zero_mean_unit_var(values: np.ndarray) -> np.ndarray:
    """``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`` of one float32 row (same arithmetic)."""
    return (values - values.mean()) / np.sqrt(values.var() + 1e-7)


def _waveform_features(
    batch: list[np.ndarray],
    padding_value: float,
    pad_to: int | None,
    *,
    normalize: bool,
    includes_padding: bool,
) -> tuple[np.ndarray, np.ndarray]:
    length = pad_to if pad_to is not None else max(w.shape[0] for w in batch)
    values = np.full((len(batch), length), padding_value, dtype=np.float32)
    mask = np.zeros((len(batch), length), dtype=np.int64)
    for i, wave in enumerate(batch):
        wave = wave[:length]
        if normalize and not includes_padding:
            # With an attention mask: statistics of the recording; padding stays padding_value.
            wave = _zero_mean_unit_var(wave)
        values[i, : wave.shape[0]] = wave
        mask[i, : wave.shape[0]] = 1
    if normalize and includes_padding:
        # Without one, transformers normalises each padded row, padding included: a shorter
        # recording's values depend on the longest one in its batch, exactly as in training.
        for row in values:
            row[:] = _zero_mean_unit_var(row)
    return values, mask


def _whisper_features(
    batch: list[np.ndarray],
    n_fft: int,
    hop: int,
    filters: np.ndarray,
    n_samples: int,
    padding_value: float,
) -> tuple[np.ndarray, np.ndarray]:
    out = []
    frames = n_samples // hop
    mask = np.zeros((len(batch), frames), dtype=np.int64)
    for i, wave in enumerate(batch):
        fixed = np.full(n_samples, padding_value, dtype=np.float32)
        kept = min(n_samples, wave.shape[0])
        fixed[:kept] = wave[:n_samples]
        # transformers' frame mask is the sample mask taken every hop_length samples.
        mask[i, : -(-kept // hop)] = 1
        mel = np.maximum(1e-10, _mel_power(fixed, n_fft, hop, filters))
        # Whisper drops the last STFT frame: n_samples // hop_length frames for an even n_fft.
        log_spec = np.log10(mel).astype(np.float32)[:, :-1]
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        out.append((log_spec + 4.0) / 4.0)
    return np.stack(out), mask


def _log_mel_features(
    batch: list[np.ndarray], n_fft: int, hop: int, filters: np.ndarray, pad_to: int | None
) -> tuple[np.ndarray, np.ndarray]:
    specs = [
        np.log(_mel_power(wave, n_fft, hop, filters) + LOG_MEL_EPS).astype(np.float32)
        for wave in batch
    ]
    length = pad_to if pad_to is not None else max(s.shape[1] for s in specs)
    features = np.full((len(batch), filters.shape[1], length), LOG_MEL_PAD_VALUE, dtype=np.float32)
    mask = np.zeros((len(batch), length), dtype=np.int64)
    for i, spec in enumerate(specs):
        frames = min(length, spec.shape[1])
        features[i, :, :frames] = spec[:, :frames]
        mask[i, :frames] = 1
    return features, mask
