"""The manifest's audio preprocessing section: translated from transformers, built, checked.

:func:`audio_preprocessing_from_hf` maps a transformers feature-extractor config to the section
(``Wav2Vec2FeatureExtractor`` and its family → ``"waveform"``, ``WhisperFeatureExtractor`` →
``"whisper_log_mel"``); :func:`default_log_mel_preprocessing` builds the section of edgemm's own
log-mel CNN encoder; :func:`validate_audio_preprocessing` checks a section read from a bundle.

Keys of the section (all kinds): ``kind`` (``"audio"``), ``features`` (one of
:data:`FEATURE_KINDS`), ``input`` and ``mask_input`` (ONNX input names; no mask when null),
``sampling_rate``, ``max_seconds``, ``padding_value``, ``normalize`` (zero-mean/unit-variance per
row; ``"waveform"`` only) and ``log_mel`` (the mel front end; null for ``"waveform"``).
``"waveform"`` also records ``normalize_includes_padding``: ``Wav2Vec2FeatureExtractor``
normalises each row *after* padding it when it returns no attention mask (its config's
``return_attention_mask`` is false), so the padding shifts the mean and variance of the shorter
rows; with a mask it normalises the valid samples only. A section without the key (bundles
written before it existed) keeps the old behaviour: ``false``, each recording normalised alone.
"""

from __future__ import annotations

import math
from typing import Any

from edgemm.errors import BundleError, UnsupportedModelError, UsageError
from edgemm.runtime.preprocess.audio.clap import clap_preprocessing_from_hf, clap_section_problem
from edgemm.runtime.preprocess.audio.fbank import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    FBANK_FEATURES,
    check_fbank_section,
    fbank_section,
)
from edgemm.runtime.preprocess.audio.limits import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

__all__ = [
    "FEATURE_KINDS",
    "STANDARD_INPUTS",
    "audio_preprocessing_from_hf",
    "default_log_mel_preprocessing",
    "validate_audio_preprocessing",
]

FEATURE_KINDS = ("waveform", "whisper_log_mel", "log_mel", FBANK_FEATURES, "clap")

# The ONNX input names (features, mask) each kind gets unless the caller names its own: the
# inputs of edgemm's audio encoders. Whisper's encoder takes no mask.
STANDARD_INPUTS: dict[str, tuple[str, str | None]] = {
    "waveform": ("input_values", "audio_attention_mask"),
    "whisper_log_mel": ("input_features", None),
    "log_mel": ("input_features", "audio_attention_mask"),
    FBANK_FEATURES: ("input_values", None),  # AST: fixed length, no mask
    "clap": ("input_features", None),  # CLAP takes no mask
}

_CONFIG_HINT = "The bundle's audio preprocessing section is malformed; export the bundle again."


def default_log_mel_preprocessing(
    *,
    sampling_rate: int = 16000,
    n_mels: int = 64,
    n_fft: int = 400,
    hop_length: int = 160,
    max_seconds: float = 10.0,
    inputs: tuple[str, str | None] | None = None,
) -> dict[str, Any]:
    """Preprocessing config for edgemm's own log-mel CNN audio encoder.

    Args:
        sampling_rate: Model sample rate in Hz.
        n_mels: Number of mel bands.
        n_fft: FFT size and Hann window length in samples.
        hop_length: Frame step in samples.
        max_seconds: Longest accepted recording.
        inputs: The graph input names ``(features, mask)`` (your ``forward()``'s parameter
            names); ``mask`` None when the model takes no frame mask. Default:
            ``input_features`` + ``audio_attention_mask``.

    Returns:
        The manifest's audio preprocessing section (features ``"log_mel"``).

    Raises:
        UsageError: The parameters are inconsistent (e.g. ``fmax`` above Nyquist, ``n_fft`` < 2).
    """
    config = {
        "kind": "audio",
        "features": "log_mel",
        "input": (inputs or STANDARD_INPUTS["log_mel"])[0],
        "mask_input": (inputs or STANDARD_INPUTS["log_mel"])[1],
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
    fe_config: dict[str, Any],
    *,
    features: str | None = None,
    inputs: tuple[str, str | None] | None = None,
) -> dict[str, Any]:
    """Translate a transformers feature-extractor config into the manifest's audio section.

    The section makes :func:`~edgemm.runtime.preprocess.audio.prepare_audio_batch` reproduce
    what ``extractor(waves, sampling_rate=..., padding=True)`` returns for a batch, with the
    config's own defaults (``return_attention_mask``, ``do_normalize``, ``padding_value``).

    Args:
        fe_config: Content of ``preprocessor_config.json`` (or ``FeatureExtractor.to_dict()``).
        features: Force the feature kind (``"waveform"``, ``"whisper_log_mel"``, ``"log_mel"``)
            for an extractor whose ``feature_extractor_type`` is missing or custom; must agree
            with the type when the type is a known one.
        inputs: ONNX input names ``(features, mask)`` of the model (``mask`` None: the model
            takes no mask); default :data:`STANDARD_INPUTS` of the kind.

    Returns:
        The audio preprocessing section: Wav2Vec2-style extractors map to ``"waveform"``
        (``input_values`` + ``audio_attention_mask``, always emitted; the model decides whether
        it uses it; ``normalize_includes_padding`` is true when the extractor returns no
        attention mask), Whisper maps to ``"whisper_log_mel"`` (``input_features``, no mask),
        AST to ``"kaldi_fbank"`` (``input_values``, no mask; its ``log_mel`` also records
        ``max_frames`` and the normalisation, see :mod:`~edgemm.runtime.preprocess.audio.fbank`).

    Raises:
        UnsupportedModelError: Unknown extractor type, conflicting ``features``, bad values, or
            a setting the runtime cannot reproduce (left padding, dithering).
    """
    if not isinstance(fe_config, dict):
        raise UnsupportedModelError(
            "The feature-extractor config must be a JSON object.",
            hint="Pass the contents of preprocessor_config.json.",
        )
    fe_type = fe_config.get("feature_extractor_type")
    known = {"Wav2Vec2FeatureExtractor": "waveform", "WhisperFeatureExtractor": "whisper_log_mel",
             "ASTFeatureExtractor": FBANK_FEATURES, "ClapFeatureExtractor": "clap"}
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
            "WhisperFeatureExtractor, ASTFeatureExtractor (AST), ClapFeatureExtractor (CLAP); pass features=... for a "
            "compatible custom extractor.",
        )
    if kind is not None and features is not None and features != kind:
        raise UnsupportedModelError(
            f"{fe_type} produces {kind!r} features, not {features!r}.",
            hint="Leave features unset for standard transformers extractors.",
        )
    kind = kind or features
    _check_reproducible(fe_config)

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

    def flag(key: str, default: bool) -> bool:
        value = fe_config.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise UnsupportedModelError(
                f"The feature-extractor field {key!r} is {value!r}, not true or false.",
                hint="Fix preprocessor_config.json.",
            )
        return value

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
            "sampling_rate": rate,
            "max_seconds": 30.0,
            "normalize": flag("do_normalize", True),
            # Wav2Vec2FeatureExtractor's own default is return_attention_mask=False.
            "normalize_includes_padding": not flag("return_attention_mask", False),
            "padding_value": padding_value,
            "log_mel": None,
        }
    elif kind == "whisper_log_mel":
        chunk_length = number("chunk_length", 30, int)
        n_samples = number("n_samples", chunk_length * rate, int)
        config = {
            "kind": "audio",
            "features": "whisper_log_mel",
            "sampling_rate": rate,
            "max_seconds": n_samples / rate,
            # Whisper's do_normalize is an argument of __call__ (default off), not a setting.
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
    elif kind == "clap":
        config = clap_preprocessing_from_hf(fe_config)  # CLAP's window, mel scale and layout
    elif kind == FBANK_FEATURES:
        config = fbank_section(
            sampling_rate=rate,
            padding_value=padding_value,
            n_mels=number("num_mel_bins", 128, int),
            max_frames=number("max_length", 1024, int),
            normalize=flag("do_normalize", True),
            mean=number("mean", AUDIOSET_MEAN, float),
            std=number("std", AUDIOSET_STD, float),
        )
    else:
        config = default_log_mel_preprocessing(
            sampling_rate=rate,
            n_mels=number("feature_size", 64, int),
            n_fft=number("n_fft", 400, int),
            hop_length=number("hop_length", 160, int),
        )
    name, mask = STANDARD_INPUTS[kind] if inputs is None else inputs
    config.update(input=name, mask_input=mask)
    try:
        validate_audio_preprocessing(config)
    except (BundleError, UsageError) as exc:
        raise UnsupportedModelError(exc.message, hint="Fix preprocessor_config.json.") from None
    return config


def _check_reproducible(fe_config: dict[str, Any]) -> None:
    """Refuse extractor settings whose output the runtime cannot reproduce exactly."""
    side = fe_config.get("padding_side", "right")
    if side not in (None, "right"):
        raise UnsupportedModelError(
            f"The feature extractor pads audio on the {side!r} side; edgemm pads on the right.",
            hint="Set padding_side='right' in preprocessor_config.json: transformers' "
            "wav2vec2 normalisation and its frame masks assume right padding.",
        )
    dither = fe_config.get("dither", 0.0)
    if dither not in (None, 0, 0.0):
        raise UnsupportedModelError(
            f"The feature extractor adds random noise to every input (dither={dither!r}), so no "
            "two runs give the same features.",
            hint="Set dither=0.0 in preprocessor_config.json (extractor.dither = 0.0) and "
            "export again.",
        )


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
    for key in ("normalize", "normalize_includes_padding"):
        if not isinstance(config.get(key, False), bool):
            raise bad(f"{key} {config.get(key)!r} is not true or false.")
    if config.get("normalize", False) and kind != "waveform":
        raise bad(f"normalize applies to waveform features only, not {kind!r}.")
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
    if kind == FBANK_FEATURES:
        check_fbank_section(mel, bad)
    if kind == "clap" and (problem := clap_section_problem(config)):
        raise bad(problem)
