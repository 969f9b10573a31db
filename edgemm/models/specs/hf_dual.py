"""Export families ``chinese_clip`` and ``vision_text_dual_encoder``: transformers dual encoders
beyond CLIP/SigLIP, exported like them (:func:`edgemm.models.specs.clip.load_dual_encoder`).

* **Chinese-CLIP** (``ChineseCLIPModel``): a CLIP-style vision tower and a BERT text tower over
  Chinese characters (``BertTokenizerFast``), ``ChineseCLIPImageProcessor``. With ``--labels`` the
  default prompt is ``"{}"``: the label words themselves, as Chinese-CLIP's own examples pass them
  (``processor(text=["杰尼龟", "妙蛙种子", …])``). The ``zero-shot-image-classification``
  pipeline's default template is ``"This is a photo of {}."`` — to get its numbers, export with
  ``--prompt`` set to the ``hypothesis_template`` you call it with (e.g. ``"一张{}的照片。"``).
* **VisionTextDualEncoder** (``VisionTextDualEncoderModel``: any vision encoder, e.g. ViT, with any
  text encoder, e.g. BERT, joined by two projections): image–text matching and retrieval (both
  towers and the similarity matrix), or zero-shot over ``--labels`` (default prompt the
  pipeline's ``"This is a photo of {}."``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgemm.models.spec import LoadedModel, register_family
from edgemm.models.specs.clip import DualEncoder, load_dual_encoder
from edgemm.models.specs.hf import supports

# The zero-shot-image-classification pipeline's default hypothesis_template.
PIPELINE_PROMPT = "This is a photo of {}."

CHINESE_CLIP = DualEncoder("chinese_clip", "ChineseCLIPModel", default_prompt="{}", cls_text=True,
                           token_types=True, vision_encoder="clip_vision_model")
VISION_TEXT_DUAL_ENCODER = DualEncoder("vision_text_dual_encoder", "VisionTextDualEncoderModel",
                                       default_prompt=PIPELINE_PROMPT, token_types=True, vision_encoder=None)


@register_family("chinese_clip", detect=supports("chinese_clip", "zero-shot-image-classification", "ChineseCLIPModel"),
                 description="a transformers Chinese-CLIP directory (ChineseCLIPModel)")
def load_chinese_clip(path: Path, **options: Any) -> LoadedModel:
    """Load a Chinese-CLIP directory (zero-shot with ``labels``, else both towers)."""
    return load_dual_encoder(path, CHINESE_CLIP, **options)


@register_family("vision_text_dual_encoder",
                 detect=supports("vision_text_dual_encoder", "image-text-matching", "VisionTextDualEncoderModel"),
                 description="a transformers VisionTextDualEncoder directory (e.g. ViT + BERT)")
def load_vision_text_dual_encoder(path: Path, **options: Any) -> LoadedModel:
    """Load a VisionTextDualEncoder directory (both towers; zero-shot with ``labels``)."""
    return load_dual_encoder(path, VISION_TEXT_DUAL_ENCODER, **options)
