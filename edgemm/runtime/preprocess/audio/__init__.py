"""Audio preprocessing for the torch-free edge runtime, one module per concern.

* :mod:`~edgemm.runtime.preprocess.audio.limits` — accepted rates and channels, sample checks;
* :mod:`~edgemm.runtime.preprocess.audio.wav` — edgemm's own safe WAV parser and writer;
* :mod:`~edgemm.runtime.preprocess.audio.resample` — band-limited resampling (libsoxr);
* :mod:`~edgemm.runtime.preprocess.audio.load` — one input (bytes, file, samples) to mono at the
  model's rate;
* :mod:`~edgemm.runtime.preprocess.audio.config` — the manifest's audio section: translated from
  a transformers feature-extractor config (Wav2Vec2, Whisper ...), built, checked;
* :mod:`~edgemm.runtime.preprocess.audio.features` — the model features (normalised waveform,
  Whisper log-mel, edgemm's log-mel) and their padding and masks.

Dependencies point one way: ``load → {wav, resample} → limits`` and
``features → config → limits``. The names callers use are re-exported here.
"""

from __future__ import annotations

from edgemm.runtime.preprocess.audio.config import (
    FEATURE_KINDS,
    STANDARD_INPUTS,
    audio_preprocessing_from_hf,
    default_log_mel_preprocessing,
    validate_audio_preprocessing,
)
from edgemm.runtime.preprocess.audio.features import (
    LOG_MEL_EPS,
    LOG_MEL_PAD_VALUE,
    prepare_audio_batch,
)
from edgemm.runtime.preprocess.audio.limits import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from edgemm.runtime.preprocess.audio.load import load_audio, to_mono
from edgemm.runtime.preprocess.audio.resample import resample
from edgemm.runtime.preprocess.audio.wav import DEFAULT_MAX_BYTES, decode_wav, encode_wav

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FEATURE_KINDS",
    "LOG_MEL_EPS",
    "LOG_MEL_PAD_VALUE",
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "STANDARD_INPUTS",
    "audio_preprocessing_from_hf",
    "decode_wav",
    "default_log_mel_preprocessing",
    "encode_wav",
    "load_audio",
    "prepare_audio_batch",
    "resample",
    "to_mono",
    "validate_audio_preprocessing",
]
