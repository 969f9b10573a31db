"""Image decoding and preprocessing for the torch-free edge runtime.

The preprocessing recipe is a plain dict stored in the bundle manifest (``kind: "image"``).
:func:`image_preprocessing_from_hf` derives it from a transformers image-processor config so that
:func:`preprocess_images` reproduces the *slow* (PIL/numpy) processor bit for bit: the same PIL
resize filter, the same integer rounding of the shortest-edge size, the same centre-crop offsets
(with zero padding when the crop is larger than the image), ``rescale`` multiplied in float64
then cast to float32, and ``normalize`` in float32.

:func:`decode_image` turns untrusted bytes, files or arrays into a loaded PIL image: the content
decides the format (checked against an allow-list), the pixel count is checked from the header
before anything is decoded, and every decoder failure becomes a typed edgemm error.

Only the standard library, numpy and Pillow are used here; this module runs on the edge device.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgemm.errors import (
    BundleError,
    InputTooLargeError,
    InvalidInputError,
    UnsupportedMediaError,
    UnsupportedModelError,
    UsageError,
)
from edgemm.runtime.preprocess.files import read_capped

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "RESAMPLE_FILTERS",
    "decode_image",
    "default_image_preprocessing",
    "image_preprocessing_from_hf",
    "preprocess_images",
    "synthesize_image",
]

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
DEFAULT_MAX_BYTES = 20 * 2**20

RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# transformers stores ``resample`` as the integer value of PIL's enum.
_RESAMPLE_BY_VALUE = {int(member): name for name, member in RESAMPLE_FILTERS.items()}

_RESIZE_MODES = ("exact", "shortest_edge", "crop_pct")
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}
# Codecs that a Pillow build may lack; asking for them is not a configuration error.
_OPTIONAL_CODECS = frozenset({"WEBP", "AVIF"})

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image | np.ndarray


# --- transformers image processors -----------------------------------------------------------

_IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
_IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class _HFSpec:
    """What one slow transformers image processor does, as far as preprocessing goes."""

    resize: str  # "exact" | "shortest_or_exact" | "convnext"
    default_size: Mapping[str, int]
    size_square: bool  # ``default_to_square`` when an int ``size`` is turned into a dict
    resample: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    center_crop: bool = False
    convert_rgb: bool | None = None  # None: the processor has no do_convert_rgb option


_SQUARE_224 = {"height": 224, "width": 224}

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
    "CLIPImageProcessor": _HFSpec(
        resize="shortest_or_exact",
        default_size={"shortest_edge": 224},
        size_square=False,
        resample=int(Image.Resampling.BICUBIC),
        mean=_OPENAI_CLIP_MEAN,
        std=_OPENAI_CLIP_STD,
        center_crop=True,
        convert_rgb=True,
    ),
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
    "BitImageProcessor": _HFSpec(
        resize="shortest_or_exact",
        default_size={"shortest_edge": 224},
        size_square=False,
        resample=int(Image.Resampling.BICUBIC),
        mean=_OPENAI_CLIP_MEAN,
        std=_OPENAI_CLIP_STD,
        center_crop=True,
        convert_rgb=True,
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
    processor_config: Mapping[str, Any], *, input_name: str = "pixel_values"
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

    Returns:
        The manifest's image preprocessing section (see :func:`preprocess_images`).

    Raises:
        UnsupportedModelError: The processor type is unknown or its settings cannot be
            reproduced (e.g. a ``size`` the slow processor itself would reject).
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

    return _make_config(
        input_name=input_name,
        convert_rgb=convert_rgb,
        channels=3,
        resize=resize,
        resample=resample,
        center_crop=center_crop,
        rescale_factor=rescale_factor,
        mean=mean,
        std=std,
    )


def _make_config(
    *,
    input_name: str,
    convert_rgb: bool,
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
) -> dict[str, Any]:
    """Build a plain recipe: resize to an exact size, rescale by 1/255, normalize.

    Args:
        size: Output size, an int for a square or ``(height, width)``.
        mean: Per-channel mean; a single value (or a sequence of identical values) is used for
            every channel, so the defaults also work with ``channels=1``.
        std: Per-channel standard deviation, same rules as ``mean``.
        channels: 3 for RGB, 1 for grayscale (``[B, 1, H, W]``).
        resample: PIL filter name: nearest, bilinear, bicubic, lanczos, box or hamming.

    Returns:
        The manifest's image preprocessing section (see :func:`preprocess_images`).

    Raises:
        UsageError: A size, channel count, filter or statistic is invalid.
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
    return _make_config(
        input_name="pixel_values",
        convert_rgb=True,
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


# --- decoding ----------------------------------------------------------------------------------


def _allowed_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    Image.init()
    allowed: list[str] = []
    for raw in formats:
        if not isinstance(raw, str):
            raise UsageError(f"Image formats must be names like 'PNG', got {raw!r}.")
        name = _FORMAT_ALIASES.get(raw.upper(), raw.upper())
        if name in Image.OPEN:
            if name not in allowed:
                allowed.append(name)
        elif name not in _OPTIONAL_CODECS:
            raise UsageError(
                f"Unknown image format {raw!r}.",
                hint=f"Pillow can read: {', '.join(sorted(Image.OPEN))}.",
            )
    if not allowed:
        raise UsageError(
            f"None of the allowed image formats {list(formats)!r} can be read by this Pillow build."
        )
    return tuple(allowed)


def _check_cap(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise UsageError(f"{what} must be a positive integer, got {value!r}.")
    return int(value)


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise InputTooLargeError(
            f"{what} is {width}x{height} = {pixels:,} pixels, more than the limit of "
            f"{max_pixels:,}.",
            hint="Downscale the image before sending it, or raise the bundle's max_pixels.",
            details={"width": width, "height": height, "max_pixels": max_pixels},
        )
    # Pillow's own decompression-bomb guard applies as well; check it here so that it holds
    # even when its warning is not turned into an error (warning filters are process-global).
    pil_cap = Image.MAX_IMAGE_PIXELS
    if pil_cap is not None and pixels > pil_cap:
        raise InputTooLargeError(
            f"{what} is {width}x{height} = {pixels:,} pixels, more than Pillow's "
            f"decompression-bomb limit of {pil_cap:,}.",
            hint="Downscale the image before sending it.",
            details={"width": width, "height": height, "max_pixels": pil_cap},
        )
    if pixels == 0:
        raise InvalidInputError(f"{what} is empty ({width}x{height} pixels).")


def _too_many_bytes(max_bytes: int, what: str, size: int | None = None) -> InputTooLargeError:
    actual = f" ({size:,} bytes)" if size is not None else ""
    return InputTooLargeError(
        f"{what}{actual} is larger than the limit of {max_bytes:,} bytes.",
        hint="Send a smaller or more compressed image, or raise the bundle's max_bytes.",
        details={"bytes": size, "max_bytes": max_bytes},
    )


def _identify_format(data: bytes) -> str | None:
    """The format Pillow would detect with every plugin enabled; only used for the message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as probe:
                return probe.format
    except Exception:
        # Anything a decoder raises on an unreadable payload just means "unknown".
        return None


def _unsupported(data: bytes, allowed: tuple[str, ...], what: str) -> UnsupportedMediaError:
    detected = _identify_format(data)
    hint = f"Send one of: {', '.join(allowed)}."
    if detected is not None and detected not in allowed:
        return UnsupportedMediaError(
            f"{what} is a {detected} image; this bundle accepts {', '.join(allowed)}.",
            hint=hint,
            details={"format": detected, "allowed": list(allowed)},
        )
    return UnsupportedMediaError(
        f"{what} is not a readable image.", hint=hint, details={"allowed": list(allowed)}
    )


def _bomb_error(exc: Exception, what: str) -> InputTooLargeError:
    return InputTooLargeError(
        f"{what} is too large to decode safely ({exc}).",
        hint="Downscale the image before sending it.",
    )


def _decode_bytes(data: bytes, allowed: tuple[str, ...], max_pixels: int, what: str) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            # The content picks the plugin; the file name and extension play no part.
            image = Image.open(io.BytesIO(data), formats=allowed)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(exc, what) from None
        except UnidentifiedImageError:
            raise _unsupported(data, allowed, what) from None
        except Exception as exc:
            # Decoders for untrusted bytes raise many exception types; all mean a bad payload.
            raise UnsupportedMediaError(
                f"{what} cannot be decoded ({type(exc).__name__}: {exc}).",
                hint=f"Send an intact {', '.join(allowed)} image.",
            ) from None

        width, height = image.size
        # Checked from the header, before load(): a decompression bomb is never decoded.
        _check_pixels(width, height, max_pixels, what)
        try:
            # Freshly opened multi-frame images sit on their first frame; load only that one.
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(exc, what) from None
        except Exception as exc:
            raise UnsupportedMediaError(
                f"{what} ({image.format}) is truncated or corrupt ({type(exc).__name__}: {exc}).",
                hint="Send the complete, intact file.",
                details={"format": image.format},
            ) from None

    try:
        # Phone cameras store rotation in EXIF; without this the model sees the photo sideways.
        # exif_transpose returns a detached copy even without a tag, so no file handle remains.
        return ImageOps.exif_transpose(image)
    except Exception:
        # A broken EXIF block should not cost the user their (intact) picture.
        return image.copy()


def _array_to_image(array: np.ndarray, what: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InvalidInputError(
            f"{what} has shape {array.shape}; expected HxW, HxWx1, HxWx3 or HxWx4.",
            hint="Channels-first arrays (CxHxW) must be transposed with array.transpose(1, 2, 0).",
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f"{what} is empty (shape {array.shape}).")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32, copy=False)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            raise InvalidInputError(
                f"{what} is a float array with values outside [0, 1] (or NaN/inf).",
                hint="Float images must be scaled to [0, 1]; otherwise pass uint8 (0-255).",
            )
        pixels = np.rint(values * np.float32(255.0)).astype(np.uint8)
    else:
        raise InvalidInputError(
            f"{what} has dtype {array.dtype}; images must be uint8 (0-255) or float in [0, 1].",
            hint="Convert with array.astype(np.uint8) for 0-255 data.",
        )
    return Image.fromarray(np.ascontiguousarray(pixels))


def decode_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] = DEFAULT_FORMATS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Decode an untrusted image into a fully loaded PIL image.

    Bytes and files are identified by their content (a PNG named ``.jpg`` is a PNG) and must be
    in ``formats``. The pixel count is checked from the header before decoding, so
    decompression bombs are refused without being decoded. Animated images yield their first
    frame; EXIF orientation is applied.

    Args:
        source: Encoded bytes, a file path, a ``PIL.Image.Image`` (returned loaded, unchanged),
            or a numpy array HxW / HxWx1 / HxWx3 / HxWx4 of uint8 or float in [0, 1].
        max_pixels: Largest accepted ``width * height`` (Pillow's own bomb limit also applies).
        formats: Allowed Pillow format names (for bytes and files).
        max_bytes: Largest accepted payload; files are read up to ``max_bytes + 1`` bytes.

    Returns:
        The loaded image, detached from any file.

    Raises:
        InputTooLargeError: More than ``max_bytes`` bytes or ``max_pixels`` pixels.
        UnsupportedMediaError: Not an image, a format outside ``formats``, or truncated/corrupt.
        InvalidInputError: An array of the wrong dtype, value range or shape, or an empty image.
        InputPathError: A path that does not exist or cannot be read.
        UsageError: Invalid limits or unknown format names.
    """
    max_pixels = _check_cap(max_pixels, "max_pixels")
    max_bytes = _check_cap(max_bytes, "max_bytes")
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, max_pixels, "The image")
        try:
            source.load()
        except Exception as exc:
            raise UnsupportedMediaError(
                f"The image cannot be decoded ({type(exc).__name__}: {exc}).",
                hint="Send an intact image.",
            ) from None
        return source
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_pixels(source.shape[1], source.shape[0], max_pixels, "The image array")
        return _array_to_image(source, "The image array")

    allowed = _allowed_formats(formats)
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = source.nbytes if isinstance(source, memoryview) else len(source)
        if size > max_bytes:
            raise _too_many_bytes(max_bytes, "The image payload", size)
        return _decode_bytes(bytes(source), allowed, max_pixels, "The image payload")
    if isinstance(source, (str, os.PathLike)):
        what = f"Image file {os.fspath(source)!r}"
        data = read_capped(source, max_bytes, "Image")
        if len(data) > max_bytes:
            raise _too_many_bytes(max_bytes, what)
        return _decode_bytes(data, allowed, max_pixels, what)
    raise InvalidInputError(
        f"Cannot read an image from a {type(source).__name__}.",
        hint="Pass bytes, a file path, a PIL image or a numpy array.",
    )


# --- preprocessing -----------------------------------------------------------------------------


def _config_error(message: str) -> BundleError:
    return BundleError(
        f"Invalid image preprocessing config: {message}",
        hint="Re-export the bundle, or fix the 'image' preprocessing section of its manifest.",
    )


def _config_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise _config_error(f"{what} must be a positive integer, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class _Recipe:
    mode: str
    channels: int
    resize: Mapping[str, Any] | None
    resample: Image.Resampling
    center_crop: tuple[int, int] | None
    rescale_factor: float | None
    mean: np.ndarray | None
    std: np.ndarray | None


def _recipe(config: Mapping[str, Any]) -> _Recipe:
    if not isinstance(config, Mapping):
        raise _config_error(f"expected a dict, got {type(config).__name__}.")
    if config.get("kind", "image") != "image":
        raise _config_error(f"kind is {config.get('kind')!r}, not 'image'.")
    channels = config.get("channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise _config_error(f"channels must be 1 or 3, got {channels!r}.")

    resize = config.get("resize")
    if resize is not None:
        if not isinstance(resize, Mapping) or resize.get("mode") not in _RESIZE_MODES:
            raise _config_error(
                f"resize must be None or have mode {_RESIZE_MODES}, got {resize!r}."
            )
        if resize["mode"] == "exact":
            _config_int(resize.get("height"), "resize.height")
            _config_int(resize.get("width"), "resize.width")
        else:
            _config_int(resize.get("shortest_edge"), "resize.shortest_edge")
        if resize["mode"] == "crop_pct":
            pct = resize.get("crop_pct")
            if (
                isinstance(pct, bool)
                or not isinstance(pct, (int, float))
                or not math.isfinite(pct)
                or pct <= 0
            ):
                raise _config_error(f"resize.crop_pct must be a positive number, got {pct!r}.")
    resample_name = config.get("resample", "bilinear")
    if resample_name not in RESAMPLE_FILTERS:
        raise _config_error(
            f"resample must be one of {', '.join(RESAMPLE_FILTERS)}, got {resample_name!r}."
        )

    crop = config.get("center_crop")
    center_crop = None
    if crop is not None:
        if not isinstance(crop, Mapping):
            raise _config_error(f"center_crop must be None or {{height, width}}, got {crop!r}.")
        center_crop = (
            _config_int(crop.get("height"), "center_crop.height"),
            _config_int(crop.get("width"), "center_crop.width"),
        )

    factor = config.get("rescale_factor")
    if factor is not None and (
        isinstance(factor, bool)
        or not isinstance(factor, (int, float))
        or not math.isfinite(factor)
    ):
        raise _config_error(f"rescale_factor must be None or a number, got {factor!r}.")

    mean, std = config.get("mean"), config.get("std")
    if (mean is None) != (std is None):
        raise _config_error("mean and std must both be given or both be None.")
    mean_arr = std_arr = None
    if mean is not None:
        try:
            mean_arr = np.array([float(v) for v in mean], dtype=np.float32)
            std_arr = np.array([float(v) for v in std], dtype=np.float32)
        except (TypeError, ValueError):
            raise _config_error(
                f"mean/std must be lists of numbers, got {mean!r} / {std!r}."
            ) from None
        if mean_arr.shape != (channels,) or std_arr.shape != (channels,):
            raise _config_error(
                f"mean and std need {channels} values each, got {mean!r} / {std!r}."
            )
        if not (np.isfinite(mean_arr).all() and np.isfinite(std_arr).all()) or (std_arr == 0).any():
            raise _config_error(
                f"mean/std must be finite and std non-zero, got {mean!r} / {std!r}."
            )

    return _Recipe(
        mode="RGB" if channels == 3 else "L",
        channels=channels,
        resize=resize,
        resample=RESAMPLE_FILTERS[resample_name],
        center_crop=center_crop,
        rescale_factor=None if factor is None else float(factor),
        mean=mean_arr,
        std=std_arr,
    )


def _shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    """transformers' ``get_resize_output_image_size(..., default_to_square=False)``."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = edge, int(edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' ``center_crop`` on an HxWxC array, zero padding when the crop is larger."""
    orig_height, orig_width = pixels.shape[:2]
    top = (orig_height - height) // 2
    bottom = top + height
    left = (orig_width - width) // 2
    right = left + width
    if top >= 0 and bottom <= orig_height and left >= 0 and right <= orig_width:
        return pixels[top:bottom, left:right]

    new_height = max(height, orig_height)
    new_width = max(width, orig_width)
    padded = np.zeros((new_height, new_width, *pixels.shape[2:]), dtype=pixels.dtype)
    top_pad = math.ceil((new_height - orig_height) / 2)
    left_pad = math.ceil((new_width - orig_width) / 2)
    padded[top_pad : top_pad + orig_height, left_pad : left_pad + orig_width] = pixels
    top += top_pad
    bottom += top_pad
    left += left_pad
    right += left_pad
    return padded[max(0, top) : min(new_height, bottom), max(0, left) : min(new_width, right)]


def _prepare_one(image: Image.Image, recipe: _Recipe) -> np.ndarray:
    """Mode conversion, resize and crop of one image; returns HxWxC uint8."""
    if image.width == 0 or image.height == 0:
        raise InvalidInputError(f"An image is empty ({image.width}x{image.height} pixels).")
    # Always convert: for RGB input this is a no-op (what transformers does with or without
    # do_convert_rgb), and the slow processors reject other modes, so there is nothing to match.
    if image.mode != recipe.mode:
        image = image.convert(recipe.mode)

    crop = recipe.center_crop
    resize = recipe.resize
    if resize is not None:
        mode = resize["mode"]
        if mode == "exact":
            target = (int(resize["height"]), int(resize["width"]))
        else:
            edge = int(resize["shortest_edge"])
            if mode == "crop_pct":
                # ConvNeXt: resize the short side to int(edge / crop_pct), then crop edge x edge.
                target = _shortest_edge_size(
                    image.height, image.width, int(edge / float(resize["crop_pct"]))
                )
            else:
                target = _shortest_edge_size(image.height, image.width, edge)
        image = image.resize((target[1], target[0]), resample=recipe.resample, reducing_gap=None)

    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if resize is not None and resize["mode"] == "crop_pct":
        edge = int(resize["shortest_edge"])
        pixels = _center_crop(pixels, edge, edge)
    if crop is not None:
        pixels = _center_crop(pixels, crop[0], crop[1])
    return pixels


def preprocess_images(
    images: Sequence[Image.Image | np.ndarray], config: Mapping[str, Any]
) -> np.ndarray:
    """Turn images into the model's ``[B, C, H, W]`` float32 input, following ``config``.

    Steps, each optional: convert to RGB (or ``L`` when ``channels`` is 1), resize with the PIL
    filter (``exact``; ``shortest_edge`` keeping the aspect ratio; ``crop_pct`` = ConvNeXt's
    resize to ``int(shortest_edge / crop_pct)`` then centre crop), centre crop (zero padded if
    the crop is larger), rescale (float64 multiply, then float32), normalize (float32).

    Images are always converted to the configured mode; ``convert_rgb`` records the source
    processor's flag, and for RGB input (the only input the slow processors accept without it)
    the conversion is a no-op either way.

    Args:
        images: PIL images or numpy arrays (as accepted by :func:`decode_image`). A single
            image, or a 4-D array of images, is also accepted.
        config: The image preprocessing section of the manifest.

    Returns:
        float32 array ``[B, C, H, W]``.

    Raises:
        InvalidInputError: No images, an item that is not an image, a bad array, or images
            that end up with different sizes (a recipe without resize or crop).
        BundleError: The config is malformed.
    """
    recipe = _recipe(config)
    if isinstance(images, Image.Image):
        images = [images]
    elif isinstance(images, np.ndarray):
        images = list(images) if images.ndim == 4 else [images]
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence) or not images:
        raise InvalidInputError(
            "preprocess_images needs a non-empty list of images.",
            hint="Decode inputs with decode_image first.",
        )

    prepared: list[np.ndarray] = []
    for index, item in enumerate(images):
        if isinstance(item, np.ndarray):
            item = _array_to_image(item, f"Image array #{index}")
        elif not isinstance(item, Image.Image):
            raise InvalidInputError(
                f"Image #{index} is a {type(item).__name__}, not a PIL image or numpy array.",
                hint="Decode inputs with decode_image first.",
            )
        prepared.append(_prepare_one(item, recipe))

    shapes = {p.shape[:2] for p in prepared}
    if len(shapes) > 1:
        sizes = ", ".join(f"{w}x{h}" for h, w in sorted(shapes))
        raise InvalidInputError(
            f"The images have different sizes ({sizes}) and the preprocessing neither resizes "
            "nor crops them to a common size.",
            hint="Send images of equal size, or one image per request.",
        )

    batch = np.stack(prepared)
    # Same dtypes and operation order as transformers' rescale and normalize, so results match
    # the slow processors bit for bit.
    if recipe.rescale_factor is not None:
        values = (batch.astype(np.float64) * recipe.rescale_factor).astype(np.float32)
    else:
        values = batch.astype(np.float32)
    if recipe.mean is not None and recipe.std is not None:
        values = (values - recipe.mean) / recipe.std
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2))


# --- synthetic inputs --------------------------------------------------------------------------


def synthesize_image(height: int, width: int, seed: int) -> np.ndarray:
    """Make a deterministic, natural-looking RGB test image.

    Smooth colour gradients, a soft highlight, a few flat-coloured discs and rectangles and mild
    noise: enough structure that resizing filters and crops are exercised the way photos
    exercise them. Only exact IEEE operations and integer random draws are used, so the result
    is the same on every machine for a given numpy version.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        seed: Random seed; equal seeds give equal images.

    Returns:
        uint8 array ``[height, width, 3]``.

    Raises:
        InvalidInputError: Non-positive sizes or a negative seed.
    """
    for value, what in ((height, "height"), (width, "width")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InvalidInputError(
                f"synthesize_image {what} must be a positive int, got {value!r}."
            )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"synthesize_image seed must be a non-negative int, got {seed!r}.")
    height, width = int(height), int(width)
    rng = np.random.default_rng(int(seed))

    y = (np.arange(height, dtype=np.float64)[:, None] + 0.5) / height
    x = (np.arange(width, dtype=np.float64)[None, :] + 0.5) / width
    image = np.empty((height, width, 3), dtype=np.float64)
    for channel in range(3):
        start, gx, gy = (rng.integers(0, 1001, size=3) / 1000.0) * (120.0, 90.0, 90.0)
        image[:, :, channel] = 20.0 + start + gx * x + gy * (1.0 - y)

    # Diagonal texture (a triangle wave) gives the resize filters some high frequencies to chew on.
    fx, fy = rng.integers(4, 25, size=2)
    texture = np.abs(((x * fx + y * fy) % 2.0) - 1.0)
    image += 24.0 * (texture - 0.5)[:, :, None]

    # A soft light spot: rational fall-off instead of exp keeps the result bit-reproducible.
    cy, cx = rng.integers(0, 1001, size=2) / 1000.0
    radius2 = (0.15 + rng.integers(0, 1001) / 1000.0 * 0.3) ** 2
    glow = 1.0 / (1.0 + ((y - cy) ** 2 + (x - cx) ** 2) / radius2)
    image += 50.0 * glow[:, :, None]

    for _ in range(int(rng.integers(3, 7))):
        color = rng.integers(0, 256, size=3).astype(np.float64)
        cy, cx = rng.integers(0, 1001, size=2) / 1000.0
        size = 0.05 + rng.integers(0, 1001) / 1000.0 * 0.2
        if rng.integers(0, 2):
            mask = (y - cy) ** 2 + (x - cx) ** 2 <= size * size
        else:
            mask = (np.abs(y - cy) <= size) & (np.abs(x - cx) <= size * 1.5)
        image[mask] = 0.35 * image[mask] + 0.65 * color

    image += rng.integers(-4, 5, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
