"""The image transforms: render, resize, centre crop, rescale and normalise, driven by the manifest.

:func:`preprocess_images` follows the manifest's image preprocessing section (see
:mod:`edgemm.runtime.preprocess.image.config`). It first renders every image as a person sees
it (:func:`~edgemm.runtime.preprocess.image.render.render`: any mode and bit depth to 8 bits,
alpha composited onto the section's ``background``), then reproduces transformers' *slow*
(PIL/numpy) image processors bit for bit: the same PIL resize filter, the same integer rounding of the
shortest-edge size, the same centre-crop offsets (with zero padding when the crop is larger than
the image), ``rescale`` multiplied in float64 then cast to float32, and ``normalize`` in float32.

Fast without changing a value: rescale and normalise of an 8-bit sample depend on the sample
alone, so they are computed once per section for all 256 values and applied as one table
lookup per channel, written straight into the channels-first output (no float64 copy, no
transposed copy); an opaque grey picture fed to an RGB model is resized as one band instead of
three (PIL's ``L`` to ``RGB`` copies the band, and its resize treats every band alike).

Only numpy and Pillow are used here; this module runs on the edge device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from edgemm.errors import BundleError, InvalidInputError
from edgemm.runtime.preprocess.image.decode import array_to_image
from edgemm.runtime.preprocess.image.render import WHITE, parse_background, render
from edgemm.runtime.preprocess.image.vilt import divisor_resize_size, pad_to_batch_max

__all__ = ["RESAMPLE_FILTERS", "image_feed", "preprocess_images"]

RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# shortest_edge_divisor: ViLT (see edgemm.runtime.preprocess.image.vilt).
_RESIZE_MODES = ("exact", "shortest_edge", "crop_pct", "shortest_edge_divisor")


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
class ImageRecipe:
    """What an image section asks for, checked and ready for the transforms."""

    mode: str
    channels: int
    background: tuple[int, int, int] | None
    resize: Mapping[str, Any] | None
    resample: Image.Resampling
    center_crop: tuple[int, int] | None
    rescale_factor: float | None
    mean: np.ndarray | None
    std: np.ndarray | None


def parse_image_section(config: Mapping[str, Any]) -> ImageRecipe:
    """Check a manifest image section and turn it into the transform recipe it describes.

    One parser for request time (:func:`preprocess_images`) and load time
    (:mod:`edgemm.runtime.semantics`), so both apply the same rules.

    Raises:
        BundleError: A key is missing, of the wrong type or outside its values.
    """
    if not isinstance(config, Mapping):
        raise _config_error(f"expected a dict, got {type(config).__name__}.")
    if config.get("kind", "image") != "image":
        raise _config_error(f"kind is {config.get('kind')!r}, not 'image'.")
    channels = config.get("channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise _config_error(f"channels must be 1 or 3, got {channels!r}.")
    try:
        # Bundles from before the key existed composite onto white, like new edgemm sections.
        background = parse_background(config.get("background", list(WHITE)), channels)
    except ValueError as exc:
        raise _config_error(str(exc)) from None

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
        if resize["mode"] == "shortest_edge_divisor":
            _config_int(resize.get("longest_edge"), "resize.longest_edge")
            _config_int(resize.get("size_divisor"), "resize.size_divisor")
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
    if not isinstance(resample_name, str) or resample_name not in RESAMPLE_FILTERS:
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

    return ImageRecipe(
        mode="RGB" if channels == 3 else "L",
        channels=channels,
        background=background,
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


def _prepare_one(image: Image.Image, recipe: ImageRecipe, what: str) -> np.ndarray:
    """Rendering, resize and crop of one image; returns HxWxC uint8 (C may be 1 for an RGB
    recipe: an opaque grey picture is resized as one band, which every channel reads)."""
    if image.width == 0 or image.height == 0:
        raise InvalidInputError(f"An image is empty ({image.width}x{image.height} pixels).")
    # Always render: for RGB input this is a no-op (what transformers does with or without
    # do_convert_rgb); other modes become the 8-bit opaque picture a person sees. A grey
    # picture stays one band: PIL's L -> RGB copies it into each band and resizes every band
    # with the same integer filter, so resizing the one band gives each channel's values.
    image = render(image, background=recipe.background, mode=recipe.mode, what=what, keep_grey=True)

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
            elif mode == "shortest_edge_divisor":
                target = divisor_resize_size(image.height, image.width, edge, int(resize["longest_edge"]),
                                             int(resize["size_divisor"]))
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


def _prepare_all(images: Any, recipe: Any, who: str) -> list[np.ndarray]:
    """One picture, a ``[B, H, W, C]`` array or a sequence of pictures (PIL or arrays) → each
    resized and cropped by ``recipe`` as ``[H, W, C]`` pixels (:func:`_prepare_one`)."""
    if isinstance(images, Image.Image):
        images = [images]
    elif isinstance(images, np.ndarray):
        images = list(images) if images.ndim == 4 else [images]
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence) or not images:
        raise InvalidInputError(f"{who} needs a non-empty list of images.", hint="Decode inputs with decode_image first.")
    return [_prepare_indexed(index, item, recipe) for index, item in enumerate(images)]


def _prepare_indexed(index: int, item: Any, recipe: ImageRecipe) -> np.ndarray:
    """:func:`_prepare_one` of the ``index``-th picture of a batch (a PIL image or an array)."""
    if isinstance(item, np.ndarray):
        item = array_to_image(item, f"Image array #{index}")
    elif not isinstance(item, Image.Image):
        raise InvalidInputError(f"Image #{index} is a {type(item).__name__}, not a PIL image or numpy array.",
                                hint="Decode inputs with decode_image first.")
    return _prepare_one(item, recipe, f"Image #{index}")


def picture_rows(pictures: Sequence[tuple[int, Image.Image | np.ndarray]], recipe: ImageRecipe) -> list[np.ndarray]:
    """Each picture's row of the model input, for a section without ``pad_to_batch_max``.

    :func:`stack_rows` of the rows of a whole batch is what :func:`preprocess_images` returns
    for it; a row depends on its picture alone, so callers may keep rows of pictures they see
    again (:class:`~edgemm.runtime.preprocess.pipeline.Preprocessor` does).

    Args:
        pictures: ``(index in the batch, picture)`` pairs; the index names the picture in errors.
        recipe: The parsed section (:func:`parse_image_section`).

    Returns:
        float32 ``[C, H, W]`` per picture, in order.

    Raises:
        InvalidInputError / UnsupportedMediaError: As :func:`preprocess_images`.
    """
    return [_values([_prepare_indexed(index, item, recipe)], recipe)[0] for index, item in pictures]


def stack_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Rows from :func:`picture_rows` → the ``[B, C, H, W]`` batch (a new array).

    Raises:
        InvalidInputError: The rows have different sizes (a section without resize or crop).
    """
    _check_one_size({row.shape[1:] for row in rows})
    return np.stack(rows)


def _check_one_size(shapes: set[tuple[int, ...]]) -> None:
    if len(shapes) > 1:
        sizes = ", ".join(f"{w}x{h}" for h, w in sorted(shapes))
        raise InvalidInputError(
            f"The images have different sizes ({sizes}) and the preprocessing neither resizes "
            "nor crops them to a common size.",
            hint="Send images of equal size, or one image per request.",
        )


@functools.lru_cache(maxsize=64)
def _value_table_cached(rescale_factor: float | None, mean: tuple[float, ...] | None,
                        std: tuple[float, ...] | None, channels: int) -> np.ndarray:
    samples = np.arange(256, dtype=np.uint8)
    if rescale_factor is not None:
        values = (samples.astype(np.float64) * rescale_factor).astype(np.float32)
    else:
        values = samples.astype(np.float32)
    table = np.repeat(values[None, :], channels, axis=0)
    if mean is not None and std is not None:
        table = (table - np.array(mean, dtype=np.float32)[:, None]) / np.array(std, dtype=np.float32)[:, None]
    table.setflags(write=False)
    return table


def _value_table(recipe: ImageRecipe) -> np.ndarray:
    """``[channels, 256]`` float32: what rescale and normalise make of each 8-bit sample.

    Computed with the same dtypes and operation order as transformers' rescale (float64
    multiply, then float32) and normalize (float32 subtract, then divide) — each an
    element-wise IEEE operation of the sample alone — so looking samples up in it gives every
    value bit for bit, in one pass instead of four full-size temporaries.
    """
    mean = None if recipe.mean is None else tuple(recipe.mean.tolist())
    std = None if recipe.std is None else tuple(recipe.std.tolist())
    return _value_table_cached(recipe.rescale_factor, mean, std, recipe.channels)


def _values(prepared: Sequence[np.ndarray], recipe: ImageRecipe) -> np.ndarray:
    """Channels-last uint8 pixels of one size → the ``[B, C, H, W]`` float32 model input,
    rescaled and normalised (see :func:`_value_table`), written once, channels first."""
    height, width = prepared[0].shape[:2]
    table = _value_table(recipe)
    out = np.empty((len(prepared), recipe.channels, height, width), dtype=np.float32)
    for index, pixels in enumerate(prepared):
        grey = pixels.shape[2] == 1
        for channel in range(recipe.channels):
            # mode="clip" is exact here (samples are 0..255, the table has 256 entries) and
            # lets numpy write into ``out`` directly instead of through a buffer.
            table[channel].take(pixels[:, :, 0 if grey else channel], out=out[index, channel], mode="clip")
    return out


def preprocess_images(
    images: Sequence[Image.Image | np.ndarray], config: Mapping[str, Any]
) -> np.ndarray:
    """Turn images into the model's ``[B, C, H, W]`` float32 input, following ``config``.

    Steps, each optional but the first: render as a person sees it, in RGB (or ``L`` when
    ``channels`` is 1) — every mode and bit depth scaled to 8 bits by its range, transparency
    composited onto ``background`` (white when the key is absent; ``None`` drops alpha like
    PIL's ``convert("RGB")``) — then resize with the PIL filter (``exact``; ``shortest_edge`` keeping the aspect ratio; ``crop_pct`` = ConvNeXt's
    resize to ``int(shortest_edge / crop_pct)`` then centre crop), centre crop (zero padded if
    the crop is larger), rescale (float64 multiply, then float32), normalize (float32).

    Images are always rendered to the configured mode; ``convert_rgb`` records the source
    processor's flag, and for RGB input (the only input the slow processors accept without it)
    the rendering is a no-op either way. EXIF orientation is :func:`decode_image`'s job.

    Args:
        images: PIL images of any mode or numpy arrays (as accepted by :func:`decode_image`).
            A single image, or a 4-D array of images, is also accepted.
        config: The image preprocessing section of the manifest.

    Returns:
        float32 array ``[B, C, H, W]``.

    Raises:
        InvalidInputError: No images, an item that is not an image, a bad array, a float image
            outside [0, 1], or images that end up with different sizes (a recipe without
            resize or crop).
        UnsupportedMediaError: An image mode that has no colour rendering.
        BundleError: The config is malformed.
    """
    return _preprocess(images, parse_image_section(config))


def _preprocess(images: Any, recipe: ImageRecipe) -> np.ndarray:
    """:func:`preprocess_images` with the section already parsed."""
    prepared = _prepare_all(images, recipe, "preprocess_images")
    _check_one_size({p.shape[:2] for p in prepared})
    return _values(prepared, recipe)


def image_feed(images: Sequence[Image.Image | np.ndarray], config: Mapping[str, Any], *,
               pad_to: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """The model inputs a batch of images fills, following ``config``.

    ``{config["input"]: pixels}`` from :func:`preprocess_images`; a section with
    ``pad_to_batch_max: true`` (ViLT: every picture keeps its own resized size) instead
    preprocesses each picture alone, zero-pads the batch at the bottom and right to its largest
    picture and adds ``{config["mask_input"]: pixel_mask}`` (1 over each picture's pixels), as
    transformers' ``ViltImageProcessor`` does (see :mod:`~edgemm.runtime.preprocess.image.vilt`).
    ``pad_to`` pads such batches to at least that ``(height, width)`` (one shape for every
    calibration batch); other sections ignore it.

    Raises:
        InvalidInputError / UnsupportedMediaError: As :func:`preprocess_images`.
        BundleError: The section is malformed (``pad_to_batch_max`` without a ``mask_input``).
    """
    return recipe_feed(images, config, parse_image_section(config), pad_to=pad_to)


def recipe_feed(images: Sequence[Image.Image | np.ndarray], config: Mapping[str, Any], recipe: ImageRecipe, *,
                pad_to: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """:func:`image_feed` with ``config`` already parsed into ``recipe`` (:func:`parse_image_section`),
    for callers that preprocess many batches with one section.

    Raises:
        InvalidInputError / UnsupportedMediaError / BundleError: As :func:`image_feed`.
    """
    pad = config.get("pad_to_batch_max", False)
    if pad is False or pad is None:
        return {config["input"]: _preprocess(images, recipe)}
    mask_name = config.get("mask_input")
    if pad is not True or not isinstance(mask_name, str) or not mask_name:
        raise _config_error(f"pad_to_batch_max must be true with a mask_input naming the pixel-mask input, got "
                            f"{pad!r} / {mask_name!r}.")
    pictures = [_values([pixels], recipe)[0] for pixels in _prepare_all(images, recipe, "image_feed")]
    batch, mask = pad_to_batch_max(pictures, at_least=pad_to)
    return {config["input"]: batch, mask_name: mask}
