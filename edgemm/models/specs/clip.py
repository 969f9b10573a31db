"""Export families ``clip`` and ``siglip``: transformers CLIP / SigLIP directories.

With fixed label prompts (``--labels``) the text tower runs once at export time; its normalised
prompt embeddings become a constant of the graph, so the kiosk runs only the image tower and the
graph returns zero-shot ``logits`` over the labels. Without labels both towers are exported and
the graph returns the image–text similarity matrix for any texts sent at run time.
"""

from __future__ import annotations

import json
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
from edgemm.runtime.preprocess.image import image_preprocessing_from_hf

DEFAULT_PROMPT = "a photo of a {}."


class ZeroShotImageClassifier(nn.Module):
    """Image tower + precomputed label embeddings → ``logits`` ``[B, labels]``, ``image_embeds``."""

    def __init__(self, model: nn.Module, label_embeds: torch.Tensor, sigmoid: bool):
        super().__init__()
        self.model = model
        self.register_buffer("label_embeds", label_embeds)
        self.sigmoid = sigmoid

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image → logits against the fixed label embeddings (computed at export) and the image embedding."""
        image = nn.functional.normalize(self.model.get_image_features(pixel_values=pixel_values), dim=-1)
        logits = image @ self.label_embeds.t() * self.model.logit_scale.exp()
        if self.sigmoid:
            logits = logits + self.model.logit_bias
        return {"logits": logits, "image_embeds": image}


class DualTowers(nn.Module):
    """Both towers: independent image and text batches → their embeddings and similarities."""

    def __init__(self, model: nn.Module, sigmoid: bool, use_mask: bool):
        super().__init__()
        self.model = model
        self.sigmoid = sigmoid
        self.use_mask = use_mask

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Images ``[B, …]`` and candidate texts ``[T, S]`` → ``[B, T]`` logits and both embeddings."""
        image = nn.functional.normalize(self.model.get_image_features(pixel_values=pixel_values), dim=-1)
        mask = attention_mask if self.use_mask else None
        text = nn.functional.normalize(self.model.get_text_features(input_ids=input_ids, attention_mask=mask), dim=-1)
        logits = image @ text.t() * self.model.logit_scale.exp()
        if self.sigmoid:
            logits = logits + self.model.logit_bias
        return {"logits_per_image": logits, "image_embeds": image, "text_embeds": text}


def _model_type(path: Path) -> str | None:
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except ValueError:
        return None


def _load(path: Path, *, allow_pickle: bool, labels: list[str] | None, prompt: str | None, **_: Any) -> LoadedModel:
    import transformers as tf

    kind = _model_type(path)
    sigmoid = kind == "siglip"
    check_weights_format(path, allow_pickle=allow_pickle)
    model_cls = tf.SiglipModel if sigmoid else tf.CLIPModel
    model = model_cls.from_pretrained(path, local_files_only=True, use_safetensors=None if allow_pickle else True).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{path} has no fast tokenizer (tokenizer.json); the edge runtime needs one.",
                         hint="Save the tokenizer with tokenizer.save_pretrained() from a fast tokenizer.")
    image_processor = tf.AutoImageProcessor.from_pretrained(path, local_files_only=True, use_fast=False)
    image_section = image_preprocessing_from_hf(image_processor.to_dict())
    max_text = int(model.config.text_config.max_position_embeddings)
    # SigLIP was trained on max_length padding without a mask; CLIP on masked, longest padding.
    padding = "max_length" if sigmoid else "longest"
    mask_name = None if sigmoid else "attention_mask"
    source = {"kind": kind, "path": str(path.resolve()), "sha256": tree_sha256(path)}
    name = path.name or kind
    postprocessing = {"type": "sigmoid" if sigmoid else "softmax", "top_k": 5}
    tolerance = Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999)
    encoders = {"image": encoder_info("clip_vision_model", model.config.vision_config.to_dict())}
    batch_cases = [
        ShapeCase("export", {"batch": 2}),
        ShapeCase("batch1", {"batch": 1}),
        ShapeCase("batch4", {"batch": 4}),
        ShapeCase("batch3", {"batch": 3}),
    ]

    if labels:
        prompt = prompt or DEFAULT_PROMPT
        if "{}" not in prompt:
            raise UsageError(f"The prompt template {prompt!r} has no '{{}}' for the label.",
                             hint=f"Example: --prompt '{DEFAULT_PROMPT}'")
        prompts = [prompt.format(label) for label in labels]
        encoded = tokenizer(prompts, padding=padding, truncation=True, max_length=max_text, return_tensors="pt")
        with torch.no_grad():
            kwargs = {"input_ids": encoded["input_ids"]}
            if mask_name:
                kwargs["attention_mask"] = encoded["attention_mask"]
            label_embeds = nn.functional.normalize(model.get_text_features(**kwargs), dim=-1)
        module = ZeroShotImageClassifier(model, label_embeds.detach().clone(), sigmoid).eval()
        spec = ExportSpec(
            name=name,
            family=kind,
            task="zero_shot_classification",
            inputs=[image_input(image_section)],
            outputs=[TensorSpec("logits", "float32", ["batch", len(labels)]),
                     TensorSpec("image_embeds", "float32", ["batch", int(label_embeds.shape[1])])],
            axis_ranges={"batch": BATCH_RANGE},
            export_case=batch_cases[0],
            parity_cases=batch_cases,
            modalities={"image": {"required": True, "inputs": ["pixel_values"], "presence_input": None}},
            preprocessing={"image": image_section},
            postprocessing={**postprocessing, "output": "logits"},
            labels=list(labels),
            tolerance=tolerance,
            zero_shot={"prompt": prompt, "prompts": prompts, "text_tower": "precomputed at export",
                       "embedding_dim": int(label_embeds.shape[1])},
            encoders=encoders,
        )
        return LoadedModel(module, spec, source)

    text = text_section(tokenizer, TOKENIZER_FILE, max_text, padding=padding, attention_mask=mask_name)
    text_inputs = [TensorSpec("input_ids", "int64", ["text_batch", "seq"])]
    if mask_name:
        text_inputs.append(TensorSpec(mask_name, "int64", ["text_batch", "seq"]))
    low = text["min_length"] if padding == "longest" else max_text
    seq_range = (low, max_text)
    export_seq = max_text if padding == "max_length" else min(8, max_text)
    cases = [
        ShapeCase("export", {"batch": 2, "text_batch": 3, "seq": export_seq}),
        ShapeCase("batch1-shortest", {"batch": 1, "text_batch": 1, "seq": seq_range[0]}),
        ShapeCase("batch4-longest", {"batch": 4, "text_batch": 5, "seq": seq_range[1]}),
        ShapeCase("batch3-mixed", {"batch": 3, "text_batch": 2, "seq": (seq_range[0] + seq_range[1]) // 2}),
    ]
    dim = int(model.config.projection_dim) if hasattr(model.config, "projection_dim") else int(model.config.text_config.hidden_size)
    spec = ExportSpec(
        name=name,
        family=kind,
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
    return LoadedModel(DualTowers(model, sigmoid, use_mask=bool(mask_name)).eval(), spec, source)


@register_family("clip", detect=lambda p: _model_type(p) == "clip",
                 description="a transformers CLIP directory (config.json model_type 'clip')")
def load_clip(path: Path, **options: Any) -> LoadedModel:
    """Load a CLIP directory (zero-shot with ``labels``, else both towers)."""
    return _load(path, **{"allow_pickle": False, "labels": None, "prompt": None, **options})


@register_family("siglip", detect=lambda p: _model_type(p) == "siglip",
                 description="a transformers SigLIP directory (config.json model_type 'siglip')")
def load_siglip(path: Path, **options: Any) -> LoadedModel:
    """Load a SigLIP directory (zero-shot with ``labels``, else both towers)."""
    return _load(path, **{"allow_pickle": False, "labels": None, "prompt": None, **options})
