"""Export family ``clap``: a transformers CLAP directory as a zero-shot audio classifier.

The labels' prompts (``--labels``, ``--prompt``; the default is the ``zero-shot-audio-classification``
pipeline's ``"This is a sound of {}."``) run through the text tower once, at export; their
normalised embeddings become a constant of the graph. The kiosk runs only the audio tower (HTSAT)
on ``ClapFeatureExtractor``'s log-mel features, reproduced in numpy by
:mod:`edgemm.runtime.preprocess.audio.clap`, and gets a softmax over the labels — what the
pipeline returns for one recording.

Fused checkpoints (``enable_fusion``, feature extractor ``truncation="fusion"``) mark a recording
``is_longer`` at random when none of a batch is longer than the window; for one recording that
is always the recording itself, so the exported graph applies the fusion block to every row (the
``is_longer=True`` path for each recording, as the pipeline runs it). Recordings longer than the
window, which transformers crops at random, are refused at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import UsageError
from edgemm.models.encoders import check_weights_format
from edgemm.models.spec import ExportSpec, LoadedModel, ShapeCase, Tolerance, register_family
from edgemm.models.specs.common import BATCH_RANGE, tree_sha256
from edgemm.models.specs.hf import supports
from edgemm.runtime.preprocess.audio import audio_preprocessing_from_hf
from edgemm.runtime.preprocess.audio.clap import clap_feature_shape

# The zero-shot-audio-classification pipeline's default hypothesis_template.
DEFAULT_PROMPT = "This is a sound of {}."


class _FixedFusionPatchEmbed(nn.Module):
    """HTSAT's patch embedding with the same ``is_longer`` for every row.

    transformers selects the fused rows with ``torch.where(is_longer)`` and indexes them, a
    data-dependent shape no exporter can keep. With every row fused (``fuse=True``, the
    one-recording rule of ``truncation="fusion"``) or none (a fused model fed ``rand_trunc``
    features) the same arithmetic runs on the whole batch instead.
    """

    def __init__(self, embed: nn.Module, fuse: bool):
        super().__init__()
        self.embed = embed
        self.fuse = fuse

    def forward(self, hidden_states: torch.Tensor, is_longer_idx: Any = None) -> torch.Tensor:
        """``[B, C, H, W]`` mel image → patch tokens ``[B, patches, hidden]``."""
        embed = self.embed
        global_states = embed.proj(hidden_states[:, 0:1, :, :])
        if self.fuse:
            local = hidden_states[:, 1:, :, :]
            _, channels, height, width = local.shape
            local = embed.mel_conv2d(local.reshape(-1, 1, height, width))
            _, features, out_h, out_w = local.shape
            local = local.view(-1, channels, features, out_h, out_w).permute(0, 2, 3, 1, 4).contiguous().flatten(3)
            local = nn.functional.pad(local, (0, global_states.size(-1) - local.size(-1)), "constant", 0)
            global_states = embed.fusion_model(global_states, local)
        if embed.flatten:
            global_states = global_states.flatten(2).transpose(1, 2)
        return embed.norm(global_states)


class ZeroShotAudioClassifier(nn.Module):
    """Audio tower + label embeddings computed at export → ``logits`` ``[B, labels]``, ``audio_embeds``."""

    def __init__(self, model: nn.Module, label_embeds: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("label_embeds", label_embeds)

    def forward(self, input_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Log-mel features → ``logits_per_audio`` against the fixed labels, and the audio embedding."""
        audio = self.model.get_audio_features(input_features=input_features)  # L2-normalised
        logits = audio @ self.label_embeds.t() * self.model.logit_scale_a.exp()
        return {"logits": logits, "audio_embeds": audio}


def _fix_fusion(model: nn.Module, truncation: str) -> str:
    """Make HTSAT's fusion batch-uniform (see :class:`_FixedFusionPatchEmbed`); returns the rule."""
    config = model.config.audio_config
    if not config.enable_fusion:
        if truncation == "fusion":
            raise UsageError(
                "The feature extractor uses truncation='fusion' (four stacked spectrograms), but the "
                "model was built without fusion (audio_config.enable_fusion=false): transformers "
                "cannot run this pair either.",
                hint="Save the feature extractor with truncation='rand_trunc' (as the unfused CLAP "
                     "checkpoints do), or use a fused model.")
        return "not used (unfused model)"
    if config.fusion_type == "channel_map":
        raise UsageError("CLAP fusion_type 'channel_map' does not run in transformers either.",
                         hint="Use the fused CLAP checkpoints' fusion_type 'aff_2d'.")
    encoder = model.audio_model.audio_encoder
    fuse = truncation == "fusion"
    encoder.patch_embed = _FixedFusionPatchEmbed(encoder.patch_embed, fuse=fuse)
    encoder.enable_fusion = False  # the encoder no longer builds the row index from is_longer
    if fuse:
        return "true for every recording (transformers' rule for one recording within the window)"
    return "false for every recording (rand_trunc features)"


def _label_embeds(model: nn.Module, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """The prompts' normalised text embeddings, tokenised as the pipeline does (longest padding)."""
    encoded = tokenizer(prompts, padding=True, return_tensors="pt")
    limit = int(model.config.text_config.max_position_embeddings) - int(model.config.text_config.pad_token_id or 0) - 1
    if encoded["input_ids"].shape[1] > limit:
        raise UsageError(f"A label prompt is {encoded['input_ids'].shape[1]} tokens long; the text tower takes {limit}.",
                         hint="Use shorter labels or a shorter --prompt.")
    with torch.no_grad():
        return model.get_text_features(input_ids=encoded["input_ids"],
                                       attention_mask=encoded.get("attention_mask")).detach().clone()


@register_family("clap", detect=supports("clap", "zero-shot-audio-classification", "ClapModel"),
                 description="a transformers CLAP directory (ClapModel; zero-shot audio with --labels)")
def load_clap(path: Path, *, allow_pickle: bool = False, labels: list[str] | None = None,
              prompt: str | None = None, **_: Any) -> LoadedModel:
    """Load a CLAP directory as a zero-shot audio classifier over ``labels``.

    Raises:
        UsageError: No labels (CLAP is exported with its text tower precomputed), a prompt
            without ``{}``, or a feature extractor the model cannot take.
        UnsupportedModelError: The feature extractor's settings cannot be reproduced.
    """
    import transformers as tf

    if not labels:
        raise UsageError("A CLAP directory is exported as a zero-shot audio classifier: give the labels.",
                         hint="Example: edgemm export DIR -o OUT --labels dog,rain,speech "
                              f"[--prompt '{DEFAULT_PROMPT}']")
    prompt = prompt or DEFAULT_PROMPT
    if "{}" not in prompt:
        raise UsageError(f"The prompt template {prompt!r} has no '{{}}' for the label.",
                         hint=f"Example: --prompt '{DEFAULT_PROMPT}'")
    check_weights_format(path, allow_pickle=allow_pickle)
    model = tf.ClapModel.from_pretrained(path, local_files_only=True,
                                         use_safetensors=None if allow_pickle else True).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    extractor = tf.AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
    section = audio_preprocessing_from_hf(extractor.to_dict(), inputs=("input_features", None))
    prompts = [prompt.format(label) for label in labels]
    label_embeds = _label_embeds(model, tokenizer, prompts)
    is_longer = _fix_fusion(model, section["clap"]["truncation"])
    mel = section["log_mel"]
    if mel["n_mels"] != model.config.audio_config.num_mel_bins:
        raise UsageError(f"The feature extractor makes {mel['n_mels']} mel bands; the model takes "
                         f"{model.config.audio_config.num_mel_bins}.",
                         hint="Save the feature extractor the model was trained with.")
    channels, frames, n_mels = clap_feature_shape(section)
    audio = model.config.audio_config
    longest = audio.spec_size * (audio.spec_size // audio.num_mel_bins)  # HTSAT's time axis
    if frames > longest:
        raise UsageError(f"The feature extractor's {mel['n_samples'] / section['sampling_rate']:g} s window gives "
                         f"{frames} frames; the model's spectrogram image holds {longest}.",
                         hint="Save the feature extractor the model was trained with (max_length_s, hop_length).")
    cases = [ShapeCase("export", {"batch": 2}), ShapeCase("batch1", {"batch": 1}),
             ShapeCase("batch4", {"batch": 4}), ShapeCase("batch3", {"batch": 3})]
    spec = ExportSpec(
        name=path.name or "clap",
        family="clap",
        task="zero_shot_classification",
        inputs=[TensorSpec("input_features", "float32", ["batch", channels, frames, n_mels])],
        outputs=[TensorSpec("logits", "float32", ["batch", len(labels)]),
                 TensorSpec("audio_embeds", "float32", ["batch", int(label_embeds.shape[1])])],
        axis_ranges={"batch": BATCH_RANGE},
        export_case=cases[0],
        parity_cases=cases,
        modalities={"audio": {"required": True, "inputs": ["input_features"], "presence_input": None}},
        preprocessing={"audio": section},
        # The pipeline returns every candidate label with its score.
        postprocessing={"type": "softmax", "output": "logits", "top_k": len(labels)},
        labels=list(labels),
        tolerance=Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999),
        zero_shot={"prompt": prompt, "prompts": prompts, "text_tower": "precomputed at export",
                   "embedding_dim": int(label_embeds.shape[1]), "is_longer": is_longer},
    )
    source = {"kind": "clap", "path": str(path.resolve()), "sha256": tree_sha256(path)}
    return LoadedModel(ZeroShotAudioClassifier(model, label_embeds).eval(), spec, source)
