"""Export family ``vilt``: transformers ViLT directories — visual question answering and
image–text matching.

``ViltForQuestionAnswering`` (the standard VQA model: a question and a picture → one score per
answer, trained with soft multi-label targets) exports as a ``classification`` task — the answer
is the best-scoring one, so parity, the golden set and the accuracy gate compare top answers —
with ``sigmoid`` scores, as transformers' ``visual-question-answering`` pipeline reports them;
``ViltForImageAndTextRetrieval`` (one match logit) as ``matching``. The pair goes in as the question's tokens and the picture
with its ``pixel_mask``: ``ViltImageProcessor`` gives every picture its own size and pads a
batch to its largest one, so the graph's height and width are dynamic axes.

ViLT's own patch embedding (``ViltEmbeddings.visual_embed``) cannot be traced: it loops over the
batch in Python, interpolates every row's position embeddings to that row's size and *samples*
patches with ``torch.multinomial``. The exported module replaces it with
:func:`grid_visual_embed`, which computes the same embedding with fixed-shape tensor algebra:
every patch of the padded grid is kept (padding patches masked out, exactly as transformers masks
the padding patches it samples), and the per-row bilinear (``align_corners=True``) resize of the
position embeddings is a pair of interpolation matrices. Attention ignores masked keys and the
answer is read at the text's first token, so the logits equal transformers' for every batch.
Only a config whose ``max_image_length`` can cut a picture's patches (a random subset) is
refused: its answers are not reproducible, in transformers or anywhere.
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import UnsupportedModelError
from edgemm.models.encoders import check_weights_format
from edgemm.models.processors import TOKENIZER_FILE, text_section, tokenizer_json
from edgemm.models.spec import ExportSpec, LoadedModel, ShapeCase, Tolerance, register_family
from edgemm.models.specs.common import BATCH_RANGE, POSTPROCESSING, tree_sha256
from edgemm.models.specs.hf import architecture, supports
from edgemm.models.specs.hf_heads import load_text_image_processors
from edgemm.runtime.preprocess.image import image_preprocessing_from_hf

FAMILY = "vilt"
VQA = "ViltForQuestionAnswering"
RETRIEVAL = "ViltForImageAndTextRetrieval"
MATCH_LABELS = ["no_match", "match"]
# What the VQA pipeline reports; the runtime's sigmoid postprocessing lists every answer's score.
VQA_TOP_K = 5
_PROCESSOR_HINT = ("Save the processor next to the model: ViltProcessor(ViltImageProcessor(...), tokenizer)"
                   ".save_pretrained(DIR) (a fast tokenizer, so tokenizer.json is written).")


def _interpolation_matrix(size: torch.Tensor, length: int, source: int) -> torch.Tensor:
    """``[B, length, source]`` weights of a 1-D bilinear, ``align_corners=True`` resize of
    ``source`` points to ``size[b]`` points, zero beyond ``size[b]`` (the padding).

    Same index arithmetic as PyTorch's CPU kernel: scale ``(source-1)/(size-1)`` (0 for one
    point), source index ``scale * i``, neighbours ``floor`` and ``floor + 1`` clamped to the edge.
    """
    index = torch.arange(length, device=size.device, dtype=torch.float32)[None, :]
    points = size.to(torch.float32)[:, None]
    scale = torch.where(points > 1, (source - 1) / (points - 1).clamp(min=1.0), torch.zeros_like(points))
    position = index * scale
    low = position.floor().clamp(max=source - 1)
    high = (low + 1).clamp(max=source - 1)
    frac = (position - low).clamp(0.0, 1.0)
    grid = torch.arange(source, device=size.device, dtype=torch.float32)[None, None, :]
    weights = (grid == low[..., None]).to(torch.float32) * (1.0 - frac)[..., None]
    weights = weights + (grid == high[..., None]).to(torch.float32) * frac[..., None]
    return weights * (index < points).to(torch.float32)[..., None]


def grid_visual_embed(self: Any, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                      max_image_length: int = -1) -> tuple[torch.Tensor, torch.Tensor, None]:
    """A traceable ``ViltEmbeddings.visual_embed``: ``(patch tokens with [CLS], their mask, None)``.

    Bound to a ``ViltEmbeddings`` instance in place of its own method. Keeps every grid patch in
    row-major order; ``max_image_length`` is ignored (the loader refuses configs where it would
    cut patches). The third value (patch indices) is unused by ``ViltEmbeddings.forward``.
    """
    patches = self.patch_embeddings(pixel_values)  # [B, C, Hp, Wp]
    batch, channels, rows, cols = patches.shape
    mask = nn.functional.interpolate(pixel_mask[:, None, :, :].float(), size=(rows, cols)).long()[:, 0]
    valid_rows = mask[:, :, 0].sum(dim=1)  # transformers' x_h: valid cells of the first column
    valid_cols = mask[:, 0, :].sum(dim=1)  # x_w
    grid = self.config.image_size // self.config.patch_size
    along_h = _interpolation_matrix(valid_rows, rows, grid)  # [B, Hp, P]
    along_w = _interpolation_matrix(valid_cols, cols, grid)  # [B, Wp, P]
    # The table as a 2-D [P_w, C * P_h] weight, so INT8 quantizers treat it like a Linear's.
    table = self.position_embeddings[0, 1:, :].reshape(grid, grid, channels).permute(1, 2, 0).reshape(grid, -1)
    across_w = (along_w @ table).reshape(batch, cols, channels, grid).permute(0, 2, 3, 1)  # [B, C, P_h, Wp]
    positions = along_h[:, None] @ across_w  # [B, C, Hp, Wp]
    tokens = patches.flatten(2).transpose(1, 2) + positions.flatten(2).transpose(1, 2)
    cls = self.cls_token.expand(batch, -1, -1) + self.position_embeddings[:, :1, :]
    tokens = self.dropout(torch.cat([cls, tokens], dim=1))
    mask = torch.cat([torch.ones_like(mask[:, :1, 0]), mask.flatten(1)], dim=1)
    return tokens, mask, None


class ViltHead(nn.Module):
    """A ViLT task model with the traceable patch embedding: the pair → ``logits``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        embeddings = model.vilt.embeddings
        embeddings.visual_embed = types.MethodType(grid_visual_embed, embeddings)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Question tokens and the padded pictures with their masks → the head's logits."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         pixel_values=pixel_values, pixel_mask=pixel_mask)
        return {"logits": out.logits}


def _processors(path: Path) -> tuple[Any, dict[str, Any]]:
    """The fast tokenizer and the image section of a ViLT directory (offline)."""
    tokenizer, image_processor = load_text_image_processors(path, "ViLT", _PROCESSOR_HINT)
    section = image_preprocessing_from_hf(image_processor.to_dict())
    resize = section.get("resize")
    if not section.get("pad_to_batch_max") or not resize or resize.get("mode") != "shortest_edge_divisor":
        raise UnsupportedModelError(
            f"{path}: ViLT is exported with ViltImageProcessor resizing (do_resize) and padding (do_pad) its "
            f"pictures; this directory's {type(image_processor).__name__} does "
            f"{'not resize' if not resize else 'not pad'} them.",
            hint="Save a ViltImageProcessor with do_resize=True and do_pad=True (its defaults). " + _PROCESSOR_HINT)
    return tokenizer, section


def _side_range(resize: dict[str, Any], path: Path) -> tuple[int, int, int]:
    """``(smallest side, largest shorter side, largest side)`` the resize can produce."""
    divisor = int(resize["size_divisor"])
    short = int(resize["shortest_edge"]) // divisor * divisor
    long = int(resize["longest_edge"]) // divisor * divisor
    if short == 0:
        raise UnsupportedModelError(
            f"{path}: the image processor resizes pictures to a shorter side of {resize['shortest_edge']} px, "
            f"below its size_divisor {divisor}: every picture would be empty.",
            hint="Use a shortest_edge of at least size_divisor (ViLT's default: 384, divisor 32).")
    return divisor, short, max(long, short)


def _check_patch_budget(config: Any, short: int, long: int, path: Path) -> None:
    """Refuse a ``max_image_length`` that makes ViLT sample a random subset of a picture's patches."""
    limit = getattr(config, "max_image_length", -1)
    if not isinstance(limit, int) or limit < 0:
        return
    patch = int(config.patch_size)
    most = math.ceil(short / patch) * math.ceil(long / patch)
    if most > limit:
        raise UnsupportedModelError(
            f"{path}: max_image_length is {limit}, but the image processor gives pictures up to {most} patches; "
            "ViLT then keeps a random subset of them, so its answers change from run to run and cannot be "
            "reproduced on a kiosk.",
            hint=f"Set \"max_image_length\": -1 in config.json (the processor's size already bounds the patches "
                 f"to {most}), or lower the image processor's shortest_edge.",
            details={"max_image_length": limit, "patches": most})


def _labels(model: Any, arch: str) -> list[str]:
    if arch == RETRIEVAL:
        return list(MATCH_LABELS)
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(int(model.config.num_labels))]


def _load(path: Path, *, allow_pickle: bool = False, **_: Any) -> LoadedModel:
    import transformers as tf

    arch = architecture(path)
    check_weights_format(path, allow_pickle=allow_pickle)
    model_cls = tf.ViltForQuestionAnswering if arch == VQA else tf.ViltForImageAndTextRetrieval
    model = model_cls.from_pretrained(path, local_files_only=True, use_safetensors=None if allow_pickle else True).eval()
    tokenizer, image = _processors(path)
    divisor, short, long = _side_range(image["resize"], path)
    _check_patch_budget(model.config, short, long, path)

    max_text = int(model.config.max_position_embeddings)
    text = text_section(tokenizer, TOKENIZER_FILE, max_text, token_type_ids="token_type_ids")
    seq_range = (int(text["min_length"]), int(text["max_length"]))
    pixels = [TensorSpec(image["input"], "float32", ["batch", 3, "height", "width"]),
              TensorSpec(image["mask_input"], "int64", ["batch", "height", "width"])]
    tokens = [TensorSpec(name, "int64", ["batch", "seq"]) for name in ("input_ids", "attention_mask", "token_type_ids")]
    # Height and width follow the pictures (raw samples of different aspect ratios, so every
    # case but batch 1 pads pictures of different sizes into one batch); sequences are forced.
    cases = [
        ShapeCase("export", {"batch": 2, "seq": min(8, seq_range[1])}),
        ShapeCase("batch1-shortest", {"batch": 1, "seq": seq_range[0]}),
        ShapeCase("batch4-longest", {"batch": 4, "seq": seq_range[1]}),
        ShapeCase("batch3-mixed", {"batch": 3, "seq": (seq_range[0] + seq_range[1]) // 2}),
    ]
    vqa = arch == VQA
    spec = ExportSpec(
        name=path.resolve().name or FAMILY,
        family=FAMILY,
        task="classification" if vqa else "matching",
        inputs=[*tokens, *pixels],
        outputs=[TensorSpec("logits", "float32", ["batch", int(model.config.num_labels) if vqa else 1])],
        axis_ranges={"batch": BATCH_RANGE, "seq": seq_range, "height": (divisor, long), "width": (divisor, long)},
        export_case=cases[0],
        parity_cases=cases,
        preprocessing={"text": text, "image": image},
        # The VQA pipeline's scores: a sigmoid per answer (the answer: the best one).
        postprocessing={**POSTPROCESSING["multilabel"], "top_k": VQA_TOP_K} if vqa else dict(POSTPROCESSING["matching"]),
        labels=_labels(model, arch or VQA),
        assets={TOKENIZER_FILE: tokenizer_json(tokenizer)},
        tolerance=Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999),
    )
    source = {"kind": FAMILY, "architecture": arch, "path": str(path.resolve()), "sha256": tree_sha256(path)}
    return LoadedModel(ViltHead(model).eval(), spec, source)


_detect_vqa = supports(FAMILY, "visual-question-answering", VQA)
_detect_matching = supports(FAMILY, "image-text-matching", RETRIEVAL)


@register_family(FAMILY, detect=lambda path: _detect_vqa(path) or _detect_matching(path),
                 description=f"a transformers ViLT directory ({VQA}, {RETRIEVAL}) with its ViltProcessor")
def load_vilt(path: Path, **options: Any) -> LoadedModel:
    """Load a ViLT VQA or image–text retrieval directory (the model, its tokenizer and image processor)."""
    return _load(path, **options)
