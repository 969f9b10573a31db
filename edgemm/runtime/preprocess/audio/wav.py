"""edgemm's own WAV codec: a safe RIFF/WAVE parser for untrusted recordings, and a writer.

Our own parser rather than the standard library's ``wave`` module: ``wave`` cannot read float or
WAVE_FORMAT_EXTENSIBLE files and trusts header sizes. Here every size field is checked against
the bytes actually present, and the duration against the cap, before any sample is converted.
Pure numpy and ``struct``: the kiosk needs neither libsndfile nor scipy.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from edgemm.errors import InputTooLargeError, InvalidInputError, UnsupportedMediaError
from edgemm.runtime.preprocess.audio.limits import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    check_sample_rate,
)
from edgemm.runtime.preprocess.files import read_capped

__all__ = ["DEFAULT_MAX_BYTES", "decode_wav", "encode_wav", "read_wav_file"]

DEFAULT_MAX_BYTES = 64 * 2**20

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
    check_sample_rate(rate, "rate")
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




def read_wav_file(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read a recording from disk, refusing more than ``max_bytes`` without reading the rest.

    Args:
        path: The WAV file.
        max_bytes: Largest accepted file size in bytes.

    Returns:
        The file's contents (for :func:`decode_wav`).

    Raises:
        InputTooLargeError: The file holds more than ``max_bytes`` bytes.
        InputPathError: The path is missing, a directory, or unreadable.
    """
    data = read_capped(path, max_bytes, "Audio")
    if len(data) > max_bytes:
        raise InputTooLargeError(
            f"The audio file is larger than {max_bytes} bytes.", hint="Send a shorter recording."
        )
    return data
