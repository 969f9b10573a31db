"""Tests for the torch-free audio front end (edgemm.runtime.preprocess.audio).

Real components only: WAV bytes are built by hand with ``struct`` or by the stdlib ``wave``
writer, and features are compared against transformers' own feature extractors, constructed
from constructor arguments (never ``from_pretrained``, no network).
"""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import wave

import numpy as np
import pytest
import soxr

from edgemm.data.synthetic import synthesize_speechlike
from edgemm.errors import (
    BundleError,
    InputPathError,
    InputTooLargeError,
    InvalidInputError,
    UnsupportedMediaError,
    UnsupportedModelError,
    UsageError,
)
from edgemm.runtime.preprocess import audio as A

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RATE = 16000


# --- helpers -----------------------------------------------------------------------------------


def _raises_exactly(cls: type[Exception], fn, *args, **kwargs) -> Exception:
    """Like pytest.raises but rejects subclasses (UnsupportedMediaError is an InvalidInputError)."""
    with pytest.raises(cls) as info:
        fn(*args, **kwargs)
    assert type(info.value) is cls, f"expected {cls.__name__}, got {type(info.value).__name__}"
    assert info.value.hint, "every user-facing error carries a hint"
    return info.value


def _chunk(chunk_id: bytes, body: bytes, *, size: int | None = None) -> bytes:
    pad = b"\x00" if len(body) % 2 else b""
    return chunk_id + struct.pack("<I", len(body) if size is None else size) + body + pad


def _fmt(
    tag: int = 1,
    channels: int = 1,
    rate: int = RATE,
    bits: int = 16,
    block_align: int | None = None,
    extra: bytes = b"",
) -> bytes:
    align = channels * bits // 8 if block_align is None else block_align
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits) + extra


def _riff(*chunks: bytes, riff_size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def _extensible_fmt(subformat: int, channels: int, bits: int, rate: int = RATE) -> bytes:
    guid = (
        struct.pack("<H", subformat) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    )
    ext = struct.pack("<HHI", 22, bits, 0x3 if channels == 2 else 0x4) + guid
    return _fmt(tag=0xFFFE, channels=channels, rate=rate, bits=bits, extra=ext)


def _peak_allocation(fn, *args, **kwargs) -> tuple[int, Exception | None]:
    """Peak bytes that Python and numpy allocate while ``fn`` runs, and what it raised.

    The arguments are built before tracing starts, so they do not count.
    """
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        raised = None
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # the callers check the exception themselves
            raised = exc
        return tracemalloc.get_traced_memory()[1], raised
    finally:
        tracemalloc.stop()


def _sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --- WAV decode/encode -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "tol"),
    [(8, 2.0**-8), (16, 2.0**-16), (24, 2.0**-24), (32, 1e-7), (-32, 0.0), (-64, 0.0)],
)
def test_wav_round_trip_within_quantisation(bits: int, tol: float) -> None:
    x = synthesize_speechlike(0.25, RATE, seed=1)
    samples, rate = A.decode_wav(A.encode_wav(x, RATE, bits=bits))
    assert rate == RATE
    assert samples.dtype == np.float32 and samples.shape == (x.size, 1)
    # Half an LSB of rounding (plus float32 representation for the wide formats).
    assert np.abs(samples[:, 0] - x).max() <= tol + 1e-7


def test_wav_round_trip_stereo_and_full_scale() -> None:
    left = _sine(440, 0.1, 22050)
    right = -left
    right[0], right[1] = 1.0, -1.0
    stereo = np.stack([left, right], axis=1)
    data = A.encode_wav(stereo, 22050, bits=16)
    samples, rate = A.decode_wav(data)
    assert rate == 22050 and samples.shape == (left.size, 2)
    assert np.abs(samples - stereo).max() <= 2.0**-15
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    mono = A.to_mono(samples)
    assert mono.dtype == np.float32 and mono.shape == (left.size,)
    np.testing.assert_allclose(mono, samples.mean(axis=1), atol=1e-7)


def test_decode_matches_stdlib_wave_writer() -> None:
    ints = (np.arange(-300, 300, dtype=np.int64) * 97).astype("<i2").reshape(-1, 2)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(ints.tobytes())
    samples, rate = A.decode_wav(buf.getvalue())
    assert rate == 8000
    np.testing.assert_array_equal(samples, ints.astype(np.float32) / 32768)


def test_decode_pcm_exact_values_8_and_24_bit() -> None:
    pcm8 = bytes([0, 128, 255, 64])
    samples, _ = A.decode_wav(_riff(_chunk(b"fmt ", _fmt(bits=8)), _chunk(b"data", pcm8)))
    np.testing.assert_array_equal(samples[:, 0], [-1.0, 0.0, 127 / 128, -0.5])
    values = [-(2**23), -1, 0, 1, 2**23 - 1]
    pcm24 = b"".join(struct.pack("<i", v)[:3] for v in values)
    samples, _ = A.decode_wav(_riff(_chunk(b"fmt ", _fmt(bits=24)), _chunk(b"data", pcm24)))
    np.testing.assert_array_equal(samples[:, 0], np.array(values, dtype=np.float64) / 2**23)


def test_decode_extensible_pcm24_stereo_and_float() -> None:
    x = np.stack([_sine(300, 0.05, 48000), _sine(500, 0.05, 48000)], axis=1)
    ints = np.round(x.astype(np.float64) * 2**23).astype("<i4")
    pcm24 = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    data = _riff(_chunk(b"fmt ", _extensible_fmt(1, 2, 24, 48000)), _chunk(b"data", pcm24))
    samples, rate = A.decode_wav(data)
    assert rate == 48000 and samples.shape == x.shape
    assert np.abs(samples - x).max() <= 2.0**-24 + 1e-7

    mono = _sine(1000, 0.05, RATE)
    data = _riff(
        _chunk(b"fmt ", _extensible_fmt(3, 1, 32)), _chunk(b"data", mono.astype("<f4").tobytes())
    )
    samples, _ = A.decode_wav(data)
    np.testing.assert_array_equal(samples[:, 0], mono)


def test_decode_skips_unknown_chunks_with_pad_byte_and_fmt_after_data() -> None:
    pcm = (np.arange(10, dtype="<i2") * 1000).tobytes()
    data = _riff(
        _chunk(b"LIST", b"INFOabc"),  # odd size: followed by a pad byte
        _chunk(b"data", pcm),
        _chunk(b"junk", b"x" * 5),
        _chunk(b"fmt ", _fmt()),
        riff_size=0xFFFFFFFF,  # streaming writers leave the RIFF size unset; not trusted
    )
    samples, _ = A.decode_wav(data)
    np.testing.assert_array_equal(samples[:, 0], np.arange(10) * 1000 / 32768)


def test_decode_drops_trailing_partial_frame() -> None:
    data = _riff(_chunk(b"fmt ", _fmt(channels=2)), _chunk(b"data", b"\x00\x40" * 5))
    samples, _ = A.decode_wav(data)
    assert samples.shape == (2, 2)


_GOOD_DATA = _chunk(b"data", b"\x00\x00" * 16)

HOSTILE = {
    "empty": (b"", UnsupportedMediaError),
    "riff_not_wave": (b"RIFF" + struct.pack("<I", 4) + b"AVI LIST", UnsupportedMediaError),
    "rf64": (b"RF64" + b"\xff" * 4 + b"WAVE", UnsupportedMediaError),
    "zero_channels": (
        _riff(_chunk(b"fmt ", _fmt(channels=0, block_align=0)), _GOOD_DATA),
        UnsupportedMediaError,
    ),
    "nine_channels": (_riff(_chunk(b"fmt ", _fmt(channels=9)), _GOOD_DATA), UnsupportedMediaError),
    "4gib_data_claim": (
        _riff(_chunk(b"fmt ", _fmt()), b"data" + struct.pack("<I", 0xFFFFFFFF) + b"\x00" * 32),
        UnsupportedMediaError,
    ),
    "10h_header_claim": (
        _riff(
            _chunk(b"fmt ", _fmt()), b"data" + struct.pack("<I", 10 * 3600 * RATE * 2) + b"\0" * 8
        ),
        UnsupportedMediaError,
    ),
    "short_fmt": (_riff(_chunk(b"fmt ", _fmt()[:10]), _GOOD_DATA), UnsupportedMediaError),
    "fmt_past_eof": (_riff(b"fmt " + struct.pack("<I", 16) + _fmt()[:6]), UnsupportedMediaError),
    "adpcm": (
        _riff(_chunk(b"fmt ", _fmt(tag=2, bits=4, block_align=256)), _GOOD_DATA),
        UnsupportedMediaError,
    ),
    "mulaw": (_riff(_chunk(b"fmt ", _fmt(tag=7, bits=8)), _GOOD_DATA), UnsupportedMediaError),
    "unknown_tag": (_riff(_chunk(b"fmt ", _fmt(tag=0x1234)), _GOOD_DATA), UnsupportedMediaError),
    "bits_12": (
        _riff(_chunk(b"fmt ", _fmt(bits=12, block_align=2)), _GOOD_DATA),
        UnsupportedMediaError,
    ),
    "float_16": (_riff(_chunk(b"fmt ", _fmt(tag=3, bits=16)), _GOOD_DATA), UnsupportedMediaError),
    "block_align": (_riff(_chunk(b"fmt ", _fmt(block_align=4)), _GOOD_DATA), UnsupportedMediaError),
    "rate_too_low": (_riff(_chunk(b"fmt ", _fmt(rate=100)), _GOOD_DATA), UnsupportedMediaError),
    "rate_too_high": (_riff(_chunk(b"fmt ", _fmt(rate=10**6)), _GOOD_DATA), UnsupportedMediaError),
    "extensible_bad_guid": (
        _riff(
            _chunk(b"fmt ", _fmt(tag=0xFFFE, extra=struct.pack("<HHI", 22, 16, 4) + b"\x01" * 16)),
            _GOOD_DATA,
        ),
        UnsupportedMediaError,
    ),
    "extensible_short": (
        _riff(_chunk(b"fmt ", _fmt(tag=0xFFFE)), _GOOD_DATA),
        UnsupportedMediaError,
    ),
    "no_fmt": (_riff(_GOOD_DATA), UnsupportedMediaError),
    "no_data": (_riff(_chunk(b"fmt ", _fmt()), _chunk(b"LIST", b"INFO")), UnsupportedMediaError),
    "two_data": (
        _riff(_chunk(b"data", b""), _GOOD_DATA, _chunk(b"fmt ", _fmt())),
        UnsupportedMediaError,
    ),
    "two_fmt": (
        _riff(_chunk(b"fmt ", _fmt()), _chunk(b"fmt ", _fmt(bits=8)), _GOOD_DATA),
        UnsupportedMediaError,
    ),
    "zero_frames": (_riff(_chunk(b"fmt ", _fmt()), _chunk(b"data", b"")), InvalidInputError),
    "less_than_a_frame": (
        _riff(_chunk(b"fmt ", _fmt(channels=2)), _chunk(b"data", b"\0\0")),
        InvalidInputError,
    ),
    "float_nan": (
        _riff(
            _chunk(b"fmt ", _fmt(tag=3, bits=32)),
            _chunk(b"data", np.array([0.0, np.nan], "<f4").tobytes()),
        ),
        InvalidInputError,
    ),
    "float_inf": (
        _riff(
            _chunk(b"fmt ", _fmt(tag=3, bits=32)),
            _chunk(b"data", np.array([0.0, np.inf], "<f4").tobytes()),
        ),
        InvalidInputError,
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_wav_is_refused(name: str) -> None:
    data, cls = HOSTILE[name]
    _raises_exactly(cls, A.decode_wav, data)
    # Whatever sizes the header claims, refusing costs no allocation beyond small bookkeeping.
    peak, raised = _peak_allocation(A.decode_wav, data)
    assert type(raised) is cls
    assert peak < 64 * 1024


def test_many_junk_chunks_bounded_walk() -> None:
    junk = _chunk(b"junk", b"") * 10_000
    # A chunk that claims more bytes than the file holds: reaching it would be a different error.
    liar = b"LIAR" + struct.pack("<I", 0xFFFFFFF0)
    data = _riff(_chunk(b"fmt ", _fmt()), junk, liar, _GOOD_DATA)
    err = _raises_exactly(UnsupportedMediaError, A.decode_wav, data)
    assert "chunks" in err.message  # the walk stopped at its bound, long before the liar
    assert "claims" not in err.message
    peak, _ = _peak_allocation(A.decode_wav, data)
    assert peak < 64 * 1024


def test_duration_and_byte_caps() -> None:
    one_second = A.encode_wav(_sine(440, 1.0, RATE), RATE)
    err = _raises_exactly(InputTooLargeError, A.decode_wav, one_second, max_seconds=0.5)
    assert "1.00 s" in err.message
    samples, _ = A.decode_wav(one_second, max_seconds=None)
    assert samples.shape == (RATE, 1)
    _raises_exactly(InputTooLargeError, A.decode_wav, one_second, max_bytes=len(one_second) - 1)
    # The duration is judged from the header before any sample is converted: refusing a 20 min
    # file (38 MB of PCM, 77 MB as float32) allocates nothing of that size.
    long_file = _riff(_chunk(b"fmt ", _fmt()), _chunk(b"data", bytes(20 * 60 * RATE * 2)))
    _raises_exactly(InputTooLargeError, A.decode_wav, long_file)
    peak, raised = _peak_allocation(A.decode_wav, long_file)
    assert type(raised) is InputTooLargeError
    assert peak < 64 * 1024
    # The same file within the cap is converted: the bound above is not met by accident.
    peak, raised = _peak_allocation(A.decode_wav, long_file, max_seconds=None)
    assert raised is None and peak > 4 * 20 * 60 * RATE


def test_encode_wav_rejects_bad_arguments() -> None:
    x = np.zeros(10, dtype=np.float32)
    _raises_exactly(InvalidInputError, A.encode_wav, x, RATE, bits=12)
    _raises_exactly(InvalidInputError, A.encode_wav, x, 0)
    _raises_exactly(InvalidInputError, A.encode_wav, np.array([np.nan]), RATE)
    _raises_exactly(InvalidInputError, A.encode_wav, np.zeros(0), RATE)
    _raises_exactly(InvalidInputError, A.encode_wav, np.zeros((4, 9)), RATE)


# --- resampling and loading --------------------------------------------------------------------


@pytest.mark.parametrize("orig", [44100, 8000, 48000, 22050, 11025, 44101])
def test_resample_preserves_sine_frequency_and_amplitude(orig: int) -> None:
    amp = 0.5
    y = A.resample(_sine(440, 2.0, orig, amp), orig, RATE)
    assert y.dtype == np.float32 and y.shape == (2 * RATE,)
    core = y[1600:-1600].astype(np.float64)  # skip the filter's edge transients
    spectrum = np.abs(np.fft.rfft(core * np.hanning(core.size)))
    peak_hz = np.argmax(spectrum) * RATE / core.size
    assert abs(peak_hz - 440) <= RATE / core.size  # within one bin
    rms = np.sqrt(np.mean(core**2))
    assert rms == pytest.approx(amp / np.sqrt(2), rel=0.02)


def test_resample_rejects_aliases() -> None:
    # A 12 kHz tone cannot exist at 16 kHz; without a low-pass it would alias to 4 kHz.
    y = A.resample(_sine(12000, 1.0, 48000), 48000, RATE)
    assert np.sqrt(np.mean(y[800:-800] ** 2)) < 0.005
    passband = A.resample(_sine(6000, 1.0, 48000), 48000, RATE)
    assert np.sqrt(np.mean(passband[800:-800] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def _tones(freqs: list[float], seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return sum(0.2 * np.sin(2 * np.pi * f * t + 0.3 * i) for i, f in enumerate(freqs))


@pytest.mark.parametrize("orig", [8000, 11025, 22050, 44100, 44101, 48000])
def test_resample_matches_the_band_limited_signal(orig: int) -> None:
    # In-band tones resampled must equal the same tones evaluated at the new sample times.
    top = 0.85 * min(orig, RATE) / 2
    freqs = [f for f in (220.0, 1234.5, 3000.0, 5500.0, 6700.0) if f < top]
    y = A.resample(_tones(freqs, 1.0, orig).astype(np.float32), orig, RATE)
    truth = _tones(freqs, 1.0, RATE)
    assert y.dtype == np.float32 and y.shape == truth.shape
    assert np.abs(y[1600:-1600] - truth[1600:-1600]).max() < 1e-3


@pytest.mark.parametrize("freq", [8500, 10000, 15000, 20000])
def test_resample_removes_everything_above_the_new_nyquist(freq: int) -> None:
    for orig in (44100, 48000):
        y = A.resample(_sine(freq, 1.0, orig), orig, RATE)
        assert np.sqrt(np.mean(y[800:-800] ** 2)) < 1e-4


def test_resample_identity_length_and_errors() -> None:
    x = synthesize_speechlike(1.1, 44100, seed=4)
    assert np.array_equal(A.resample(x, 44100, 44100), x)
    # ceil(n * target / orig) samples, as torchaudio and librosa give, down to a single sample.
    for n in (1, 2, 3, 441, 1000, 44101):
        for orig in (8000, 22050, 44100, 44101, 48000):
            assert A.resample(x[:n], orig, RATE).shape == (-(-n * RATE // orig),)
    # The tail sample that soxr leaves out is added without touching the samples before it.
    odd = x[:44101]  # 16000.36 samples at 16 kHz: soxr gives 16000, the contract 16001
    reference = soxr.resample(odd, 44100, RATE, quality="HQ")
    ours = A.resample(odd, 44100, RATE)
    assert ours.size == reference.size + 1 == 16001
    np.testing.assert_allclose(ours[: reference.size], reference, atol=1e-6)
    _raises_exactly(InvalidInputError, A.resample, np.zeros((4, 2), np.float32), 8000, RATE)
    _raises_exactly(InvalidInputError, A.resample, x, 0, RATE)
    _raises_exactly(InvalidInputError, A.resample, x, 44100.0, RATE)


def test_load_audio_sources(tmp_path) -> None:
    stereo = np.stack([_sine(440, 1.0, 44100), _sine(440, 1.0, 44100)], axis=1)
    wav = A.encode_wav(stereo, 44100)
    path = tmp_path / "a.wav"
    path.write_bytes(wav)
    from_bytes = A.load_audio(wav, target_rate=RATE, max_seconds=30.0)
    from_path = A.load_audio(path, target_rate=RATE, max_seconds=30.0)
    from_str = A.load_audio(str(path), target_rate=RATE, max_seconds=30.0)
    from_array = A.load_audio((stereo, 44100), target_rate=RATE, max_seconds=30.0)
    assert from_bytes.dtype == np.float32 and from_bytes.shape == (RATE,)
    np.testing.assert_array_equal(from_bytes, from_path)
    np.testing.assert_array_equal(from_bytes, from_str)
    np.testing.assert_allclose(from_bytes, from_array, atol=2.0**-14)
    mono = A.load_audio(
        (_sine(440, 0.5, RATE).astype(np.float64), RATE), target_rate=RATE, max_seconds=None
    )
    assert mono.dtype == np.float32 and mono.shape == (RATE // 2,)


def test_load_audio_rejects_bad_inputs(tmp_path) -> None:
    ok = _sine(440, 1.0, RATE)
    _raises_exactly(
        InputPathError, A.load_audio, tmp_path / "missing.wav", target_rate=RATE, max_seconds=None
    )
    _raises_exactly(InputPathError, A.load_audio, tmp_path, target_rate=RATE, max_seconds=None)
    bad_file = tmp_path / "x.wav"
    bad_file.write_bytes(b"ID3\x03 not a wav")
    _raises_exactly(
        UnsupportedMediaError, A.load_audio, bad_file, target_rate=RATE, max_seconds=None
    )
    cases = [
        [0.1, 0.2],  # a list is not a supported source
        (np.arange(100, dtype=np.int16), RATE),
        (np.array([0.0, np.inf], np.float32), RATE),
        (np.zeros(0, np.float32), RATE),
        (np.zeros((2, 2, 2), np.float32), RATE),
        (np.zeros((2, 16000), np.float32), RATE),  # [channels, frames]
        (ok, 100),
        (ok, True),
    ]
    for source in cases:
        _raises_exactly(InvalidInputError, A.load_audio, source, target_rate=RATE, max_seconds=30.0)
    _raises_exactly(InputTooLargeError, A.load_audio, (ok, RATE), target_rate=RATE, max_seconds=0.5)
    _raises_exactly(
        InputTooLargeError, A.load_audio, A.encode_wav(ok, RATE), target_rate=RATE, max_seconds=0.5
    )


# --- features vs transformers ------------------------------------------------------------------


def _wav2vec2_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )


def _whisper_extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=80)


def test_waveform_parity_with_wav2vec2_extractor() -> None:
    fe = _wav2vec2_extractor()
    config = A.audio_preprocessing_from_hf(fe.to_dict())
    waves = [synthesize_speechlike(s, RATE, seed=i) for i, s in enumerate([1.0, 2.3, 0.4])]
    ref = fe(waves, sampling_rate=RATE, padding="longest", return_tensors="np")
    feed = A.prepare_audio_batch(waves, config)
    assert set(feed) == {"input_values", "audio_attention_mask"}
    assert (
        feed["input_values"].dtype == np.float32 and feed["audio_attention_mask"].dtype == np.int64
    )
    # Observed max diff: 0.0 (same float32 arithmetic).
    np.testing.assert_allclose(feed["input_values"], ref["input_values"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(feed["audio_attention_mask"], ref["attention_mask"])

    # pad_to: the longest wave is truncated *before* normalisation, exactly like transformers.
    ref = fe(
        waves,
        sampling_rate=RATE,
        padding="max_length",
        max_length=20000,
        truncation=True,
        return_tensors="np",
    )
    feed = A.prepare_audio_batch(waves, config, pad_to=20000)
    assert feed["input_values"].shape == (3, 20000)
    np.testing.assert_allclose(feed["input_values"], ref["input_values"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(feed["audio_attention_mask"], ref["attention_mask"])


def test_waveform_without_normalisation_pads_with_padding_value() -> None:
    config = A.audio_preprocessing_from_hf(
        {
            "feature_extractor_type": "Wav2Vec2FeatureExtractor",
            "do_normalize": False,
            "padding_value": -0.5,
        }
    )
    feed = A.prepare_audio_batch(
        [np.full(3, 0.25, np.float32), np.full(5, 0.5, np.float32)], config
    )
    np.testing.assert_array_equal(feed["input_values"], [[0.25] * 3 + [-0.5] * 2, [0.5] * 5])
    np.testing.assert_array_equal(feed["audio_attention_mask"], [[1, 1, 1, 0, 0], [1] * 5])


def test_whisper_parity_with_whisper_extractor() -> None:
    fe = _whisper_extractor()
    config = A.audio_preprocessing_from_hf(fe.to_dict())
    waves = [synthesize_speechlike(s, RATE, seed=10 + i) for i, s in enumerate([3.0, 7.5])]
    ours = A.prepare_audio_batch(waves, config, pad_to=123)  # pad_to is ignored for whisper
    assert set(ours) == {"input_features"}
    ours = ours["input_features"]
    assert ours.dtype == np.float32 and ours.shape == (2, 80, 3000)

    # transformers' numpy path (the one we reimplement). Observed max diff: 0.0 (bit-identical).
    padded = np.stack([np.pad(w, (0, fe.n_samples - w.size)) for w in waves])
    ref_np = fe._np_extract_fbank_features(padded, "cpu")
    np.testing.assert_allclose(ours, ref_np, rtol=0, atol=1e-6)

    # The public __call__ uses torch.stft (float32) when torch is installed.
    # Observed max diff vs that path: ~1.4e-5.
    ref = fe(waves, sampling_rate=RATE, return_tensors="np")["input_features"]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)


def test_whisper_truncates_long_audio() -> None:
    fe = _whisper_extractor()
    config = A.audio_preprocessing_from_hf(fe.to_dict())
    long_wave = synthesize_speechlike(31.0, RATE, seed=3)
    ours = A.prepare_audio_batch([long_wave], config)["input_features"]
    ref_np = fe._np_extract_fbank_features(long_wave[None, : fe.n_samples], "cpu")
    np.testing.assert_allclose(ours, ref_np, rtol=0, atol=1e-6)


def test_audio_preprocessing_from_hf() -> None:
    wav2vec2 = A.audio_preprocessing_from_hf(_wav2vec2_extractor().to_dict())
    assert wav2vec2 == {
        "kind": "audio",
        "features": "waveform",
        "input": "input_values",
        "mask_input": "audio_attention_mask",
        "sampling_rate": 16000,
        "max_seconds": 30.0,
        "normalize": True,
        "normalize_includes_padding": False,
        "padding_value": 0.0,
        "log_mel": None,
    }
    # Wav2Vec2FeatureExtractor's own default is return_attention_mask=False: it then normalises
    # padded rows, padding included.
    bare = A.audio_preprocessing_from_hf({"feature_extractor_type": "Wav2Vec2FeatureExtractor"})
    assert bare["normalize"] is True and bare["normalize_includes_padding"] is True
    renamed = A.audio_preprocessing_from_hf(
        _wav2vec2_extractor().to_dict(), inputs=("speech", None)
    )
    assert renamed["input"] == "speech" and renamed["mask_input"] is None
    whisper = A.audio_preprocessing_from_hf(_whisper_extractor().to_dict())
    assert whisper["features"] == "whisper_log_mel"
    assert whisper["input"] == "input_features" and whisper["mask_input"] is None
    assert whisper["sampling_rate"] == 16000 and whisper["max_seconds"] == 30.0
    assert whisper["log_mel"] == {
        "n_fft": 400,
        "hop_length": 160,
        "n_mels": 80,
        "fmin": 0.0,
        "fmax": 8000.0,
        "n_samples": 480000,
    }
    large_v3 = A.audio_preprocessing_from_hf(
        {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128}
    )
    assert large_v3["log_mel"]["n_mels"] == 128

    custom = A.audio_preprocessing_from_hf(
        {"feature_extractor_type": "MyExtractor", "feature_size": 40, "sampling_rate": 8000},
        features="log_mel",
    )
    assert custom["features"] == "log_mel" and custom["log_mel"]["n_mels"] == 40
    assert custom["log_mel"]["fmax"] == 4000.0

    _raises_exactly(
        UnsupportedModelError,
        A.audio_preprocessing_from_hf,
        {"feature_extractor_type": "SeamlessM4TFeatureExtractor"},  # AST's is supported since issue 15
    )
    _raises_exactly(UnsupportedModelError, A.audio_preprocessing_from_hf, {})
    _raises_exactly(
        UnsupportedModelError,
        A.audio_preprocessing_from_hf,
        {"feature_extractor_type": "WhisperFeatureExtractor"},
        features="waveform",
    )
    _raises_exactly(
        UnsupportedModelError,
        A.audio_preprocessing_from_hf,
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": "16k"},
    )
    _raises_exactly(
        UnsupportedModelError,
        A.audio_preprocessing_from_hf,
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 80},
    )
    for fe_type in ("Wav2Vec2FeatureExtractor", "WhisperFeatureExtractor"):
        for unreproducible, words in (({"padding_side": "left"}, "'left' side"), ({"dither": 1e-4}, "noise")):
            error = _raises_exactly(
                UnsupportedModelError,
                A.audio_preprocessing_from_hf,
                {"feature_extractor_type": fe_type, **unreproducible},
            )
            assert words in error.message
    _raises_exactly(
        UnsupportedModelError,
        A.audio_preprocessing_from_hf,
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "return_attention_mask": "yes"},
    )


# --- edgemm log-mel ----------------------------------------------------------------------------


def test_log_mel_shapes_mask_padding_and_determinism() -> None:
    config = A.default_log_mel_preprocessing()
    assert config["features"] == "log_mel" and config["mask_input"] == "audio_attention_mask"
    waves = [synthesize_speechlike(s, RATE, seed=20 + i) for i, s in enumerate([1.0, 0.37, 2.0])]
    feed = A.prepare_audio_batch(waves, config)
    feats, mask = feed["input_features"], feed["audio_attention_mask"]
    frames = [1 + w.size // 160 for w in waves]
    assert feats.dtype == np.float32 and feats.shape == (3, 64, max(frames))
    assert mask.dtype == np.int64 and mask.sum(axis=1).tolist() == frames
    for i, n in enumerate(frames):
        assert np.all(feats[i, :, n:] == np.float32(np.log(1e-6)))
        assert np.all(feats[i, :, :n] > np.log(1e-6))
    again = A.prepare_audio_batch(waves, config)
    assert np.array_equal(again["input_features"], feats) and np.array_equal(
        again["audio_attention_mask"], mask
    )

    padded = A.prepare_audio_batch(waves, config, pad_to=300)
    assert padded["input_features"].shape == (3, 64, 300)
    np.testing.assert_array_equal(padded["input_features"][:, :, : max(frames)], feats)
    short = A.prepare_audio_batch(waves, config, pad_to=30)  # shorter than every wave: truncated
    assert short["input_features"].shape == (3, 64, 30) and short["audio_attention_mask"].all()
    np.testing.assert_array_equal(short["input_features"], feats[:, :, :30])


def test_log_mel_matches_transformers_spectrogram() -> None:
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    wave = synthesize_speechlike(1.3, RATE, seed=5)
    ours = A.prepare_audio_batch([wave], A.default_log_mel_preprocessing())["input_features"][0]
    filters = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=64,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    mel = spectrogram(
        wave, window_function(400, "hann"), 400, 160, power=2.0, mel_filters=filters, mel_floor=0.0
    )
    np.testing.assert_allclose(ours, np.log(mel + 1e-6), rtol=0, atol=1e-5)


def test_prepare_audio_batch_rejects_bad_inputs_and_configs() -> None:
    config = A.default_log_mel_preprocessing()
    ok = np.zeros(1600, np.float32)
    for waves in (
        [],
        [np.zeros((2, 10), np.float32)],
        [np.array([np.nan], np.float32)],
        [np.zeros(0, np.float32)],
    ):
        _raises_exactly(InvalidInputError, A.prepare_audio_batch, waves, config)
    _raises_exactly(InvalidInputError, A.prepare_audio_batch, [ok], config, pad_to=0)
    for broken in (
        {**config, "features": "mfcc"},
        {**config, "log_mel": None},
        {**config, "sampling_rate": "16k"},
        {**config, "input": ""},
        {**config, "log_mel": {**config["log_mel"], "fmax": 9000.0}},
        {**config, "log_mel": {**config["log_mel"], "hop_length": 0}},
        {
            **A.audio_preprocessing_from_hf(_whisper_extractor().to_dict()),
            "log_mel": config["log_mel"],
        },
        {**config, "normalize": True},  # normalisation is a waveform option
        {**config, "normalize_includes_padding": "yes"},
    ):
        _raises_exactly(BundleError, A.prepare_audio_batch, [ok], broken)
    _raises_exactly(UsageError, A.default_log_mel_preprocessing, n_fft=1)
