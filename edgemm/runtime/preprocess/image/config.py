"""The manifest's image preprocessing section: translated from Hugging Face, or built plainly.

:func:`image_preprocessing_from_hf` derives the section from a transformers image-processor
config (ViT, DeiT, CLIP, SigLIP, ConvNeXt, BiT, BLIP, ViLT, with their ``*Fast`` and legacy
``*FeatureExtractor`` names) so that :func:`~edgemm.runtime.preprocess.image.preprocess_images`
reproduces the *slow* processor exactly; :func:`default_image_preprocessing` builds a plain
resize / rescale / normalise section for edgemm's own image encoders. Both record the
``background`` that transparency is composited onto (see
:mod:`~edgemm.runtime.preprocess.image.render`).

Only numpy and Pillow are used here; this module runs on the edge device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from edgemm.errors import UnsupportedModelError, UsageError
from edgemm.runtime.preprocess.image.decode import (
    DEFAULT_FORMATS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
)
from edgemm.runtime.preprocess.image.render import WHITE, parse_background
from edgemm.runtime.preprocess.image.transforms import RESAMPLE_FILTERS
from edgemm.runtime.preprocess.image.vilt import longest_edge_for

__all__ = ["default_image_preprocessing", "image_preprocessing_from_hf"]

# transformers stores ``resample`` as the integer value of PIL's enum.
_RESAMPLE_BY_VALUE = {int(member): name for name, member in RESAMPLE_FILTERS.items()}

_IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
_IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class _HFSpec:
    """What one slow transformers image processor does, as far as preprocessing goes."""

    resize: str  # "exact" | "shortest_or_exact" | "convnext" | "shortest_edge_divisor" (ViLT)
    default_size: Mapping[str, int]
    size_square: bool  # ``default_to_square`` when an int ``size`` is turned into a dict
    resample: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    center_crop: bool = False
    convert_rgb: bool | None = None  # None: the processor has no do_convert_rgb option


_SQUARE_224 = {"height": 224, "width": 224}
# BiT's processor (transformers' BitImageProcessor) does exactly what CLIP's does.
_CLIP_LIKE = _HFSpec(
    resize="shortest_or_exact",
    default_size={"shortest_edge": 224},
    size_square=False,
    resample=int(Image.Resampling.BICUBIC),
    mean=_OPENAI_CLIP_MEAN,
    std=_OPENAI_CLIP_STD,
    center_crop=True,
    convert_rgb=True,
)

_HF_PROCESSORS: dict[str, _HFSpec] = {
    "ViTImageProcessor": _HFSpec(
        resize="exact",
        default_size=_SQUARE_224,
        size_square=True,
        resample=int(Image.Resampling.BILINEAR),
        mean=_IMAGENET_STANDARD_MEAN,
        std=_IMAGENET_STANDARD_STD,
        convert_rgb=False,
    ),
    "DeiTImageProcessor": _HFSpec(
        resize="exact",
        default_size={"height": 256, "width": 256},
        size_square=True,
        resample=int(Image.Resampling.BICUBIC),
        mean=_IMAGENET_STANDARD_MEAN,
        std=_IMAGENET_STANDARD_STD,
        center_crop=True,
    ),
    "CLIPImageProcessor": _CLIP_LIKE,
    "SiglipImageProcessor": _HFSpec(
        resize="exact",
        default_size=_SQUARE_224,
        # Siglip keeps ``size`` as given and reads ``size["height"]``, so an int size cannot work.
        size_square=False,
        resample=int(Image.Resampling.BICUBIC),
        mean=_IMAGENET_STANDARD_MEAN,
        std=_IMAGENET_STANDARD_STD,
        convert_rgb=False,
    ),
    "ConvNextImageProcessor": _HFSpec(
        resize="convnext",
        default_size={"shortest_edge": 384},
        size_square=False,
        resample=int(Image.Resampling.BILINEAR),
        mean=_IMAGENET_STANDARD_MEAN,
        std=_IMAGENET_STANDARD_STD,
    ),
    "BitImageProcessor": _CLIP_LIKE,
    # Chinese-CLIP resizes to size["height"] x size["width"] exactly (its resize reads both keys,
    # so a shortest_edge size fails there as here), then centre-crops like CLIP.
    "ChineseCLIPImageProcessor": _HFSpec(
        resize="exact",
        default_size={"shortest_edge": 224},
        size_square=False,
        resample=int(Image.Resampling.BICUBIC),
        mean=_OPENAI_CLIP_MEAN,
        std=_OPENAI_CLIP_STD,
        center_crop=True,
        convert_rgb=True,
    ),
    # BLIP warps to its square like ViT, with CLIP's statistics.
    "BlipImageProcessor": _HFSpec(
        resize="exact",
        default_size={"height": 384, "width": 384},
        size_square=True,
        resample=int(Image.Resampling.BICUBIC),
        mean=_OPENAI_CLIP_MEAN,
        std=_OPENAI_CLIP_STD,
        convert_rgb=True,
    ),
    # ViLT keeps each picture's aspect ratio and pads the batch (edgemm.runtime.preprocess.image.vilt).
    "ViltImageProcessor": _HFSpec(
        resize="shortest_edge_divisor",
        default_size={"shortest_edge": 384},
        size_square=False,
        resample=int(Image.Resampling.BICUBIC),
        mean=_IMAGENET_STANDARD_MEAN,
        std=_IMAGENET_STANDARD_STD,
    ),
}
_SUPPORTED_HF = ", ".join(sorted(_HF_PROCESSORS))
_VALID_SIZE_KEYS = (
    {"height", "width"},
    {"shortest_edge"},
    {"shortest_edge", "longest_edge"},
    {"longest_edge"},
    {"max_height", "max_width"},
)


def _hf_error(message: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        message,
        hint="Check preprocessor_config.json; edgemm reproduces these image processors: "
        f"{_SUPPORTED_HF} (and their *Fast twins).",
    )


def _hf_processor_name(config: Mapping[str, Any]) -> str:
    name = config.get("image_processor_type") or config.get("feature_extractor_type")
    if not isinstance(name, str) or not name:
        raise _hf_error(
            "The image processor config names no image_processor_type, so its preprocessing "
            "cannot be reproduced."
        )
    base = name
    if base.endswith("Fast"):
        base = base[: -len("Fast")]
    if base.endswith("FeatureExtractor"):
        base = base[: -len("FeatureExtractor")] + "ImageProcessor"
    if base not in _HF_PROCESSORS:
        raise _hf_error(f"Image processor type {name!r} is not supported.")
    return base


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise _hf_error(f"{what} must be a positive integer, got {value!r}.")
    return int(value)


def _hf_size_dict(value: Any, *, default_to_square: bool, what: str) -> dict[str, int]:
    """transformers' ``get_size_dict``: ints and pairs become dicts, dicts are checked."""
    if isinstance(value, bool):
        raise _hf_error(f"{what} must be an int, a pair or a dict, got {value!r}.")
    if isinstance(value, (int, np.integer)):
        size = _positive_int(value, what)
        if default_to_square:
            return {"height": size, "width": size}
        return {"shortest_edge": size}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": value[0], "width": value[1]}
    if isinstance(value, Mapping) and set(value) in _VALID_SIZE_KEYS:
        return dict(value)
    raise _hf_error(f"{what} must be an int, a (height, width) pair or a size dict, got {value!r}.")


def _hf_height_width(size: Mapping[str, Any], what: str, processor: str) -> tuple[int, int]:
    if "height" not in size or "width" not in size:
        raise _hf_error(f"{processor} needs {what} with 'height' and 'width', got {dict(size)!r}.")
    return _positive_int(size["height"], f"{what}.height"), _positive_int(
        size["width"], f"{what}.width"
    )


def _hf_resample(value: Any) -> str:
    if isinstance(value, str) and value.lower() in RESAMPLE_FILTERS:
        return value.lower()
    if not isinstance(value, bool) and isinstance(value, (int, np.integer)):
        name = _RESAMPLE_BY_VALUE.get(int(value))
        if name is not None:
            return name
    raise _hf_error(
        f"resample {value!r} is not a PIL resampling filter (expected 0-5 or one of "
        f"{', '.join(RESAMPLE_FILTERS)})."
    )


def _hf_channel_stats(value: Any, what: str) -> list[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        values = [float(value)] * 3
    elif isinstance(value, (list, tuple)) and len(value) == 3:
        values = [float(v) for v in value]
    else:
        raise _hf_error(f"{what} must be a number or 3 numbers for RGB images, got {value!r}.")
    if not all(math.isfinite(v) for v in values):
        raise _hf_error(f"{what} must be finite, got {value!r}.")
    return values


def image_preprocessing_from_hf(
    processor_config: Mapping[str, Any],
    *,
    input_name: str = "pixel_values",
    background: Sequence[int] | Literal["processor"] | None = "processor",
    mask_input: str = "pixel_mask",
) -> dict[str, Any]:
    """Translate a transformers image-processor config into edgemm's image preprocessing dict.

    The result makes :func:`preprocess_images` reproduce exactly what the *slow* processor
    (``SomeImageProcessor(**processor_config)``) does. Missing keys take that class's defaults,
    and ``None`` values behave as they do in the slow class (``None`` flags are off).

    Args:
        processor_config: Contents of ``preprocessor_config.json`` (``processor.to_dict()``) of
            a ViT, DeiT, CLIP, Siglip, ConvNext or Bit image processor; names ending in ``Fast``
            and the legacy ``*FeatureExtractor`` names are treated as the slow processor.
        input_name: Name of the model input that receives the pixel values.
        mask_input: Name of the pixel-mask input of processors that pad every batch to its
            largest picture (ViLT's ``do_pad``); the section then has ``pad_to_batch_max``.
        background: What transparency becomes. ``"processor"`` (default): what the processor
            does — ``None`` (alpha dropped, as its ``convert("RGB")`` does) when it converts
            to RGB itself, else white (it refuses such images, so nothing is to be matched).
            Otherwise an ``(r, g, b)`` colour, or ``None`` to drop alpha.

    Returns:
        The manifest's image preprocessing section (see :func:`preprocess_images`).

    Raises:
        UnsupportedModelError: The processor type is unknown or its settings cannot be
            reproduced (e.g. a ``size`` the slow processor itself would reject).
        UsageError: ``background`` is not a colour, ``None`` or ``"processor"``.
    """
    if not isinstance(processor_config, Mapping):
        raise _hf_error(
            f"The image processor config must be a dict, got {type(processor_config).__name__}."
        )
    name = _hf_processor_name(processor_config)
    spec = _HF_PROCESSORS[name]
    cfg = processor_config

    def value_or_default(key: str, default: Any) -> Any:
        # The slow classes replace a None size/crop_size/mean/std/crop_pct by their default.
        value = cfg.get(key)
        return default if value is None else value

    resize: dict[str, Any] | None = None
    resample = "bilinear"
    if cfg.get("do_resize", True):
        if cfg.get("resample", spec.resample) is None:
            raise _hf_error(f"{name} has do_resize set but no resample filter.")
        resample = _hf_resample(cfg.get("resample", spec.resample))
        size = _hf_size_dict(
            value_or_default("size", spec.default_size),
            default_to_square=spec.size_square,
            what="size",
        )
        if spec.resize == "exact":
            height, width = _hf_height_width(size, "size", name)
            resize = {"mode": "exact", "height": height, "width": width}
        elif spec.resize == "shortest_or_exact":
            if "shortest_edge" in size:
                edge = _positive_int(size["shortest_edge"], "size.shortest_edge")
                resize = {"mode": "shortest_edge", "shortest_edge": edge}
            else:
                height, width = _hf_height_width(size, "size", name)
                resize = {"mode": "exact", "height": height, "width": width}
        elif spec.resize == "shortest_edge_divisor":
            resize = _hf_divisor_resize(size, cfg, name)
        else:
            if "shortest_edge" not in size:
                raise _hf_error(f"{name} needs size with 'shortest_edge', got {size!r}.")
            edge = _positive_int(size["shortest_edge"], "size.shortest_edge")
            crop_pct = value_or_default("crop_pct", 224 / 256)
            if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)):
                raise _hf_error(f"crop_pct must be a number, got {crop_pct!r}.")
            if edge < 384:
                if not crop_pct > 0 or not math.isfinite(crop_pct):
                    raise _hf_error(f"crop_pct must be positive, got {crop_pct!r}.")
                resize = {"mode": "crop_pct", "shortest_edge": edge, "crop_pct": float(crop_pct)}
            else:
                # ConvNeXt warps to a square without cropping at 384 and above.
                resize = {"mode": "exact", "height": edge, "width": edge}

    center_crop: dict[str, int] | None = None
    if spec.center_crop and cfg.get("do_center_crop", True):
        crop = _hf_size_dict(
            value_or_default("crop_size", _SQUARE_224), default_to_square=True, what="crop_size"
        )
        height, width = _hf_height_width(crop, "crop_size", name)
        center_crop = {"height": height, "width": width}

    rescale_factor: float | None = None
    if cfg.get("do_rescale", True):
        factor = cfg.get("rescale_factor", 1 / 255)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise _hf_error(f"{name} has do_rescale set but rescale_factor is {factor!r}.")
        rescale_factor = float(factor)

    mean: list[float] | None = None
    std: list[float] | None = None
    if cfg.get("do_normalize", True):
        mean = _hf_channel_stats(value_or_default("image_mean", spec.mean), "image_mean")
        std = _hf_channel_stats(value_or_default("image_std", spec.std), "image_std")
        if any(s == 0 for s in std):
            raise _hf_error(f"image_std must not contain zeros, got {std!r}.")

    convert_rgb = False
    if spec.convert_rgb is not None:
        convert_rgb = bool(cfg.get("do_convert_rgb", spec.convert_rgb))
    if isinstance(background, str) and background == "processor":
        # A processor that converts to RGB does it with PIL's convert("RGB"), which drops alpha
        # and shows whatever colour transparent pixels store (often black): that is what a
        # model trained through it saw, so reproduce it. Without do_convert_rgb the slow
        # processors refuse non-RGB images, and the images training saw were made opaque by
        # the user's own code or edgemm's trainer (which preprocesses with this very
        # section): there, composite onto white, like edgemm's own sections.
        background = None if convert_rgb else WHITE

    section = _make_config(
        input_name=input_name,
        convert_rgb=convert_rgb,
        background=_user_background(background, 3),
        channels=3,
        resize=resize,
        resample=resample,
        center_crop=center_crop,
        rescale_factor=rescale_factor,
        mean=mean,
        std=std,
    )
    if spec.resize == "shortest_edge_divisor" and _hf_pads(cfg):
        section.update(pad_to_batch_max=True, mask_input=mask_input)
    return section


def _hf_divisor_resize(size: Mapping[str, Any], cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """ViltImageProcessor's resize: the shorter side, the longer side's cap and the size divisor."""
    if "shortest_edge" not in size:
        raise _hf_error(f"{name} needs size with 'shortest_edge', got {size!r}.")
    edge = _positive_int(size["shortest_edge"], "size.shortest_edge")
    divisor = _positive_int(cfg.get("size_divisor", 32), "size_divisor")
    return {"mode": "shortest_edge_divisor", "shortest_edge": edge, "longest_edge": longest_edge_for(edge),
            "size_divisor": divisor}


def _hf_pads(cfg: Mapping[str, Any]) -> bool:
    """Whether ViltImageProcessor pads batches: ``do_pad``, overridden by the legacy ``pad_and_return_pixel_mask``."""
    return bool(cfg["pad_and_return_pixel_mask"] if "pad_and_return_pixel_mask" in cfg else cfg.get("do_pad", True))


def _make_config(
    *,
    input_name: str,
    convert_rgb: bool,
    background: tuple[int, int, int] | None,
    channels: int,
    resize: dict[str, Any] | None,
    resample: str,
    center_crop: dict[str, int] | None,
    rescale_factor: float | None,
    mean: list[float] | None,
    std: list[float] | None,
) -> dict[str, Any]:
    return {
        "kind": "image",
        "input": input_name,
        "convert_rgb": convert_rgb,
        "background": None if background is None else list(background),
        "channels": channels,
        "resize": resize,
        "resample": resample,
        "center_crop": center_crop,
        "rescale_factor": rescale_factor,
        "mean": mean,
        "std": std,
        "max_pixels": DEFAULT_MAX_PIXELS,
        "formats": list(DEFAULT_FORMATS),
        "max_bytes": DEFAULT_MAX_BYTES,
    }


def default_image_preprocessing(
    *,
    size: int | tuple[int, int],
    mean: Sequence[float] | float = (0.5, 0.5, 0.5),
    std: Sequence[float] | float = (0.5, 0.5, 0.5),
    channels: int = 3,
    resample: str = "bilinear",
    background: Sequence[int] | None = WHITE,
    input_name: str = "pixel_values",
) -> dict[str, Any]:
    """Build a plain recipe: resize to an exact size, rescale by 1/255, normalize.

    Args:
        size: Output size, an int for a square or ``(height, width)``.
        mean: Per-channel mean; a single value (or a sequence of identical values) is used for
            every channel, so the defaults also work with ``channels=1``.
        std: Per-channel standard deviation, same rules as ``mean``.
        channels: 3 for RGB, 1 for grayscale (``[B, 1, H, W]``).
        resample: PIL filter name: nearest, bilinear, bicubic, lanczos, box or hamming.
        background: The ``(r, g, b)`` colour transparency is composited onto; white by
            default, the paper a child draws on. ``None`` drops alpha (PIL ``convert``).
        input_name: The graph input the pixels feed (your ``forward()``'s parameter name, e.g. ``"image"``).

    Returns:
        The manifest's image preprocessing section (see :func:`preprocess_images`).

    Raises:
        UsageError: A size, channel count, filter, statistic or background is invalid.
    """
    if isinstance(size, bool):
        raise UsageError(f"Image size must be an int or (height, width), got {size!r}.")
    if isinstance(size, (int, np.integer)):
        height = width = size
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        height, width = size
    else:
        raise UsageError(f"Image size must be an int or (height, width), got {size!r}.")
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise UsageError(
                f"Image size must be positive integers, got {size!r}.", hint="e.g. size=224"
            )
    if channels not in (1, 3):
        raise UsageError(f"channels must be 1 or 3, got {channels!r}.")
    if resample not in RESAMPLE_FILTERS:
        raise UsageError(
            f"Unknown resample filter {resample!r}.",
            hint=f"Use one of: {', '.join(RESAMPLE_FILTERS)}.",
        )
    mean_values = _user_channel_stats(mean, channels, "mean")
    std_values = _user_channel_stats(std, channels, "std")
    if any(s == 0 for s in std_values):
        raise UsageError(f"std must not contain zeros, got {std!r}.")
    if not isinstance(input_name, str) or not input_name:
        raise UsageError(f"input_name must be a graph input name, got {input_name!r}.")
    return _make_config(
        input_name=input_name,
        convert_rgb=True,
        background=_user_background(background, channels),
        channels=channels,
        resize={"mode": "exact", "height": int(height), "width": int(width)},
        resample=resample,
        center_crop=None,
        rescale_factor=1 / 255,
        mean=mean_values,
        std=std_values,
    )


def _user_channel_stats(value: Sequence[float] | float, channels: int, what: str) -> list[float]:
    try:
        if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            values = [float(value)]
        else:
            values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise UsageError(
            f"{what} must be a number or a sequence of numbers, got {value!r}."
        ) from None
    if len(values) != channels and len(set(values)) == 1:
        values = values[:1] * channels
    if len(values) != channels or not all(math.isfinite(v) for v in values):
        raise UsageError(f"{what} needs {channels} finite value(s), got {value!r}.")
    return values


def _user_background(value: Any, channels: int) -> tuple[int, int, int] | None:
    try:
        return parse_background(value, channels)
    except ValueError as exc:
        raise UsageError(str(exc), hint="e.g. background=(255, 255, 255) for white paper.") from None
