"""Export family ``hf-audio-classification``: transformers audio-classification directories.

``Wav2Vec2ForSequenceClassification``, ``HubertForSequenceClassification``,
``WavLMForSequenceClassification`` (raw waveforms through ``Wav2Vec2FeatureExtractor``) and
``ASTForAudioClassification`` (Kaldi log-mel filter banks through ``ASTFeatureExtractor``),
recognised from ``config.json`` alone. The graph takes what the directory's feature extractor
produces (reproduced torch-free at the kiosk, see :mod:`edgemm.runtime.preprocess.audio`) and
returns the head's ``logits``; the runtime applies a softmax and names the classes by
``config.id2label``, as transformers' ``audio-classification`` pipeline does by default (it
applies softmax even to multi-label heads unless told otherwise).

Waveform models take the attention mask exactly when their extractor returns one
(``return_attention_mask``); without it the extractor normalises each padded row as a whole, so
the runtime serves such bundles one recording at a time (see
:attr:`~edgemm.runtime.preprocess.pipeline.Preprocessor.rows_independent`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import UnsupportedModelError
from edgemm.models.spec import ExportSpec, LoadedModel, ShapeCase, register_family
from edgemm.models.specs.common import BATCH_RANGE
from edgemm.models.specs.hf import SPEC_ROUTE, architecture, supports
from edgemm.models.specs.hf_heads import (
    HEAD_TOLERANCE,
    head_labels,
    load_head_model,
    load_processor,
    source_record,
)
from edgemm.runtime.preprocess.audio import audio_preprocessing_from_hf, prepare_audio_batch
from edgemm.runtime.preprocess.audio.fbank import FBANK_FEATURES

FAMILY = "hf-audio-classification"
WAVEFORM_ARCHITECTURES = (
    "Wav2Vec2ForSequenceClassification",
    "HubertForSequenceClassification",
    "WavLMForSequenceClassification",
)
ARCHITECTURES = (*WAVEFORM_ARCHITECTURES, "ASTForAudioClassification")
# Shortest recording in the graph's profile: the conv feature encoder needs 400 samples for
# one frame; 0.1 s leaves room for a few.
MIN_AUDIO_SECONDS = 0.1
# How far the runtime's features may lie from the extractor's before the export is refused.
_FEATURE_TOLERANCE = 1e-4


class WaveformClassifier(nn.Module):
    """A wav2vec2-style ``*ForSequenceClassification``: waveform (+ mask) → ``logits``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_values: Any, attention_mask: Any = None) -> dict[str, Any]:
        """Normalised waveforms ``[B, samples]`` (and their sample mask) → logits ``[B, labels]``."""
        return {"logits": self.model(input_values=input_values, attention_mask=attention_mask).logits}


class SpectrogramClassifier(nn.Module):
    """``ASTForAudioClassification`` on mel-major features: ``[B, n_mels, frames]`` → ``logits``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_values: Any) -> dict[str, Any]:
        """Filter-bank features ``[B, n_mels, frames]`` → logits; AST reads them time-major."""
        return {"logits": self.model(input_values=input_values.transpose(1, 2)).logits}


def check_features_match(extractor: Any, section: dict[str, Any], path: Path) -> None:
    """Refuse an extractor whose features the runtime does not reproduce (checked on two
    speech-like recordings, 0.7 s and 1.9 s, one at a time as the pipeline runs them).

    Raises:
        UnsupportedModelError: The largest difference exceeds 1e-4.
    """
    from edgemm.data.synthetic import synthesize_speechlike

    rate = int(section["sampling_rate"])
    for seconds, seed in ((0.7, 1), (1.9, 2)):
        wave = synthesize_speechlike(seconds, rate, seed=seed)
        expected = np.asarray(extractor(wave, sampling_rate=rate, return_tensors="np")["input_values"], np.float32)
        got = prepare_audio_batch([wave], section)[section["input"]]
        if section["features"] == FBANK_FEATURES:
            got = got.transpose(0, 2, 1)
        worst = float(np.abs(expected - got).max()) if expected.shape == got.shape else float("inf")
        if worst > _FEATURE_TOLERANCE:
            raise UnsupportedModelError(
                f"{path}'s {type(extractor).__name__} produces features the edge runtime does not reproduce "
                f"(shape {list(expected.shape)} vs {list(got.shape)}, largest difference {worst:.3g}).",
                hint=f"Report the preprocessor_config.json; meanwhile export with your own module: {SPEC_ROUTE}.")


def _waveform_interface(section: dict[str, Any]) -> tuple[list[TensorSpec], dict[str, tuple[int, int]], list[ShapeCase]]:
    rate = int(section["sampling_rate"])
    low, high = int(MIN_AUDIO_SECONDS * rate), int(float(section["max_seconds"]) * rate)
    inputs = [TensorSpec(section["input"], "float32", ["batch", "audio_len"])]
    if section.get("mask_input"):
        inputs.append(TensorSpec(section["mask_input"], "int64", ["batch", "audio_len"]))
    cases = [
        ShapeCase("export", {"batch": 2, "audio_len": rate}),
        ShapeCase("shortest", {"batch": 1, "audio_len": low}),
        ShapeCase("longest", {"batch": 2, "audio_len": high}),
        ShapeCase("mixed", {"batch": 3, "audio_len": (low + high) // 7}),
    ]
    return inputs, {"batch": BATCH_RANGE, "audio_len": (low, high)}, cases


def _fbank_interface(section: dict[str, Any], config: Any, path: Path) -> tuple[list[TensorSpec], dict[str, tuple[int, int]], list[ShapeCase]]:
    mel = section["log_mel"]
    n_mels, frames = int(mel["n_mels"]), int(mel["max_frames"])
    if (n_mels, frames) != (int(config.num_mel_bins), int(config.max_length)):
        raise UnsupportedModelError(
            f"{path}: the feature extractor makes {frames} frames x {n_mels} mel bins but the model takes "
            f"max_length={config.max_length} x num_mel_bins={config.num_mel_bins}.",
            hint="Save the feature extractor the model was trained with (max_length and num_mel_bins must match).")
    inputs = [TensorSpec(section["input"], "float32", ["batch", n_mels, frames])]
    cases = [ShapeCase("export", {"batch": 2}), ShapeCase("batch1", {"batch": 1}),
             ShapeCase("batch4", {"batch": 4}), ShapeCase("batch3", {"batch": 3})]
    return inputs, {"batch": BATCH_RANGE}, cases


@register_family(FAMILY, detect=supports(FAMILY, "audio-classification", *ARCHITECTURES),
                 description="a transformers audio-classification directory (Wav2Vec2, HuBERT, WavLM, AST)")
def load_audio_classifier(path: Path, *, allow_pickle: bool = False, labels: list[str] | None = None,
                          **_: Any) -> LoadedModel:
    """Load an audio-classification directory (model + its feature extractor) for export.

    Args:
        path: The ``save_pretrained`` directory (``config.json``, weights,
            ``preprocessor_config.json``).
        allow_pickle: Accept ``pytorch_model.bin`` weights when no safetensors exist.
        labels: Class names replacing ``config.id2label`` (one per output).

    Raises:
        UsageError: No feature extractor saved, or ``labels`` of the wrong length.
        UnsupportedModelError: The feature extractor cannot be reproduced torch-free, or it does
            not fit the model (AST frames / mel bins).
        CheckpointError / UnsafeCheckpointError: The weights cannot (or may not) be loaded.
    """
    model = load_head_model(path, allow_pickle=allow_pickle)
    config = model.config
    extractor = load_processor("audio", path)
    name = architecture(path)
    spectrogram = name == "ASTForAudioClassification"
    # A waveform model sees a mask exactly when the pipeline passes one: when the extractor returns it.
    mask = "attention_mask" if not spectrogram and getattr(extractor, "return_attention_mask", False) else None
    section = audio_preprocessing_from_hf(extractor.to_dict(), inputs=("input_values", mask))
    wanted = FBANK_FEATURES if spectrogram else "waveform"
    if section["features"] != wanted:
        raise UnsupportedModelError(
            f"{path} holds a {name}, but its feature extractor ({type(extractor).__name__}) makes "
            f"{section['features']!r} features, not the {wanted!r} the model takes.",
            hint="Save the feature extractor the model was trained with next to it "
                 "(feature_extractor.save_pretrained(DIR)).")
    if spectrogram:
        inputs, ranges, cases = _fbank_interface(section, config, path)
        module: nn.Module = SpectrogramClassifier(model)
    else:
        inputs, ranges, cases = _waveform_interface(section)
        module = WaveformClassifier(model)
    check_features_match(extractor, section, path)
    names = head_labels(config, labels, path)
    spec = ExportSpec(
        name=path.resolve().name or str(config.model_type),
        family=FAMILY,
        task="classification",
        inputs=inputs,
        outputs=[TensorSpec("logits", "float32", ["batch", len(names)])],
        axis_ranges=ranges,
        export_case=cases[0],
        parity_cases=cases,
        preprocessing={"audio": section},
        postprocessing={"type": "softmax", "output": "logits", "top_k": min(5, len(names))},
        labels=names,
        tolerance=HEAD_TOLERANCE,
    )
    return LoadedModel(module.eval(), spec, source_record(path, str(config.model_type)))
