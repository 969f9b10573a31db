"""Audio preprocessing for the torch-free edge runtime: WAV decoding, resampling, model features.

Everything here is pure numpy so the kiosk needs neither torch, scipy nor libsndfile. The
feature front ends reproduce transformers' feature extractors numerically:

* ``"waveform"`` — ``Wav2Vec2FeatureExtractor`` (per-utterance zero-mean/unit-variance, padding,
  sample-level attention mask);
* ``"whisper_log_mel"`` — ``WhisperFeatureExtractor`` (its numpy path,
  ``_np_extract_fbank_features``);
* ``"log_mel"`` — edgemm's own log-mel front end for its small CNN audio encoder.

The preprocessing config is a plain dict stored in the bundle manifest (see
:func:`audio_preprocessing_from_hf` and :func:`default_log_mel_preprocessing`).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import struct
from typing import Any

import numpy as np

from edgemm.errors import (
    BundleError,
    InputTooLargeError,
    InvalidInputError,
    UnsupportedMediaError,
    UnsupportedModelError,
    UsageError,
)
from edgemm.runtime.preprocess.files import read_capped

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FEATURE_KINDS",
    "LOG_MEL_EPS",
    "LOG_MEL_PAD_VALUE",
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "audio_preprocessing_from_hf",
    "decode_wav",
    "default_log_mel_preprocessing",
    "encode_wav",
    "load_audio",
    "prepare_audio_batch",
    "resample",
    "synthesize_speechlike",
    "to_mono",
    "validate_audio_preprocessing",
]

FEATURE_KINDS = ("waveform", "whisper_log_mel", "log_mel")
DEFAULT_MAX_BYTES = 64 * 2**20
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
MAX_CHANNELS = 8
LOG_MEL_EPS = 1e-6
LOG_MEL_PAD_VALUE = float(np.log(LOG_MEL_EPS))

_MAX_CHUNKS = 1000
_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_* GUIDs are the format tag followed by this fixed 14-byte suffix.
_GUID_SUFFIX = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_KNOWN_CODECS = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "µ-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MP3",
    0x0161: "WMA",
    0x1610: "AAC",
    0xF1AC: "FLAC",
}
_WAV_HINT = (
    "Send a PCM (8/16/24/32-bit) or IEEE float WAV file, "
    "e.g. `ffmpeg -i in.m4a -c:a pcm_s16le out.wav`."
)
_CONFIG_HINT = "The bundle's audio preprocessing section is malformed; export the bundle again."

# Resampler: Hann-windowed sinc, same design as torchaudio.functional.resample's default.
_LOWPASS_WIDTH = 6
_ROLLOFF = 0.99
_MAX_KERNEL_TABLE = 2_000_000
_BLOCK_ELEMENTS = 1 << 20


# --- WAV ---------------------------------------------------------------------------------------


def _media_error(message: str) -> UnsupportedMediaError:
    return UnsupportedMediaError(message, hint=_WAV_HINT)


def decode_wav(
    data: bytes, *, max_seconds: float | None = 30.0, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[np.ndarray, int]:
    """Decode a RIFF/WAVE file held in memory.

    Our own parser rather than the ``wave`` module: ``wave`` cannot read float or EXTENSIBLE
    files and trusts header sizes. Every size field is checked against the bytes actually present
    before anything is allocated.

    Args:
        data: The complete file contents.
        max_seconds: Longest accepted duration; ``None`` disables the check.
        max_bytes: Largest accepted file size in bytes.

    Returns:
        ``(samples, rate)``: float32 samples shaped ``[frames, channels]`` scaled to [-1, 1]
        and the sample rate in Hz.

    Raises:
        InputTooLargeError: The file is larger than ``max_bytes`` or longer than ``max_seconds``.
        UnsupportedMediaError: Not a WAV file, a malformed header or chunk, or an unsupported
            (compressed) encoding.
        InvalidInputError: The file holds no audio frames or non-finite float samples.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(
            f"WAV data must be bytes, got {type(data).__name__}.",
            hint="Pass the raw file contents.",
        )
    data = bytes(data)
    if len(data) > max_bytes:
        raise InputTooLargeError(
            f"The audio file has {len(data)} bytes; the limit is {max_bytes}.",
            hint="Send a shorter recording.",
        )
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        if data[:4] in (b"RF64", b"BW64"):
            raise _media_error("RF64/BW64 (64-bit WAV) files are not supported.")
        raise _media_error("The audio is not a RIFF/WAVE file.")

    fmt: bytes | None = None
    data_offset = data_size = -1
    pos = 12
    end = len(data)
    # The RIFF size field is not trusted: streaming writers leave it 0 or 0xFFFFFFFF. The walk
    # stops as soon as both chunks are found, so trailing bytes (ID3 tags ...) are never parsed.
    for _ in range(_MAX_CHUNKS):
        if pos + 8 > end or (fmt is not None and data_offset >= 0):
            break
        chunk_id, size = struct.unpack_from("<4sI", data, pos)
        body = pos + 8
        if size > end - body:
            raise _media_error(
                f"The WAV chunk {chunk_id!r} claims {size} bytes but only {end - body} "
                "remain in the file."
            )
        if chunk_id == b"fmt ":
            if fmt is not None:
                raise _media_error("The WAV file has more than one 'fmt ' chunk.")
            fmt = data[body : body + size]
        elif chunk_id == b"data":
            if data_offset >= 0:
                raise _media_error("The WAV file has more than one 'data' chunk.")
            data_offset, data_size = body, size
        # RIFF chunks are word-aligned: an odd-sized chunk is followed by one pad byte.
        pos = body + size + (size & 1)
    else:
        if pos + 8 <= end and (fmt is None or data_offset < 0):
            raise _media_error(f"The WAV file has more than {_MAX_CHUNKS} chunks before its audio.")

    if fmt is None:
        raise _media_error("The WAV file has no 'fmt ' chunk.")
    if data_offset < 0:
        raise _media_error("The WAV file has no 'data' chunk.")
    sample_kind, channels, rate, bits = _parse_fmt(fmt)

    block_align = channels * bits // 8
    frames = data_size // block_align
    if frames == 0:
        raise InvalidInputError(
            "The WAV file contains no audio frames.", hint="Send a non-empty recording."
        )
    if max_seconds is not None and frames / rate > max_seconds:
        raise InputTooLargeError(
            f"The recording is {frames / rate:.2f} s long; the limit is {max_seconds:g} s.",
            hint="Trim the recording or send a shorter one.",
        )
    samples = _decode_samples(data, data_offset, frames * channels, sample_kind, bits)
    return samples.reshape(frames, channels), rate


def _parse_fmt(fmt: bytes) -> tuple[str, int, int, int]:
    """Validate a ``fmt `` chunk body; return ``(kind, channels, rate, bits)``, kind int|float."""
    if len(fmt) < 16:
        raise _media_error(f"The WAV 'fmt ' chunk is {len(fmt)} bytes; at least 16 are required.")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt, 0)
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise _media_error("The WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is shorter than 40 bytes.")
        guid = fmt[24:40]
        if guid[2:] != _GUID_SUFFIX:
            raise _media_error("The WAVE_FORMAT_EXTENSIBLE sub-format is not PCM or IEEE float.")
        tag = struct.unpack_from("<H", guid, 0)[0]
    if tag == _WAVE_FORMAT_PCM:
        kind, allowed = "int", (8, 16, 24, 32)
    elif tag == _WAVE_FORMAT_IEEE_FLOAT:
        kind, allowed = "float", (32, 64)
    elif tag in _KNOWN_CODECS:
        raise _media_error(f"{_KNOWN_CODECS[tag]}-compressed WAV files are not supported.")
    else:
        raise _media_error(f"The WAV format tag 0x{tag:04X} is not supported.")
    if channels == 0 or channels > MAX_CHANNELS:
        raise _media_error(
            f"The WAV file declares {channels} channels; 1 to {MAX_CHANNELS} are supported."
        )
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise _media_error(
            f"The WAV sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz."
        )
    if bits not in allowed:
        raise _media_error(
            f"{bits}-bit samples are not supported for "
            f"{'PCM' if kind == 'int' else 'IEEE float'} WAV "
            f"(supported: {', '.join(map(str, allowed))})."
        )
    if block_align != channels * (bits // 8):
        raise _media_error(
            f"The WAV block align is {block_align} but {channels} channels of {bits}-bit samples "
            f"need {channels * (bits // 8)}."
        )
    return kind, channels, rate, bits


def _decode_samples(data: bytes, offset: int, count: int, kind: str, bits: int) -> np.ndarray:
    """Convert ``count`` interleaved samples at ``offset`` to float32 in [-1, 1].

    Raises:
        InvalidInputError: A float sample is NaN or infinite.
    """
    if kind == "float":
        raw = np.frombuffer(data, dtype="<f4" if bits == 32 else "<f8", count=count, offset=offset)
        if not np.isfinite(raw).all():
            raise InvalidInputError(
                "The WAV file contains NaN or infinite samples.",
                hint="Re-export the recording as 16-bit PCM.",
            )
        # Float WAVs may exceed full scale; the contract of this module is [-1, 1].
        return np.clip(raw, -1.0, 1.0).astype(np.float32)
    if bits == 8:
        raw8 = np.frombuffer(data, dtype=np.uint8, count=count, offset=offset)
        return (raw8.astype(np.float32) - 128.0) * np.float32(1 / 128)
    if bits == 16:
        raw16 = np.frombuffer(data, dtype="<i2", count=count, offset=offset)
        return raw16.astype(np.float32) * np.float32(2.0**-15)
    if bits == 24:
        raw24 = np.frombuffer(data, dtype=np.uint8, count=3 * count, offset=offset).reshape(
            count, 3
        )
        # Place the 3 bytes in the top of an int32 so the arithmetic shift sign-extends them.
        wide = np.zeros((count, 4), dtype=np.uint8)
        wide[:, 1:] = raw24
        return (wide.view("<i4").reshape(count) >> 8).astype(np.float32) * np.float32(2.0**-23)
    raw32 = np.frombuffer(data, dtype="<i4", count=count, offset=offset)
    return raw32.astype(np.float32) * np.float32(2.0**-31)


def encode_wav(samples: np.ndarray, rate: int, *, bits: int = 16) -> bytes:
    """Encode samples as a WAV file.

    Args:
        samples: Float samples in [-1, 1] (clipped), 1-D or ``[frames, channels]``.
        rate: Sample rate in Hz.
        bits: 8, 16, 24 or 32 for integer PCM; -32 or -64 for IEEE float.

    Returns:
        The complete WAV file.

    Raises:
        InvalidInputError: Bad bit depth, sample rate, channel count or non-finite samples.
    """
    if bits not in (8, 16, 24, 32, -32, -64):
        raise InvalidInputError(
            f"Cannot write {bits}-bit WAV files.",
            hint="Use bits=8, 16, 24, 32 (PCM) or -32, -64 (IEEE float).",
        )
    _check_rate(rate, "rate")
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or not 1 <= arr.shape[1] <= MAX_CHANNELS:
        raise InvalidInputError(
            f"Cannot write samples shaped {arr.shape} as WAV.",
            hint=f"Pass [frames] or [frames, channels] with at most {MAX_CHANNELS} channels.",
        )
    if not np.isfinite(arr).all():
        raise InvalidInputError(
            "Cannot write NaN or infinite samples.", hint="Clean the signal first."
        )
    frames, channels = arr.shape
    if frames == 0:
        raise InvalidInputError("Cannot write an empty WAV file.", hint="Pass at least one frame.")
    arr = np.clip(arr, -1.0, 1.0)
    if bits < 0:
        tag, width = _WAVE_FORMAT_IEEE_FLOAT, -bits // 8
        payload = arr.astype("<f4" if bits == -32 else "<f8").tobytes()
    else:
        tag, width = _WAVE_FORMAT_PCM, bits // 8
        scale = float(2 ** (bits - 1))
        ints = np.clip(np.round(arr * scale), -scale, scale - 1).astype(np.int64)
        if bits == 8:
            payload = (ints + 128).astype(np.uint8).tobytes()
        elif bits == 24:
            payload = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        else:
            payload = ints.astype("<i2" if bits == 16 else "<i4").tobytes()
    block_align = channels * width
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block_align, block_align, 8 * width)
    pad = b"\x00" if len(payload) % 2 else b""
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(payload)) + payload + pad
    return b"RIFF" + struct.pack("<I", len(body)) + body


# --- signal helpers ----------------------------------------------------------------------------


def _check_rate(rate: Any, name: str) -> int:
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


@functools.lru_cache(maxsize=32)
def _sinc_kernels(orig: int, new: int) -> tuple[np.ndarray, int]:
    """Polyphase Hann-windowed sinc filters ``[new, 2*width + orig]`` for coprime rates."""
    base = min(orig, new) * _ROLLOFF
    width = math.ceil(_LOWPASS_WIDTH * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64) / orig
    t = (-np.arange(new, dtype=np.float64) / new)[:, None] + idx[None, :]
    t = np.clip(t * base, -_LOWPASS_WIDTH, _LOWPASS_WIDTH)
    window = np.cos(t * (np.pi / (2 * _LOWPASS_WIDTH))) ** 2
    kernels = (np.sinc(t) * window * (base / orig)).astype(np.float32)
    kernels.setflags(write=False)
    return kernels, width


def _resample_polyphase(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    kernels, width = _sinc_kernels(orig, new)
    taps = kernels.shape[1]
    padded = np.pad(wave, (width, width + orig))
    n_blocks = wave.shape[0] // orig + 1
    # Block b of the input (stride orig) yields outputs b*new .. b*new+new-1: a strided matmul.
    windows = np.lib.stride_tricks.sliding_window_view(padded, taps)[::orig][:n_blocks]
    step = max(1, _BLOCK_ELEMENTS // taps)
    out = np.empty((n_blocks, new), dtype=np.float32)
    for start in range(0, n_blocks, step):
        out[start : start + step] = windows[start : start + step] @ kernels.T
    return out.reshape(-1)


def _resample_direct(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Same filter as the polyphase path, evaluated per output (for rates with a tiny gcd)."""
    base = min(orig, new) * _ROLLOFF
    width = math.ceil(_LOWPASS_WIDTH * orig / base)
    n_in = wave.shape[0]
    n_out = -(-n_in * new // orig)
    offsets = np.arange(-width, width + 2, dtype=np.int64)
    padded = np.pad(wave.astype(np.float64), (width + 1, width + 2))
    out = np.empty(n_out, dtype=np.float32)
    step = max(1, _BLOCK_ELEMENTS // offsets.size)
    for start in range(0, n_out, step):
        n = np.arange(start, min(start + step, n_out), dtype=np.int64)
        idx = (n * orig // new)[:, None] + offsets[None, :]
        # Integer numerator keeps the phase exact for long signals.
        t = (idx * new - (n * orig)[:, None]).astype(np.float64) * (base / (orig * new))
        t = np.clip(t, -_LOWPASS_WIDTH, _LOWPASS_WIDTH)
        weights = np.sinc(t) * np.cos(t * (np.pi / (2 * _LOWPASS_WIDTH))) ** 2 * (base / orig)
        out[start : start + n.size] = (padded[idx + width + 1] * weights).sum(axis=1)
    return out


def resample(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling with a Hann-windowed sinc filter (torchaudio's default design).

    Args:
        wave: Mono samples (1-D).
        orig_rate: Sample rate of ``wave`` in Hz.
        target_rate: Wanted sample rate in Hz.

    Returns:
        float32 1-D array of ``ceil(len(wave) * target_rate / orig_rate)`` samples (the input
        itself, as float32, when the rates match).

    Raises:
        InvalidInputError: ``wave`` is not 1-D or a rate is not a positive integer in range.
    """
    orig_rate = _check_rate(orig_rate, "source sample rate")
    target_rate = _check_rate(target_rate, "target sample rate")
    arr = np.asarray(wave)
    if arr.ndim != 1:
        raise InvalidInputError(
            f"resample expects mono 1-D samples, got shape {arr.shape}.", hint="Call to_mono first."
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if orig_rate == target_rate or arr.size == 0:
        return arr
    g = math.gcd(orig_rate, target_rate)
    orig, new = orig_rate // g, target_rate // g
    base = min(orig, new) * _ROLLOFF
    width = math.ceil(_LOWPASS_WIDTH * orig / base)
    n_out = -(-arr.size * new // orig)
    if new * (2 * width + orig) <= _MAX_KERNEL_TABLE:
        return np.ascontiguousarray(_resample_polyphase(arr, orig, new)[:n_out])
    return _resample_direct(arr, orig, new)


def _check_float_samples(arr: np.ndarray, what: str) -> None:
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
    target_rate = _check_rate(target_rate, "target sample rate")
    if isinstance(source, (bytes, bytearray, memoryview)):
        samples, rate = decode_wav(bytes(source), max_seconds=max_seconds)
    elif isinstance(source, (str, os.PathLike)):
        samples, rate = decode_wav(_read_capped(source), max_seconds=max_seconds)
    elif isinstance(source, tuple) and len(source) == 2:
        arr, rate = np.asarray(source[0]), _check_rate(source[1], "audio sample rate")
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
        _check_float_samples(arr, "The audio array")
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


def _read_capped(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read a recording, refusing more than ``max_bytes`` without reading the rest."""
    data = read_capped(path, max_bytes, "Audio")
    if len(data) > max_bytes:
        raise InputTooLargeError(
            f"The audio file is larger than {max_bytes} bytes.", hint="Send a shorter recording."
        )
    return data


def synthesize_speechlike(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A deterministic speech-like signal for parity checks and tests.

    A gliding fundamental with decaying harmonics, a syllable-rate (3–6 Hz) amplitude envelope
    and a little noise, so that spectra, energies and envelopes look like voiced speech.

    Args:
        seconds: Duration (> 0, at most one hour).
        rate: Sample rate in Hz.
        seed: Seed of the random generator; the same arguments always give the same samples.

    Returns:
        float32 1-D array of ``round(seconds * rate)`` samples with peak amplitude ≤ 0.9.

    Raises:
        InvalidInputError: Non-positive or excessive duration, or an invalid rate.
    """
    rate = _check_rate(rate, "sample rate")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, numbers.Real)
        or not 0 < seconds <= 3600
    ):
        raise InvalidInputError(
            f"seconds must be in (0, 3600], got {seconds!r}.", hint="Pass a positive duration."
        )
    n = max(1, round(seconds * rate))
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64) / rate
    f0 = rng.uniform(100.0, 220.0)
    glide = f0 * (
        1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 2 * np.pi))
    )
    phase = 2 * np.pi * np.cumsum(glide) / rate
    nyquist = rate / 2
    voiced = np.zeros(n)
    for k in range(1, 9):
        if k * f0 * 1.1 >= nyquist:
            break
        voiced += rng.uniform(0.5, 1.0) / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    syllable = rng.uniform(3.0, 6.0)
    envelope = np.clip(np.sin(np.pi * syllable * t + rng.uniform(0, np.pi)), 0.0, None) ** 1.5
    signal = voiced * (0.1 + 0.9 * envelope) + 0.02 * rng.standard_normal(n)
    peak = float(np.abs(signal).max())
    if peak > 0:
        signal *= 0.8 / peak
    return signal.astype(np.float32)


# --- preprocessing config ----------------------------------------------------------------------


def default_log_mel_preprocessing(
    *,
    sampling_rate: int = 16000,
    n_mels: int = 64,
    n_fft: int = 400,
    hop_length: int = 160,
    max_seconds: float = 10.0,
) -> dict[str, Any]:
    """Preprocessing config for edgemm's own log-mel CNN audio encoder.

    Args:
        sampling_rate: Model sample rate in Hz.
        n_mels: Number of mel bands.
        n_fft: FFT size and Hann window length in samples.
        hop_length: Frame step in samples.
        max_seconds: Longest accepted recording.

    Returns:
        The manifest's audio preprocessing section (features ``"log_mel"``).

    Raises:
        UsageError: The parameters are inconsistent (e.g. ``fmax`` above Nyquist, ``n_fft`` < 2).
    """
    config = {
        "kind": "audio",
        "features": "log_mel",
        "input": "input_features",
        "mask_input": "audio_attention_mask",
        "sampling_rate": int(sampling_rate),
        "max_seconds": float(max_seconds),
        "normalize": False,
        "padding_value": 0.0,
        "log_mel": {
            "n_fft": int(n_fft),
            "hop_length": int(hop_length),
            "n_mels": int(n_mels),
            "fmin": 0.0,
            "fmax": float(sampling_rate) / 2,
        },
    }
    try:
        validate_audio_preprocessing(config)
    except BundleError as exc:
        raise UsageError(exc.message, hint="Choose consistent log-mel parameters.") from None
    return config


def audio_preprocessing_from_hf(
    fe_config: dict[str, Any], *, features: str | None = None
) -> dict[str, Any]:
    """Translate a transformers feature-extractor config into the manifest's audio section.

    Args:
        fe_config: Content of ``preprocessor_config.json`` (or ``FeatureExtractor.to_dict()``).
        features: Force the feature kind (``"waveform"``, ``"whisper_log_mel"``, ``"log_mel"``)
            for an extractor whose ``feature_extractor_type`` is missing or custom; must agree
            with the type when the type is a known one.

    Returns:
        The audio preprocessing section: Wav2Vec2-style extractors map to ``"waveform"``
        (``input_values`` + ``audio_attention_mask``, always emitted; the model decides whether
        it uses it), Whisper maps to ``"whisper_log_mel"`` (``input_features``, no mask).

    Raises:
        UnsupportedModelError: Unknown extractor type, conflicting ``features`` or bad values.
    """
    if not isinstance(fe_config, dict):
        raise UnsupportedModelError(
            "The feature-extractor config must be a JSON object.",
            hint="Pass the contents of preprocessor_config.json.",
        )
    fe_type = fe_config.get("feature_extractor_type")
    known = {"Wav2Vec2FeatureExtractor": "waveform", "WhisperFeatureExtractor": "whisper_log_mel"}
    if features is not None and features not in FEATURE_KINDS:
        raise UnsupportedModelError(
            f"Unknown audio feature kind {features!r}.",
            hint=f"Use one of {', '.join(FEATURE_KINDS)}.",
        )
    kind = known.get(fe_type) if isinstance(fe_type, str) else None
    if kind is None and features is None:
        raise UnsupportedModelError(
            f"The audio feature extractor {fe_type!r} is not supported.",
            hint="Supported: Wav2Vec2FeatureExtractor (wav2vec2, HuBERT, WavLM ...) and "
            "WhisperFeatureExtractor; pass features=... for a compatible custom extractor.",
        )
    if kind is not None and features is not None and features != kind:
        raise UnsupportedModelError(
            f"{fe_type} produces {kind!r} features, not {features!r}.",
            hint="Leave features unset for standard transformers extractors.",
        )
    kind = kind or features

    def number(key: str, default: Any, cast: type) -> Any:
        value = fe_config.get(key, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UnsupportedModelError(
                f"The feature-extractor field {key!r} is {value!r}, not a number.",
                hint="Fix preprocessor_config.json.",
            )
        return cast(value)

    rate = number("sampling_rate", 16000, int)
    padding_value = number("padding_value", 0.0, float)
    if kind == "waveform":
        if number("feature_size", 1, int) != 1:
            raise UnsupportedModelError(
                "Only raw-waveform extractors with feature_size=1 are supported.",
                hint="Use a wav2vec2-style model that takes input_values.",
            )
        config = {
            "kind": "audio",
            "features": "waveform",
            "input": "input_values",
            "mask_input": "audio_attention_mask",
            "sampling_rate": rate,
            "max_seconds": 30.0,
            "normalize": bool(fe_config.get("do_normalize", True)),
            "padding_value": padding_value,
            "log_mel": None,
        }
    elif kind == "whisper_log_mel":
        chunk_length = number("chunk_length", 30, int)
        n_samples = number("n_samples", chunk_length * rate, int)
        config = {
            "kind": "audio",
            "features": "whisper_log_mel",
            "input": "input_features",
            "mask_input": None,
            "sampling_rate": rate,
            "max_seconds": n_samples / rate,
            "normalize": False,
            "padding_value": padding_value,
            "log_mel": {
                "n_fft": number("n_fft", 400, int),
                "hop_length": number("hop_length", 160, int),
                "n_mels": number("feature_size", 80, int),
                "fmin": 0.0,
                # WhisperFeatureExtractor hard-codes max_frequency=8000.0 whatever the rate.
                "fmax": 8000.0,
                "n_samples": n_samples,
            },
        }
    else:
        config = default_log_mel_preprocessing(
            sampling_rate=rate,
            n_mels=number("feature_size", 64, int),
            n_fft=number("n_fft", 400, int),
            hop_length=number("hop_length", 160, int),
        )
    try:
        validate_audio_preprocessing(config)
    except (BundleError, UsageError) as exc:
        raise UnsupportedModelError(exc.message, hint="Fix preprocessor_config.json.") from None
    return config


def validate_audio_preprocessing(config: dict[str, Any]) -> None:
    """Check an audio preprocessing section read from a manifest.

    Args:
        config: The section.

    Raises:
        BundleError: A key is missing or has the wrong type or an impossible value.
    """

    def bad(message: str) -> BundleError:
        return BundleError(f"Audio preprocessing: {message}", hint=_CONFIG_HINT)

    if not isinstance(config, dict) or config.get("kind") != "audio":
        raise bad("the section is not an object with kind 'audio'.")
    kind = config.get("features")
    if kind not in FEATURE_KINDS:
        raise bad(f"unknown features {kind!r}.")
    if not isinstance(config.get("input"), str) or not config["input"]:
        raise bad("'input' must name the ONNX input.")
    mask = config.get("mask_input")
    if mask is not None and (not isinstance(mask, str) or not mask):
        raise bad("'mask_input' must be an ONNX input name or null.")
    rate = config.get("sampling_rate")
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int)
        or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE
    ):
        raise bad(
            f"sampling_rate {rate!r} is not an integer in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}."
        )
    max_seconds = config.get("max_seconds")
    if max_seconds is not None and (
        isinstance(max_seconds, bool)
        or not isinstance(max_seconds, (int, float))
        or not max_seconds > 0
    ):
        raise bad(f"max_seconds {max_seconds!r} is not a positive number.")
    padding_value = config.get("padding_value", 0.0)
    if (
        isinstance(padding_value, bool)
        or not isinstance(padding_value, (int, float))
        or not math.isfinite(padding_value)
    ):
        raise bad(f"padding_value {padding_value!r} is not a finite number.")
    if kind == "waveform":
        return
    mel = config.get("log_mel")
    if not isinstance(mel, dict):
        raise bad(f"features {kind!r} needs a 'log_mel' object.")

    def positive_int(key: str, upper: int) -> int:
        value = mel.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
            raise bad(f"log_mel.{key} {value!r} is not an integer in 1..{upper}.")
        return value

    n_fft = positive_int("n_fft", 65536)
    positive_int("hop_length", 65536)
    positive_int("n_mels", 1024)
    if n_fft < 2:
        raise bad("log_mel.n_fft must be at least 2.")
    fmin, fmax = mel.get("fmin", 0.0), mel.get("fmax", rate / 2)
    for name, value in (("fmin", fmin), ("fmax", fmax)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise bad(f"log_mel.{name} {value!r} is not a number.")
    if not 0 <= fmin < fmax <= rate / 2:
        raise bad(f"log_mel needs 0 <= fmin < fmax <= sampling_rate/2, got {fmin}..{fmax}.")
    if kind == "whisper_log_mel":
        positive_int("n_samples", MAX_SAMPLE_RATE * 3600)


# --- features ----------------------------------------------------------------------------------


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
        _check_float_samples(arr, f"Wave {i}")
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
        ``"whisper_log_mel"``: float32 ``[B, n_mels, n_samples // hop_length]``.
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
            batch, bool(config.get("normalize", True)), padding_value, pad_to
        )
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
            features = _whisper_features(
                batch, n_fft, hop, filters, int(mel["n_samples"]), padding_value
            )
            mask = None
        else:
            features, mask = _log_mel_features(batch, n_fft, hop, filters, pad_to)
    feed = {config["input"]: features}
    if config.get("mask_input") and mask is not None:
        feed[config["mask_input"]] = mask
    return feed


def _waveform_features(
    batch: list[np.ndarray], normalize: bool, padding_value: float, pad_to: int | None
) -> tuple[np.ndarray, np.ndarray]:
    length = pad_to if pad_to is not None else max(w.shape[0] for w in batch)
    values = np.full((len(batch), length), padding_value, dtype=np.float32)
    mask = np.zeros((len(batch), length), dtype=np.int64)
    for i, wave in enumerate(batch):
        wave = wave[:length]
        if normalize:
            # Same float32 arithmetic as Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm.
            wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
        values[i, : wave.shape[0]] = wave
        mask[i, : wave.shape[0]] = 1
    return values, mask


def _whisper_features(
    batch: list[np.ndarray],
    n_fft: int,
    hop: int,
    filters: np.ndarray,
    n_samples: int,
    padding_value: float,
) -> np.ndarray:
    out = []
    for wave in batch:
        fixed = np.full(n_samples, padding_value, dtype=np.float32)
        fixed[: min(n_samples, wave.shape[0])] = wave[:n_samples]
        mel = np.maximum(1e-10, _mel_power(fixed, n_fft, hop, filters))
        # Whisper drops the last STFT frame: n_samples // hop_length frames for an even n_fft.
        log_spec = np.log10(mel).astype(np.float32)[:, :-1]
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        out.append((log_spec + 4.0) / 4.0)
    return np.stack(out)


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
