"""The manifest's audio preprocessing section: translated from transformers, built, checked.

:func:`audio_preprocessing_from_hf` maps a transformers feature-extractor config to the section
(``Wav2Vec2FeatureExtractor`` and its family → ``"waveform"``, ``WhisperFeatureExtractor`` →
``"whisper_log_mel"``); :func:`default_log_mel_preprocessing` builds the section of edgemm's own
log-mel CNN encoder; :func:`validate_audio_preprocessing` checks a section read from a bundle.
"""

from __future__ import annotations

import math
from typing import Any

from edgemm.errors import BundleError, UnsupportedModelError, UsageError
from edgemm.runtime.preprocess.audio.limits import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

__all__ = [
    "FEATURE_KINDS",
    "audio_preprocessing_from_hf",
    "default_log_mel_preprocessing",
    "validate_audio_preprocessing",
]

FEATURE_KINDS = ("waveform", "whisper_log_mel", "log_mel")

_CONFIG_HINT = "The bundle's audio preprocessing section is malformed; export the bundle again."


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
