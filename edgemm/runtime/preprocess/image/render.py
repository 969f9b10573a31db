"""Images as a person sees them: every PIL mode and bit depth rendered to opaque 8-bit pixels.

A viewer shows a 16-bit PNG by its range (white is 65535, not 255) and shows transparent pixels
as the paper behind them. Pillow's ``convert("RGB")`` does neither: it saturates 16-bit, 32-bit
and float samples (a 16-bit digit becomes all white) and drops alpha, revealing whatever colour
the transparent pixels happen to store (black strokes on a transparent background become all
black). This module renders the way a viewer does, in two steps shared by training, parity
and the runtime:

* :func:`eight_bit` — any mode to 8-bit ``L`` / ``LA`` / ``RGB`` / ``RGBA``, alpha kept: integer
  samples scaled by their range (``I;16``: value / 257; ``I``: the range the file declares, else
  16-bit), float samples by [0, 1], palette, CMYK, YCbCr, HSV, LAB and premultiplied modes
  through Pillow's own conversions, ``transparency`` keys (palette index, ``tRNS`` colour) made
  into alpha;
* :func:`render` — that, with alpha composited onto the bundle's background colour (or dropped,
  where the bundle records that training dropped it), in the model's mode ``RGB`` or ``L``.

Only numpy and Pillow are used here; this module runs on the edge device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from edgemm.errors import InvalidInputError, UnsupportedMediaError

__all__ = [
    "WHITE",
    "declared_white",
    "eight_bit",
    "parse_background",
    "render",
    "samples_to_uint8",
]

# The paper a child draws on: what edgemm composites transparency onto unless told otherwise.
WHITE: tuple[int, int, int] = (255, 255, 255)

_EIGHT_BIT = frozenset({"L", "LA", "RGB", "RGBA"})
# Modes whose samples are wider than 8 bits; Pillow's convert() saturates them.
_WIDE = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_UINT16_WHITE = 65535
# Rows are scaled in blocks of about this many samples, so that a large 16-bit or float image
# never needs a full-size float64 copy on a kiosk.
_BLOCK_SAMPLES = 1 << 20


def parse_background(value: Any, channels: int) -> tuple[int, int, int] | None:
    """Check the ``background`` of an image preprocessing section.

    Args:
        value: ``None`` (alpha is dropped, as PIL's ``convert("RGB")`` does) or the sRGB colour
            that transparency is composited onto: 3 ints in 0..255, or 1 int for a grey model
            (``channels`` 1).
        channels: The section's channel count (1 or 3).

    Returns:
        The colour as an ``(r, g, b)`` tuple, or ``None``.

    Raises:
        ValueError: The value is neither ``None`` nor a valid colour; the message says why.
    """
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else None
    if values is not None and len(values) == 1 and channels == 1:
        values = values * 3
    if (
        values is None
        or len(values) != 3
        or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 255
            for v in values
        )
    ):
        grey = " (or 1 for a grey model)" if channels == 1 else ""
        raise ValueError(
            f"background must be null or 3 integers in 0..255{grey}, like [255, 255, 255]; "
            f"got {value!r}."
        )
    return (int(values[0]), int(values[1]), int(values[2]))


def _scaled(values: np.ndarray, white: float) -> np.ndarray:
    """``round(clip(v, 0, white) * 255 / white)`` as uint8, a block of rows at a time."""
    out = np.empty(values.shape, dtype=np.uint8)
    row = int(np.prod(values.shape[1:], dtype=np.int64)) or 1
    step = max(1, _BLOCK_SAMPLES // row)
    factor = 255.0 / white
    for start in range(0, values.shape[0], step):
        block = values[start : start + step].astype(np.float64)
        np.clip(block, 0.0, white, out=block)
        block *= factor
        np.rint(block, out=block)
        out[start : start + step] = block
    return out


def _check_unit_range(values: np.ndarray, what: str) -> None:
    if values.size and (
        not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0
    ):
        raise InvalidInputError(
            f"{what} has float values outside [0, 1] (or NaN/inf).",
            hint="Float images must be scaled to [0, 1]; otherwise send 8-bit (0-255) or "
            "16-bit (0-65535) integers.",
        )


def samples_to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    """Scale an array of samples to uint8 by the range its dtype means.

    uint8 is kept, bool is 0/255, uint16 is divided by 257 (65535 is white, as in a 16-bit
    PNG), floats must lie in [0, 1] (1.0 is white).

    Args:
        values: Samples of any shape.
        what: How error messages name the array, e.g. ``"Image array #2"``.

    Returns:
        uint8 array of the same shape.

    Raises:
        InvalidInputError: Another dtype (its range would be a guess), or floats outside
            [0, 1] or not finite.
    """
    kind, size = values.dtype.kind, values.dtype.itemsize
    if kind == "u" and size == 1:
        return values
    if kind == "b":
        return values.astype(np.uint8) * np.uint8(255)
    if kind == "u" and size == 2:  # either byte order: np.asarray of an 'I;16B' image is '>u2'
        return _scaled(values, _UINT16_WHITE)
    if kind == "f":
        _check_unit_range(values, what)
        return _scaled(values, 1.0)
    raise InvalidInputError(
        f"{what} has dtype {values.dtype}; images must be uint8 (0-255), uint16 (0-65535), "
        "bool, or float in [0, 1].",
        hint="Convert with array.astype(np.uint8) for 0-255 data, or np.uint16 for 16-bit data.",
    )


def declared_white(image: Image.Image) -> int | None:
    """The white point a 32-bit integer (``I``) image's file declares, if it declares one.

    Pillow reads 32-bit and signed 16-bit TIFF samples into mode ``I`` and keeps the file's
    ``BitsPerSample`` / ``SampleFormat`` tags only on the opened file object, so callers read
    this before transposing or copying the image.

    Args:
        image: Any PIL image.

    Returns:
        ``2**bits - 1`` (unsigned) or ``2**(bits - 1) - 1`` (signed) for an ``I`` image with
        TIFF tags; ``None`` otherwise.
    """
    tags = getattr(image, "tag_v2", None)
    if image.mode != "I" or tags is None:
        return None
    bits, sample_format = tags.get(258), tags.get(339, 1)
    bits = bits[0] if isinstance(bits, tuple) else bits
    sample_format = sample_format[0] if isinstance(sample_format, tuple) else sample_format
    if not isinstance(bits, int) or not 1 < bits <= 32:
        return None
    return 2 ** (bits - 1) - 1 if sample_format == 2 else 2**bits - 1


def _wide_to_eight_bit(image: Image.Image, white: int | None, what: str) -> Image.Image:
    values = np.asarray(image)
    if image.mode == "F":
        _check_unit_range(values, what)
        pixels = _scaled(values, 1.0)
    else:
        if image.mode != "I":
            white = _UINT16_WHITE
        elif white is None:
            # An 'I' image that declares no range is what Pillow makes of 16-bit data
            # (convert("I") of a 16-bit PNG, fromarray of widened uint16): read it as 16-bit,
            # and refuse anything else rather than guess a range.
            white = _UINT16_WHITE
            if values.size and (values.min() < 0 or values.max() > white):
                raise InvalidInputError(
                    f"{what} is a 32-bit integer ('I') image with values "
                    f"{int(values.min())}..{int(values.max())}; without a file that declares "
                    "its bit depth, edgemm reads 'I' images as 16-bit (0-65535).",
                    hint="Send the image as a file (PNG or TIFF), as 8-bit (mode 'L') or "
                    "16-bit (mode 'I;16') data, or as a uint8/uint16 array.",
                )
        pixels = _scaled(values, white)
    gray = Image.fromarray(pixels)
    key = image.info.get("transparency")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and image.mode != "F":
        # A tRNS grey level: pixels of exactly that 16-bit value are transparent.
        alpha = Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8))
        return Image.merge("LA", (gray, alpha))
    return gray


def eight_bit(image: Image.Image, *, white: int | None = None, what: str = "The image") -> Image.Image:
    """Render any PIL image to 8-bit ``L``, ``LA``, ``RGB`` or ``RGBA``, keeping transparency.

    Args:
        image: A loaded image of any mode.
        white: The white point of an ``I`` image, when the caller read it from the file
            (:func:`declared_white`) before transposing it; default: read from ``image``.
        what: How error messages name the image.

    Returns:
        ``image`` itself when it is already 8-bit ``L``/``LA``/``RGB``/``RGBA`` without a
        ``transparency`` key, else a new image.

    Raises:
        InvalidInputError: A float image outside [0, 1], or an ``I`` image outside 16-bit
            range that declares no bit depth.
        UnsupportedMediaError: A mode Pillow cannot render as colour.
    """
    mode = image.mode
    if mode in ("LA", "RGBA") or (mode in _EIGHT_BIT and "transparency" not in image.info):
        return image
    if mode in _WIDE:
        return _wide_to_eight_bit(image, declared_white(image) if white is None else white, what)
    base = "L" if mode in ("1", "L", "La") else "RGB"
    target = base + "A" if image.has_transparency_data else base
    try:
        # Pillow's own conversions: palette lookup (with its transparency), CMYK, YCbCr, HSV,
        # LAB, un-premultiplying La/RGBa, and tRNS colours of L/RGB images into alpha.
        return image.convert(target)
    except ValueError as exc:
        raise UnsupportedMediaError(
            f"{what} has pixel mode {mode!r}, which cannot be rendered as colour ({exc}).",
            hint="Send an RGB, RGBA, greyscale or palette image (PNG or JPEG).",
            details={"mode": mode},
        ) from None


def render(
    image: Image.Image,
    *,
    background: Sequence[int] | None,
    mode: str,
    what: str = "The image",
    keep_grey: bool = False,
) -> Image.Image:
    """The opaque 8-bit picture a person sees, in the model's mode.

    Args:
        image: A loaded image of any mode (see :func:`eight_bit`).
        background: ``(r, g, b)`` that transparent and translucent pixels are composited onto
            (straight alpha: ``colour * a + background * (1 - a)``, rounded); ``None`` drops
            alpha the way PIL's ``convert("RGB")`` does.
        mode: ``"RGB"`` or ``"L"``; a grey model gets the luma of the composited colour.
        what: How error messages name the image.
        keep_grey: With ``mode`` ``"RGB"``, return an opaque grey picture as ``L`` instead of
            converting it: its red, green and blue would all equal its grey, so a caller may
            resize one band instead of three and read it for every channel.

    Returns:
        An 8-bit image of ``mode`` (or ``L``, see ``keep_grey``) without alpha.

    Raises:
        InvalidInputError / UnsupportedMediaError: As :func:`eight_bit`.
    """
    image = eight_bit(image, what=what)
    if background is not None and image.mode in ("LA", "RGBA"):
        canvas = Image.new("RGB", image.size, tuple(background))
        source = image if image.mode == "RGBA" else image.convert("RGBA")
        # paste with the image as its own mask blends with exact rounding:
        # (colour * a + background * (255 - a)) / 255.
        canvas.paste(source, mask=source)
        image = canvas
    if image.mode == mode or (keep_grey and image.mode == "L" and mode == "RGB"):
        return image
    return image.convert(mode)
