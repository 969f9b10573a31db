"""Tiny fusion models built from transformers configs (no hub), for export tests."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

from edgemm.models.config import EncoderConfig, FusionConfig, FusionSpec, HeadSpec
from edgemm.models.model import FusionModel
from edgemm.models.processors import Processors
from edgemm.runtime.preprocess.audio import default_log_mel_preprocessing

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_text(tokenizer, arch: str = "bert") -> EncoderConfig:
    if arch == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=64)
    else:
        cfg = tf.BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=64, **TINY)
    return EncoderConfig.from_hf_config("text", cfg)


def tiny_image(arch: str = "vit") -> tuple[EncoderConfig, object]:
    if arch == "resnet":
        cfg = tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
        return EncoderConfig.from_hf_config("image", cfg, pooling="pooler"), tf.ViTImageProcessor(size={"height": 32, "width": 32})
    if arch == "convnext":
        cfg = tf.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32)
        return EncoderConfig.from_hf_config("image", cfg, pooling="pooler"), tf.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    if arch == "clip_vision_model":
        cfg = tf.CLIPVisionConfig(image_size=32, patch_size=8, **TINY)
        return EncoderConfig.from_hf_config("image", cfg), tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    if arch == "deit":
        cfg = tf.DeiTConfig(image_size=32, patch_size=8, **TINY)
        return EncoderConfig.from_hf_config("image", cfg), tf.DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})
    cfg = tf.ViTConfig(image_size=32, patch_size=8, **TINY)
    return EncoderConfig.from_hf_config("image", cfg), tf.ViTImageProcessor(size={"height": 32, "width": 32})


def tiny_audio(arch: str) -> tuple[EncoderConfig, object]:
    if arch in ("wav2vec2", "hubert"):
        cls = tf.Wav2Vec2Config if arch == "wav2vec2" else tf.HubertConfig
        cfg = cls(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16, 16, 16, 16), conv_stride=(5, 4, 4, 4), conv_kernel=(10, 4, 4, 4),
                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                  do_stable_layer_norm=True)
        return EncoderConfig.from_hf_config("audio", cfg), tf.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    if arch == "whisper":
        cfg = tf.WhisperConfig(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                               num_mel_bins=16, max_source_positions=50, decoder_layers=1,
                               decoder_attention_heads=2, decoder_ffn_dim=64)
        return EncoderConfig.from_hf_config("audio", cfg), tf.WhisperFeatureExtractor(feature_size=16, chunk_length=1)
    enc = EncoderConfig("audio", "logmel_cnn", {"n_mels": 32, "channels": [32, 32]})
    return enc, default_log_mel_preprocessing(n_mels=32, max_seconds=4.0)


def build_fusion(folder: Path, tokenizer, *, fusion: str = "concat", image: str = "vit", audio: str | None = None,
                 text: str = "bert", head: str = "classification", audio_optional: bool = True,
                 labels: list[str] | None = None, seed: int = 0) -> Path:
    """Save a tiny FusionModel directory (random weights drawn from ``seed``) and return it.

    Seeded, so that a model's answers never depend on which tests drew from torch's global
    generator before this one (the global generator is left as it was).
    """
    image_enc, image_proc = tiny_image(image)
    encoders = {"text": tiny_text(tokenizer, text), "image": image_enc}
    procs = Processors(tokenizer=tokenizer, image_processor=image_proc)
    optional: list[str] = []
    if audio:
        encoders["audio"], procs.audio = tiny_audio(audio)
        optional = ["audio"] if audio_optional else []
    if labels is None:
        labels = [] if head in ("matching", "regression") else ["zero", "one", "two"]
    config = FusionConfig(
        name=f"tiny-{fusion}-{image}" + (f"-{audio}" if audio else ""),
        encoders=encoders,
        fusion=FusionSpec(type=fusion, dim=32, heads=2),
        head=HeadSpec(type=head, hidden=32, num_outputs=2),
        labels=labels,
        optional_modalities=optional,
        text_max_length=40,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = FusionModel(config, procs).eval()
    return model.save_pretrained(folder)


def tiny_text_dir(folder: Path, tokenizer) -> Path:
    """A tiny pretrained-style BERT directory (random weights + the MiniLM tokenizer)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)  # as build_fusion: the weights must not depend on the tests before
        model = tf.BertModel(tf.BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=64, **TINY))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
