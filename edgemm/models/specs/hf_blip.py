"""Export family ``blip``: transformers BLIP image–text matching directories (``BlipForImageTextRetrieval``).

BLIP's ITM head reads the text encoder's first token after it cross-attends to the picture and
returns two logits ``[no match, match]``; transformers users take ``softmax(itm_score)[:, 1]`` as
the match probability. The exported module returns ``logits = itm[:, 1] - itm[:, 0]`` (one match
logit per pair), so the runtime's ``matching`` postprocessing (a sigmoid) gives exactly that
softmax, and ``itm_score`` as it is. BLIP's vision tower takes one fixed picture size
(``BlipImageProcessor`` resizes to it), so only the batch and the question length are dynamic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import UnsupportedModelError
from edgemm.models.encoders import check_weights_format
from edgemm.models.processors import TOKENIZER_FILE, text_section, tokenizer_json
from edgemm.models.spec import ExportSpec, LoadedModel, ShapeCase, Tolerance, register_family
from edgemm.models.specs.common import BATCH_RANGE, POSTPROCESSING, image_input, tree_sha256
from edgemm.models.specs.hf import architecture, supports
from edgemm.models.specs.hf_heads import load_text_image_processors
from edgemm.runtime.preprocess.image import image_preprocessing_from_hf

FAMILY = "blip"
RETRIEVAL = "BlipForImageTextRetrieval"
MATCH_LABELS = ["no_match", "match"]
_PROCESSOR_HINT = ("Save the processor next to the model: BlipProcessor(BlipImageProcessor(...), tokenizer)"
                   ".save_pretrained(DIR) (a fast tokenizer, so tokenizer.json is written).")


class BlipMatch(nn.Module):
    """BLIP's image–text matching head as one match logit per (text, picture) pair."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Text tokens and pictures → ``logits`` ``[B, 1]`` (match minus no-match) and ``itm_score`` ``[B, 2]``."""
        itm = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                         use_itm_head=True).itm_score
        # sigmoid(l1 - l0) == softmax([l0, l1])[1]: the runtime's matching score is BLIP's.
        return {"logits": itm[:, 1:] - itm[:, :1], "itm_score": itm}


def _processors(path: Path) -> tuple[Any, dict[str, Any]]:
    """The fast tokenizer and the image section of a BLIP directory (offline)."""
    tokenizer, image_processor = load_text_image_processors(path, "BLIP", _PROCESSOR_HINT)
    return tokenizer, image_preprocessing_from_hf(image_processor.to_dict())


def _load(path: Path, *, allow_pickle: bool = False, **_: Any) -> LoadedModel:
    import transformers as tf

    check_weights_format(path, allow_pickle=allow_pickle)
    model = tf.BlipForImageTextRetrieval.from_pretrained(
        path, local_files_only=True, use_safetensors=None if allow_pickle else True).eval()
    tokenizer, image = _processors(path)
    pixels = image_input(image)
    size = int(model.config.vision_config.image_size)
    if list(pixels.shape[2:]) != [size, size]:
        raise UnsupportedModelError(
            f"{path}: the image processor makes {pixels.shape[2]}x{pixels.shape[3]} pictures, but BLIP's vision "
            f"tower takes {size}x{size}.",
            hint=f"Save a BlipImageProcessor with size={{'height': {size}, 'width': {size}}}. " + _PROCESSOR_HINT)
    max_text = int(model.config.text_config.max_position_embeddings)
    text = text_section(tokenizer, TOKENIZER_FILE, max_text)
    seq_range = (int(text["min_length"]), int(text["max_length"]))
    cases = [
        ShapeCase("export", {"batch": 2, "seq": min(8, seq_range[1])}),
        ShapeCase("batch1-shortest", {"batch": 1, "seq": seq_range[0]}),
        ShapeCase("batch4-longest", {"batch": 4, "seq": seq_range[1]}),
        ShapeCase("batch3-mixed", {"batch": 3, "seq": (seq_range[0] + seq_range[1]) // 2}),
    ]
    spec = ExportSpec(
        name=path.resolve().name or FAMILY,
        family=FAMILY,
        task="matching",
        inputs=[TensorSpec("input_ids", "int64", ["batch", "seq"]), TensorSpec("attention_mask", "int64", ["batch", "seq"]),
                pixels],
        outputs=[TensorSpec("logits", "float32", ["batch", 1]), TensorSpec("itm_score", "float32", ["batch", 2])],
        axis_ranges={"batch": BATCH_RANGE, "seq": seq_range},
        export_case=cases[0],
        parity_cases=cases,
        preprocessing={"text": text, "image": image},
        postprocessing=dict(POSTPROCESSING["matching"]),
        labels=list(MATCH_LABELS),
        assets={TOKENIZER_FILE: tokenizer_json(tokenizer)},
        tolerance=Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999),
    )
    source = {"kind": FAMILY, "architecture": architecture(path), "path": str(path.resolve()),
              "sha256": tree_sha256(path)}
    return LoadedModel(BlipMatch(model).eval(), spec, source)


@register_family(FAMILY, detect=supports(FAMILY, "image-text-matching", RETRIEVAL),
                 description=f"a transformers BLIP image–text matching directory ({RETRIEVAL}) with its BlipProcessor")
def load_blip(path: Path, **options: Any) -> LoadedModel:
    """Load a BLIP image–text matching directory (the model, its tokenizer and image processor)."""
    return _load(path, **options)
