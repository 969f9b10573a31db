"""Training-time processors of a fusion model and their translation to runtime preprocessing.

The processors are transformers objects (tokenizer, image processor, feature extractor) or, for
edgemm's log-mel CNN, a plain dict. :meth:`Processors.runtime_preprocessing` turns them into
the manifest sections that the torch-free runtime executes with numpy / PIL / tokenizers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemm.errors import UsageError
from edgemm.models.config import FusionConfig
from edgemm.runtime.preprocess.audio import (
    audio_preprocessing_from_hf,
    default_log_mel_preprocessing,
)
from edgemm.runtime.preprocess.image import WHITE, image_preprocessing_from_hf
from edgemm.runtime.preprocess.text import text_preprocessing

TOKENIZER_FILE = "text/tokenizer.json"
EDGEMM_AUDIO_FILE = "edgemm_audio.json"


@dataclass
class Processors:
    """Tokenizer, image processor and audio front end (each optional)."""

    tokenizer: Any = None
    image_processor: Any = None
    audio: Any = None  # transformers feature extractor, or an edgemm audio preprocessing dict

    # -- defaults -------------------------------------------------------------------------

    @classmethod
    def defaults(cls, config: FusionConfig) -> Processors:
        """Processors from the encoders' source directories, else standard ones per architecture."""
        procs = cls()
        text = config.encoders.get("text")
        if text is not None:
            if not text.source:
                raise UsageError(
                    "A text encoder built from a config has no tokenizer.",
                    hint="Pass processors=Processors(tokenizer=...) or build the encoder from a directory.",
                )
            from transformers import AutoTokenizer

            procs.tokenizer = AutoTokenizer.from_pretrained(text.source, local_files_only=True, use_fast=True)
            if not getattr(procs.tokenizer, "is_fast", False):
                raise UsageError(f"{text.source} has no fast tokenizer (tokenizer.json).",
                                 hint="Save the tokenizer with a transformers version that writes tokenizer.json.")
        image = config.encoders.get("image")
        if image is not None:
            procs.image_processor = _default_image_processor(image.architecture, image.config, image.source)
        audio = config.encoders.get("audio")
        if audio is not None:
            procs.audio = _default_audio_frontend(audio.architecture, audio.config, audio.source)
        return procs

    # -- persistence ----------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Save the tokenizer, image processor and audio feature config under ``folder`` (``text/``, ``image/``, ``audio/``)."""
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder / "text")
        if self.image_processor is not None:
            self.image_processor.save_pretrained(folder / "image")
        if isinstance(self.audio, dict):
            (folder / "audio").mkdir(parents=True, exist_ok=True)
            (folder / "audio" / EDGEMM_AUDIO_FILE).write_text(json.dumps(self.audio, indent=2), encoding="utf-8")
        elif self.audio is not None:
            self.audio.save_pretrained(folder / "audio")

    @classmethod
    def load(cls, folder: Path, config: FusionConfig) -> Processors:
        """Load the processors a FusionModel directory carries for the encoders in ``config`` (offline only)."""
        procs = cls()
        if "text" in config.encoders:
            from transformers import AutoTokenizer

            procs.tokenizer = AutoTokenizer.from_pretrained(folder / "text", local_files_only=True, use_fast=True)
        if "image" in config.encoders:
            from transformers import AutoImageProcessor

            procs.image_processor = AutoImageProcessor.from_pretrained(folder / "image", local_files_only=True, use_fast=False)
        if "audio" in config.encoders:
            own = folder / "audio" / EDGEMM_AUDIO_FILE
            if own.is_file():
                procs.audio = json.loads(own.read_text(encoding="utf-8"))
            else:
                from transformers import AutoFeatureExtractor

                procs.audio = AutoFeatureExtractor.from_pretrained(folder / "audio", local_files_only=True)
        return procs

    # -- runtime translation --------------------------------------------------------------

    def runtime_preprocessing(self, config: FusionConfig) -> tuple[dict[str, dict[str, Any]], dict[str, bytes]]:
        """Manifest preprocessing sections and the files they need (bundle path → bytes)."""
        sections: dict[str, dict[str, Any]] = {}
        assets: dict[str, bytes] = {}
        if self.tokenizer is not None:
            assets[TOKENIZER_FILE] = tokenizer_json(self.tokenizer)
            sections["text"] = text_section(self.tokenizer, TOKENIZER_FILE, config.text_max_length)
        if self.image_processor is not None:
            # edgemm trains FusionModels through these same sections, so the picture a child
            # sees (transparency on white paper) is what training, parity and the kiosk all use.
            sections["image"] = image_preprocessing_from_hf(self.image_processor.to_dict(), background=WHITE)
        if isinstance(self.audio, dict):
            sections["audio"] = dict(self.audio)
        elif self.audio is not None:
            sections["audio"] = audio_section(self.audio)
        return sections, assets


def tokenizer_json(tokenizer: Any) -> bytes:
    """The Rust tokenizer behind a transformers fast tokenizer, as ``tokenizer.json`` bytes."""
    return tokenizer.backend_tokenizer.to_str().encode("utf-8")


def text_section(tokenizer: Any, tokenizer_path: str, max_length: int, *, padding: str = "longest",
                 attention_mask: str | None = "attention_mask", input_ids: str = "input_ids",
                 token_type_ids: str | None = None) -> dict[str, Any]:
    """The runtime text section for a transformers fast tokenizer.

    The runtime then returns what ``tokenizer(texts, padding=padding, truncation=True,
    max_length=...)`` returns: the tokenizer's own padding and truncation sides, pad token, pad
    id and pad token type id are recorded.

    Args:
        tokenizer: A transformers fast tokenizer (``is_fast``).
        tokenizer_path: Bundle-relative path of its ``tokenizer.json``.
        max_length: Truncation length in tokens (capped by ``model_max_length``).
        padding: ``"longest"`` or ``"max_length"`` (SigLIP).
        attention_mask / input_ids / token_type_ids: The model's ONNX input names for each
            (``None``: the model does not take it).

    Returns:
        The section (see :func:`edgemm.runtime.preprocess.text.text_preprocessing`).

    Raises:
        UsageError: The tokenizer has no padding token, or pads or truncates on a side other
            than left or right.
    """
    model_max = getattr(tokenizer, "model_max_length", None) or max_length
    limit = min(max_length, model_max) if model_max < 10**6 else max_length
    pad_token = tokenizer.pad_token
    if pad_token is None:
        raise UsageError("The tokenizer has no padding token.", hint="Set tokenizer.pad_token before saving.")
    sides = {"padding_side": tokenizer.padding_side, "truncation_side": tokenizer.truncation_side}
    for key, side in sides.items():
        if side not in ("right", "left"):
            raise UsageError(f"The tokenizer's {key} is {side!r}.", hint=f"Set tokenizer.{key} to 'right' or 'left'.")
    return text_preprocessing(
        tokenizer_path,
        max_length=limit,
        pad_token_id=tokenizer.pad_token_id,
        pad_token=pad_token,
        padding=padding,
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        min_length=len(tokenizer("")["input_ids"]),
        pad_type_id=int(tokenizer.pad_token_type_id),
        **sides,
    )


def audio_section(extractor: Any, *, inputs: tuple[str, str | None] | None = None,
                  features: str | None = None) -> dict[str, Any]:
    """The runtime audio section for a transformers feature extractor.

    Args:
        extractor: A ``Wav2Vec2FeatureExtractor`` (wav2vec2, HuBERT, WavLM ...) or
            ``WhisperFeatureExtractor``, configured as at training time.
        inputs: The model's ONNX input names ``(features, mask)``; ``mask`` None when the
            model takes no mask. Default: ``input_values`` + ``audio_attention_mask``
            (waveform) or ``input_features`` (Whisper).
        features: Force the feature kind of a custom extractor (see
            :func:`~edgemm.runtime.preprocess.audio.audio_preprocessing_from_hf`).

    Returns:
        The section; the runtime reproduces ``extractor(waves, padding=True)`` with the
        extractor's own ``return_attention_mask`` / ``do_normalize`` / ``padding_value``.

    Raises:
        UnsupportedModelError: The extractor or one of its settings cannot be reproduced.
    """
    return audio_preprocessing_from_hf(extractor.to_dict(), features=features, inputs=inputs)


def _default_image_processor(architecture: str, config: dict[str, Any], source: str | None) -> Any:
    import transformers as tf

    if source and (Path(source) / "preprocessor_config.json").is_file():
        return tf.AutoImageProcessor.from_pretrained(source, local_files_only=True, use_fast=False)
    size = int(config.get("image_size", 224))
    if architecture == "clip_vision_model":
        return tf.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    if architecture == "siglip_vision_model":
        return tf.SiglipImageProcessor(size={"height": size, "width": size})
    if architecture in ("resnet", "convnext"):
        return tf.ConvNextImageProcessor(size={"shortest_edge": 224})
    return tf.ViTImageProcessor(size={"height": size, "width": size})


def _default_audio_frontend(architecture: str, config: dict[str, Any], source: str | None) -> Any:
    import transformers as tf

    if source and (Path(source) / "preprocessor_config.json").is_file():
        return tf.AutoFeatureExtractor.from_pretrained(source, local_files_only=True)
    if architecture in ("wav2vec2", "hubert"):
        return tf.Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True)
    if architecture == "whisper":
        frames = int(config.get("max_source_positions", 1500)) * 2
        hop, rate = 160, 16000
        if (frames * hop) % rate:
            raise UsageError(f"Whisper max_source_positions={frames // 2} does not give whole seconds of audio.")
        return tf.WhisperFeatureExtractor(feature_size=int(config.get("num_mel_bins", 80)),
                                          chunk_length=frames * hop // rate, hop_length=hop, sampling_rate=rate)
    return default_log_mel_preprocessing(n_mels=int(config.get("n_mels", 64)))
