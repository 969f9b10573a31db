"""Export families ``clip`` and ``siglip``, and the dual-encoder export they share.

With fixed label prompts (``--labels``) the text tower runs once at export time; its normalised
prompt embeddings become a constant of the graph, so the kiosk runs only the image tower and the
graph returns zero-shot ``logits`` over the labels. Without labels both towers are exported and
the graph returns the image–text similarity matrix for any texts sent at run time.

What differs between dual encoders (CLIP, SigLIP, Chinese-CLIP, VisionTextDualEncoder) is
described by a :class:`DualEncoder`; :func:`load_dual_encoder` does the rest. Other families
(:mod:`edgemm.models.specs.hf_dual`) register their own :class:`DualEncoder`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import UsageError
from edgemm.models.encoders import check_weights_format
from edgemm.models.processors import TOKENIZER_FILE, text_section, tokenizer_json
from edgemm.models.spec import ExportSpec, LoadedModel, ShapeCase, Tolerance, register_family
from edgemm.models.specs.common import BATCH_RANGE, encoder_info, image_input, tree_sha256
from edgemm.models.specs.hf import architecture, require_fast_tokenizer, supports
from edgemm.runtime.preprocess.image import image_preprocessing_from_hf

DEFAULT_PROMPT = "a photo of a {}."


@dataclass(frozen=True)
class DualEncoder:
    """What one transformers dual-encoder architecture needs besides the shared export.

    Attributes:
        family: Family name (the manifest's ``family``).
        model_class: The transformers class to load (``CLIPModel`` …).
        default_prompt: The label template when no ``--prompt`` is given.
        sigmoid: Per-label sigmoid scores with a ``logit_bias`` (SigLIP) instead of a softmax.
        padding: Text padding the model was trained with (``"longest"`` or ``"max_length"``).
        text_mask: Whether the text tower takes the attention mask.
        cls_text: The text embedding is ``text_projection`` of the first token's last hidden
            state (Chinese-CLIP's ``forward``; its ``get_text_features`` reads a pooler the
            model does not have).
        token_types: The text tower takes ``token_type_ids`` (BERT-style); the label prompts
            pass the tokenizer's, as the pipelines do (the runtime's one-segment texts leave
            them at the model's default, zeros).
        vision_encoder: Architecture name the graph optimizer knows the image tower by
            (``None``: the vision config's own ``model_type``).
    """

    family: str
    model_class: str
    default_prompt: str = DEFAULT_PROMPT
    sigmoid: bool = False
    padding: str = "longest"
    text_mask: bool = True
    cls_text: bool = False
    token_types: bool = False
    vision_encoder: str | None = "clip_vision_model"

    def image_features(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings."""
        return nn.functional.normalize(model.get_image_features(pixel_values=pixel_values), dim=-1)

    def text_features(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised text embeddings (``attention_mask`` ignored where the model takes none)."""
        mask = attention_mask if self.text_mask else None
        token_type_ids = token_type_ids if self.token_types else None
        if self.cls_text:
            hidden = model.text_model(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids)[0]
            features = model.text_projection(hidden[:, 0, :])
        elif token_type_ids is not None:
            features = model.get_text_features(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids)
        else:
            features = model.get_text_features(input_ids=input_ids, attention_mask=mask)
        return nn.functional.normalize(features, dim=-1)

    def scale(self, model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
        """Cosine similarities → the model's logits (temperature, and SigLIP's bias)."""
        logits = logits * model.logit_scale.exp()
        return logits + model.logit_bias if self.sigmoid else logits


CLIP = DualEncoder("clip", "CLIPModel")
SIGLIP = DualEncoder("siglip", "SiglipModel", sigmoid=True, padding="max_length", text_mask=False,
                     vision_encoder="siglip_vision_model")


class ZeroShotImageClassifier(nn.Module):
    """Image tower + precomputed label embeddings → ``logits`` ``[B, labels]``, ``image_embeds``."""

    def __init__(self, model: nn.Module, label_embeds: torch.Tensor, towers: DualEncoder):
        super().__init__()
        self.model = model
        self.register_buffer("label_embeds", label_embeds)
        self.towers = towers

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image → logits against the fixed label embeddings (computed at export) and the image embedding."""
        image = self.towers.image_features(self.model, pixel_values)
        return {"logits": self.towers.scale(self.model, image @ self.label_embeds.t()), "image_embeds": image}


class DualTowers(nn.Module):
    """Both towers: independent image and text batches → their embeddings and similarities."""

    def __init__(self, model: nn.Module, towers: DualEncoder):
        super().__init__()
        self.model = model
        self.towers = towers

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Images ``[B, …]`` and candidate texts ``[T, S]`` → ``[B, T]`` logits and both embeddings."""
        image = self.towers.image_features(self.model, pixel_values)
        text = self.towers.text_features(self.model, input_ids, attention_mask)
        return {"logits_per_image": self.towers.scale(self.model, image @ text.t()),
                "image_embeds": image, "text_embeds": text}


def _model_type(path: Path) -> str | None:
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except ValueError:
        return None


def load_dual_encoder(path: Path, towers: DualEncoder, *, allow_pickle: bool = False,
                      labels: list[str] | None = None, prompt: str | None = None, **_: Any) -> LoadedModel:
    """Load a dual-encoder directory: zero-shot over ``labels`` (text tower run here), else both towers.

    Args:
        path: The transformers directory (model, fast tokenizer, image processor).
        towers: What the architecture needs (see :class:`DualEncoder`).
        allow_pickle: Accept pickled weights.
        labels: Zero-shot labels; None exports both towers and the similarity matrix.
        prompt: Template with ``{}`` for each label (default ``towers.default_prompt``).

    Raises:
        UsageError: A prompt without ``{}``, or no fast tokenizer.
        UnsupportedModelError: The image processor cannot be reproduced.
    """
    import transformers as tf

    check_weights_format(path, allow_pickle=allow_pickle)
    model_cls = getattr(tf, towers.model_class)
    model = model_cls.from_pretrained(path, local_files_only=True, use_safetensors=None if allow_pickle else True).eval()
    tokenizer = require_fast_tokenizer(tf.AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True), path)
    image_processor = tf.AutoImageProcessor.from_pretrained(path, local_files_only=True, use_fast=False)
    image_section = image_preprocessing_from_hf(image_processor.to_dict())
    max_text = int(model.config.text_config.max_position_embeddings)
    mask_name = "attention_mask" if towers.text_mask else None
    source = {"kind": towers.family, "path": str(path.resolve()), "sha256": tree_sha256(path)}
    name = path.name or towers.family
    postprocessing = {"type": "sigmoid" if towers.sigmoid else "softmax", "top_k": 5}
    tolerance = Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999)
    vision = model.config.vision_config
    encoders = {"image": encoder_info(towers.vision_encoder or vision.model_type, vision.to_dict())}
    batch_cases = [
        ShapeCase("export", {"batch": 2}),
        ShapeCase("batch1", {"batch": 1}),
        ShapeCase("batch4", {"batch": 4}),
        ShapeCase("batch3", {"batch": 3}),
    ]

    if labels:
        prompt = prompt or towers.default_prompt
        if "{}" not in prompt:
            raise UsageError(f"The prompt template {prompt!r} has no '{{}}' for the label.",
                             hint=f"Example: --prompt '{towers.default_prompt}'")
        prompts = [prompt.format(label) for label in labels]
        encoded = tokenizer(prompts, padding=towers.padding, truncation=True, max_length=max_text, return_tensors="pt")
        with torch.no_grad():
            label_embeds = towers.text_features(model, encoded["input_ids"], encoded.get("attention_mask"),
                                                encoded.get("token_type_ids"))
        module = ZeroShotImageClassifier(model, label_embeds.detach().clone(), towers).eval()
        spec = ExportSpec(
            name=name,
            family=towers.family,
            task="zero_shot_classification",
            inputs=[image_input(image_section)],
            outputs=[TensorSpec("logits", "float32", ["batch", len(labels)]),
                     TensorSpec("image_embeds", "float32", ["batch", int(label_embeds.shape[1])])],
            axis_ranges={"batch": BATCH_RANGE},
            export_case=batch_cases[0],
            parity_cases=batch_cases,
            modalities={"image": {"required": True, "inputs": ["pixel_values"], "presence_input": None}},
            preprocessing={"image": image_section},
            # Every label gets its score, as the zero-shot pipelines return them.
            postprocessing={**postprocessing, "output": "logits", "top_k": len(labels)},
            labels=list(labels),
            tolerance=tolerance,
            zero_shot={"prompt": prompt, "prompts": prompts, "text_tower": "precomputed at export",
                       "embedding_dim": int(label_embeds.shape[1])},
            encoders=encoders,
        )
        return LoadedModel(module, spec, source)

    text = text_section(tokenizer, TOKENIZER_FILE, max_text, padding=towers.padding, attention_mask=mask_name)
    text_inputs = [TensorSpec("input_ids", "int64", ["text_batch", "seq"])]
    if mask_name:
        text_inputs.append(TensorSpec(mask_name, "int64", ["text_batch", "seq"]))
    longest = text["max_length"]
    low = text["min_length"] if towers.padding == "longest" else longest
    seq_range = (low, longest)
    export_seq = longest if towers.padding == "max_length" else min(8, longest)
    cases = [
        ShapeCase("export", {"batch": 2, "text_batch": 3, "seq": export_seq}),
        ShapeCase("batch1-shortest", {"batch": 1, "text_batch": 1, "seq": seq_range[0]}),
        ShapeCase("batch4-longest", {"batch": 4, "text_batch": 5, "seq": seq_range[1]}),
        ShapeCase("batch3-mixed", {"batch": 3, "text_batch": 2, "seq": (seq_range[0] + seq_range[1]) // 2}),
    ]
    dim = int(model.config.projection_dim) if hasattr(model.config, "projection_dim") else int(model.config.text_config.hidden_size)
    spec = ExportSpec(
        name=name,
        family=towers.family,
        task="image_text_similarity",
        inputs=[image_input(image_section), *text_inputs],
        outputs=[TensorSpec("logits_per_image", "float32", ["batch", "text_batch"]),
                 TensorSpec("image_embeds", "float32", ["batch", dim]),
                 TensorSpec("text_embeds", "float32", ["text_batch", dim])],
        axis_ranges={"batch": BATCH_RANGE, "text_batch": BATCH_RANGE, "seq": seq_range},
        export_case=cases[0],
        parity_cases=cases,
        modalities={
            "image": {"required": True, "inputs": ["pixel_values"], "presence_input": None},
            "text": {"required": True, "inputs": [t.name for t in text_inputs], "presence_input": None,
                     "batch_axis": "text_batch"},
        },
        preprocessing={"image": image_section, "text": text},
        postprocessing={**postprocessing, "output": "logits_per_image"},
        assets={TOKENIZER_FILE: tokenizer_json(tokenizer)},
        tolerance=tolerance,
        encoders=encoders,
    )
    return LoadedModel(DualTowers(model, towers).eval(), spec, source)


# CLIP and SigLIP are recognised by model_type (a CLIP directory saved by other tools may lack
# ``architectures``), unless the directory names another class of that type (e.g.
# CLIPForImageClassification, which these towers are not); supports() records the architectures.
supports("clip", "zero-shot-image-classification", "CLIPModel")
supports("siglip", "zero-shot-image-classification", "SiglipModel")


def _dual_encoder_dir(path: Path, model_type: str, model_class: str) -> bool:
    return _model_type(path) == model_type and architecture(path) in (None, model_class)


@register_family("clip", detect=lambda p: _dual_encoder_dir(p, "clip", "CLIPModel"),
                 description="a transformers CLIP directory (config.json model_type 'clip')")
def load_clip(path: Path, **options: Any) -> LoadedModel:
    """Load a CLIP directory (zero-shot with ``labels``, else both towers)."""
    return load_dual_encoder(path, CLIP, **options)


@register_family("siglip", detect=lambda p: _dual_encoder_dir(p, "siglip", "SiglipModel"),
                 description="a transformers SigLIP directory (config.json model_type 'siglip')")
def load_siglip(path: Path, **options: Any) -> LoadedModel:
    """Load a SigLIP directory (zero-shot with ``labels``, else both towers)."""
    return load_dual_encoder(path, SIGLIP, **options)
