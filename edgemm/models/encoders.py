"""Encoders: wrap transformers text / vision / audio models (and edgemm's log-mel CNN) behind
one output shape so every fusion module can consume any of them.

Each encoder returns an :class:`EncoderOutput`: token states ``[B, T, D]``, a token mask
``[B, T]`` (``True`` = real token, or ``None`` when every token is real) and a pooled ``[B, D]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgemm.errors import CheckpointError, UnsafeCheckpointError, UnsupportedModelError, UsageError
from edgemm.models.config import EncoderConfig

# Graph input names per modality and architecture (shared with the export spec).
TEXT_INPUTS = ("input_ids", "attention_mask")
IMAGE_INPUTS = ("pixel_values",)
WAVEFORM_INPUTS = ("input_values", "audio_attention_mask")
LOGMEL_INPUTS = ("input_features", "audio_attention_mask")
WHISPER_INPUTS = ("input_features",)


@dataclass
class EncoderOutput:
    """What every encoder hands the fusion module.

    Attributes:
        tokens: ``[B, T, D]`` per-token / per-patch / per-frame states.
        mask: ``[B, T]`` validity of each token (None: all valid).
        pooled: ``[B, D]`` one vector per row.
    """
    tokens: torch.Tensor
    mask: torch.Tensor | None
    pooled: torch.Tensor


def masked_mean(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over axis 1 counting only ``mask``-ed positions (all positions when ``mask`` is None)."""
    if mask is None:
        return states.mean(dim=1)
    weights = mask.to(states.dtype).unsqueeze(-1)
    # clamp: an all-padding row pools to zeros instead of NaN.
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _hf_config(enc: EncoderConfig) -> Any:
    from transformers import AutoConfig

    data = dict(enc.config)
    model_type = data.pop("model_type", enc.architecture)
    try:
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError) as exc:
        raise UnsupportedModelError(f"transformers does not know model_type {model_type!r}: {exc}") from exc


def check_weights_format(folder: Path, *, allow_pickle: bool) -> None:
    """Refuse a pretrained directory whose only weights are pickle files (unless allowed)."""
    safetensors = list(folder.glob("*.safetensors"))
    pickles = [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    if not safetensors and pickles and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{folder} holds only pickle weights ({pickles[0].name}); loading pickle can run arbitrary code.",
            hint="Convert the checkpoint to safetensors, or pass --allow-pickle if you trust its origin.",
        )
    if not safetensors and not pickles:
        raise CheckpointError(f"{folder} has no weights file (*.safetensors).", hint="Save the model with save_pretrained.")


def _load_hf_model(enc: EncoderConfig, *, allow_pickle: bool) -> nn.Module:
    from transformers import AutoModel

    if enc.architecture == "whisper":
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperModel

        if enc.source:
            check_weights_format(Path(enc.source), allow_pickle=allow_pickle)
            return WhisperModel.from_pretrained(
                enc.source, local_files_only=True, use_safetensors=not allow_pickle
            ).get_encoder()
        data = {k: v for k, v in enc.config.items() if k != "model_type"}
        return WhisperEncoder(WhisperConfig(**data))
    if enc.source:
        check_weights_format(Path(enc.source), allow_pickle=allow_pickle)
        try:
            return AutoModel.from_pretrained(enc.source, local_files_only=True, use_safetensors=None if allow_pickle else True)
        except OSError as exc:
            raise CheckpointError(f"Cannot load the {enc.modality} encoder from {enc.source}: {exc}") from exc
    return AutoModel.from_config(_hf_config(enc))


class TextEncoder(nn.Module):
    """A transformers text encoder (BERT / MiniLM / DistilBERT / XLM-R family)."""

    input_names = TEXT_INPUTS

    def __init__(self, enc: EncoderConfig, *, allow_pickle: bool = False):
        super().__init__()
        self.model = _load_hf_model(enc, allow_pickle=allow_pickle)
        self.pooling = enc.pooling
        self.hidden_size = int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.dim)
        if self.pooling == "pooler" and getattr(self.model, "pooler", None) is None:
            raise UsageError(f"{enc.architecture} has no pooler; use pooling 'mean' or 'cls'.")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        """Encode token ids ``[B, S]`` with their attention mask into tokens, mask and a pooled vector."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        states = out.last_hidden_state
        mask = attention_mask.bool()
        if self.pooling == "cls":
            pooled = states[:, 0]
        elif self.pooling == "pooler":
            pooled = out.pooler_output
        else:
            pooled = masked_mean(states, mask)
        return EncoderOutput(states, mask, pooled)


class VisionEncoder(nn.Module):
    """A transformers vision encoder: ViT / DeiT / CLIP-vision / SigLIP-vision / ResNet / ConvNeXt."""

    input_names = IMAGE_INPUTS

    def __init__(self, enc: EncoderConfig, *, allow_pickle: bool = False):
        super().__init__()
        self.model = _load_hf_model(enc, allow_pickle=allow_pickle)
        self.pooling = enc.pooling
        cfg = self.model.config
        self.convolutional = enc.architecture in ("resnet", "convnext")
        self.hidden_size = int(cfg.hidden_sizes[-1] if self.convolutional else cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:
        """Encode ``pixel_values`` ``[B, C, H, W]``; feature maps of convolutional models become patch tokens."""
        out = self.model(pixel_values=pixel_values)
        states = out.last_hidden_state
        if self.convolutional:
            # [B, C, h, w] feature map → [B, h*w, C] "patch tokens".
            tokens = states.flatten(2).transpose(1, 2)
            pooled = out.pooler_output.flatten(1) if self.pooling != "mean" else tokens.mean(dim=1)
            return EncoderOutput(tokens, None, pooled)
        if self.pooling == "cls":
            pooled = states[:, 0]
        elif self.pooling == "pooler" and getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output
        else:
            pooled = states.mean(dim=1)
        return EncoderOutput(states, None, pooled)


class WaveformAudioEncoder(nn.Module):
    """wav2vec2 / HuBERT on raw 16 kHz waveforms, with a sample-level attention mask."""

    input_names = WAVEFORM_INPUTS

    def __init__(self, enc: EncoderConfig, *, allow_pickle: bool = False):
        super().__init__()
        self.model = _load_hf_model(enc, allow_pickle=allow_pickle)
        self.hidden_size = int(self.model.config.hidden_size)
        # Group-norm feature encoders (wav2vec2-base) were trained on zero padding without a
        # mask; passing one changes their outputs (transformers' documented behaviour).
        self.pass_mask = getattr(self.model.config, "feat_extract_norm", "layer") == "layer"

    def forward(self, input_values: torch.Tensor, audio_attention_mask: torch.Tensor) -> EncoderOutput:
        """Encode raw waveforms ``[B, L]``; the sample mask becomes a frame mask for pooling."""
        mask_arg = audio_attention_mask if self.pass_mask else None
        states = self.model(input_values=input_values, attention_mask=mask_arg).last_hidden_state
        frame_mask = self.model._get_feature_vector_attention_mask(states.shape[1], audio_attention_mask).bool()
        return EncoderOutput(states, frame_mask, masked_mean(states, frame_mask))


class WhisperAudioEncoder(nn.Module):
    """The Whisper encoder on fixed-length log-mel features (30 s windows, or the config's)."""

    input_names = WHISPER_INPUTS

    def __init__(self, enc: EncoderConfig, *, allow_pickle: bool = False):
        super().__init__()
        self.model = _load_hf_model(enc, allow_pickle=allow_pickle)
        self.hidden_size = int(self.model.config.d_model)

    def forward(self, input_features: torch.Tensor) -> EncoderOutput:
        """Encode a fixed 30 s log-mel window ``[B, 80, 3000]`` (Whisper pads every input to it)."""
        states = self.model(input_features=input_features).last_hidden_state
        return EncoderOutput(states, None, states.mean(dim=1))


class LogMelCNNEncoder(nn.Module):
    """edgemm's compact audio encoder: strided 1-D convolutions over log-mel frames.

    Padded frames are zeroed before every convolution, so a padded item in a batch gives the
    same result as the item alone (the convolution's own zero padding looks identical).
    Config keys: ``n_mels`` (64), ``channels`` ([64, 128]), ``kernel_size`` (5).
    """

    input_names = LOGMEL_INPUTS

    def __init__(self, enc: EncoderConfig, *, allow_pickle: bool = False):
        super().__init__()
        cfg = {"n_mels": 64, "channels": [64, 128], "kernel_size": 5, **enc.config}
        enc.config.update(cfg)
        k = int(cfg["kernel_size"])
        layers = []
        width = int(cfg["n_mels"])
        for channels in cfg["channels"]:
            layers.append(nn.Conv1d(width, int(channels), k, stride=2, padding=k // 2))
            width = int(channels)
        self.convs = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(width)
        self.hidden_size = width

    def forward(self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor) -> EncoderOutput:
        """Encode log-mel features ``[B, n_mels, T]``; padded frames are masked at every stride."""
        x = input_features
        mask = audio_attention_mask.to(x.dtype)
        for conv in self.convs:
            x = torch.nn.functional.gelu(conv(x * mask.unsqueeze(1)))
            mask = mask[:, ::2]
        tokens = self.norm(x.transpose(1, 2))
        frame_mask = mask.bool()
        return EncoderOutput(tokens, frame_mask, masked_mean(tokens, frame_mask))


def build_encoder(enc: EncoderConfig, *, allow_pickle: bool = False) -> nn.Module:
    """Instantiate the encoder module for ``enc`` (loading ``enc.source`` weights if set)."""
    if enc.modality == "text":
        return TextEncoder(enc, allow_pickle=allow_pickle)
    if enc.modality == "image":
        return VisionEncoder(enc, allow_pickle=allow_pickle)
    if enc.architecture in ("wav2vec2", "hubert"):
        return WaveformAudioEncoder(enc, allow_pickle=allow_pickle)
    if enc.architecture == "whisper":
        return WhisperAudioEncoder(enc, allow_pickle=allow_pickle)
    return LogMelCNNEncoder(enc, allow_pickle=allow_pickle)
