"""Export family ``hf-image-classification``: transformers ``*ForImageClassification`` directories.

ViT, DeiT (also ``DeiTForImageClassificationWithTeacher``, whose ``logits`` are the average of
its class and distillation heads — what the ``image-classification`` pipeline reports),
ConvNeXt, ResNet and Swin, recognised from ``config.json`` alone. The graph takes the pixels the
directory's own image processor produces (reproduced torch-free at the kiosk, see
:func:`~edgemm.runtime.preprocess.image.image_preprocessing_from_hf`) and returns the head's
``logits``; the runtime turns them into scores as the pipeline does (sigmoid for a multi-label
or single-logit head, softmax otherwise) with the labels of ``config.id2label``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgemm.bundle.manifest import TensorSpec
from edgemm.errors import UnsupportedModelError
from edgemm.models.spec import ExportSpec, LoadedModel, ShapeCase, register_family
from edgemm.models.specs.common import BATCH_RANGE, encoder_info, image_input
from edgemm.models.specs.hf import SPEC_ROUTE, supports
from edgemm.models.specs.hf_heads import (
    HEAD_TOLERANCE,
    head_labels,
    load_head_model,
    load_processor,
    source_record,
)
from edgemm.runtime.preprocess.image import image_preprocessing_from_hf, preprocess_images

FAMILY = "hf-image-classification"
ARCHITECTURES = (
    "ViTForImageClassification",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
    "ConvNextForImageClassification",
    "ResNetForImageClassification",
    "SwinForImageClassification",
)
# Model types whose attention ONNX Runtime's optimizer fuses (edgemm.optimize.graph).
_FUSABLE = ("vit", "deit")
# How far the runtime's pixels may lie from the processor's before the export is refused: the
# slow processors are reproduced bit for bit, so anything visible is a misread setting.
_PIXEL_TOLERANCE = 1e-4


class ImageClassifier(nn.Module):
    """A ``*ForImageClassification`` model as a graph: ``pixel_values`` → ``logits``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Any) -> dict[str, Any]:
        """Pixels ``[B, 3, H, W]`` → the head's logits ``[B, labels]``."""
        return {"logits": self.model(pixel_values=pixel_values).logits}


def pipeline_activation(config: Any) -> str:
    """``sigmoid`` or ``softmax``: what the ``image-classification`` pipeline applies by default."""
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def check_pixels_match(processor: Any, section: dict[str, Any], path: Path) -> None:
    """Refuse a processor whose output the runtime preprocessing does not reproduce.

    Both run on two synthetic photos of different sizes and aspect ratios; the comparison is on
    the normalised pixels the model would see.

    Raises:
        UnsupportedModelError: The largest difference exceeds 1e-4.
    """
    from edgemm.data.synthetic import synthesize_image

    for height, width, seed in ((61, 47, 1), (120, 200, 2)):
        image = synthesize_image(height, width, seed=seed)
        expected = np.asarray(processor(images=image, return_tensors="np")["pixel_values"], dtype=np.float32)
        got = preprocess_images([image], section)
        worst = float(np.abs(expected - got).max()) if expected.shape == got.shape else float("inf")
        if worst > _PIXEL_TOLERANCE:
            raise UnsupportedModelError(
                f"{path}'s {type(processor).__name__} produces pixels the edge runtime does not reproduce "
                f"(shape {list(expected.shape)} vs {list(got.shape)}, largest difference {worst:.3g}).",
                hint=f"Report the preprocessor_config.json; meanwhile export with your own module: {SPEC_ROUTE}.")


@register_family(FAMILY, detect=supports(FAMILY, "image-classification", *ARCHITECTURES),
                 description="a transformers *ForImageClassification directory (ViT, DeiT, ConvNeXt, ResNet, Swin)")
def load_image_classifier(path: Path, *, allow_pickle: bool = False, labels: list[str] | None = None,
                          **_: Any) -> LoadedModel:
    """Load an image-classification directory (model + its image processor) for export.

    Args:
        path: The ``save_pretrained`` directory (``config.json``, weights,
            ``preprocessor_config.json``).
        allow_pickle: Accept ``pytorch_model.bin`` weights when no safetensors exist.
        labels: Class names replacing ``config.id2label`` (one per output).

    Raises:
        UsageError: No image processor saved, or ``labels`` of the wrong length.
        UnsupportedModelError: The image processor cannot be reproduced torch-free.
        CheckpointError / UnsafeCheckpointError: The weights cannot (or may not) be loaded.
    """
    model = load_head_model(path, allow_pickle=allow_pickle)
    config = model.config
    processor = load_processor("image", path)
    # The pipeline converts every picture with PIL's convert("RGB") before its processor, which
    # drops transparency as it is: background=None does the same.
    section = image_preprocessing_from_hf(processor.to_dict(), background=None)
    check_pixels_match(processor, section, path)
    names = head_labels(config, labels, path)
    activation = pipeline_activation(config)
    cases = [ShapeCase("export", {"batch": 2}), ShapeCase("batch1", {"batch": 1}),
             ShapeCase("batch4", {"batch": 4}), ShapeCase("batch3", {"batch": 3})]
    kind = str(config.model_type)
    postprocessing: dict[str, Any] = {"type": activation, "output": "logits", "top_k": min(5, len(names))}
    if activation == "sigmoid":
        postprocessing["threshold"] = 0.5
    spec = ExportSpec(
        name=path.resolve().name or kind,
        family=FAMILY,
        task="classification" if activation == "softmax" else "multilabel",
        inputs=[image_input(section)],
        outputs=[TensorSpec("logits", "float32", ["batch", len(names)])],
        axis_ranges={"batch": BATCH_RANGE},
        export_case=cases[0],
        parity_cases=cases,
        preprocessing={"image": section},
        postprocessing=postprocessing,
        labels=names,
        tolerance=HEAD_TOLERANCE,
        encoders={"image": encoder_info(kind, config.to_dict())} if kind in _FUSABLE else {},
    )
    return LoadedModel(ImageClassifier(model).eval(), spec, source_record(path, kind))
