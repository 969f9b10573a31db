"""Safe decoding of untrusted images for the torch-free edge runtime.

:func:`decode_image` turns bytes, files, PIL images or arrays into a loaded, upright 8-bit PIL
image (``L``, ``LA``, ``RGB`` or ``RGBA``; see :mod:`~edgemm.runtime.preprocess.image.render`):
the content decides the format (checked against an allow-list), the byte size is capped before
anything is parsed, the pixel count is checked from the header before anything is decoded, and
every decoder failure becomes a typed edgemm error. Transparency is kept; compositing it onto
the bundle's background is the transforms' job, which know the bundle.

Only the standard library, numpy and Pillow are used here; this module runs on the edge device.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgemm.errors import InputTooLargeError, InvalidInputError, UnsupportedMediaError, UsageError
from edgemm.runtime.preprocess.files import read_capped
from edgemm.runtime.preprocess.image.render import declared_white, eight_bit, samples_to_uint8

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "array_to_image",
    "decode_image",
]

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
DEFAULT_MAX_BYTES = 20 * 2**20

_ORIENTATION = 0x0112  # the EXIF Orientation tag

_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}
# Codecs that a Pillow build may lack; asking for them is not a configuration error.
_OPTIONAL_CODECS = frozenset({"WEBP", "AVIF"})

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image | np.ndarray

def allowed_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """Pillow format names for a section's ``formats`` (aliases such as ``JPG`` resolved).

    Raises:
        UsageError: A name Pillow cannot read, or no usable format at all.
    """
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

    seen = _as_seen(image, what)
    # Detach the result from the payload buffer the decoder may still hold.
    return image.copy() if seen is image else seen


def _as_seen(image: Image.Image, what: str) -> Image.Image:
    """``image`` upright and in 8 bits: the same object when it already is both."""
    # The white point of a 32-bit TIFF lives on the file object: read it before transposing.
    white = declared_white(image)
    upright = image
    try:
        # Phone cameras store rotation in EXIF; without this the model sees the photo sideways.
        if image.getexif().get(_ORIENTATION, 1) in range(2, 9):
            upright = ImageOps.exif_transpose(image)
    except Exception:
        # A broken EXIF block should not cost the user their (intact) picture.
        upright = image
    return eight_bit(upright, white=white, what=what)


def array_to_image(array: np.ndarray, what: str) -> Image.Image:
    """Turn an image array into an 8-bit PIL image, refusing shapes, dtypes and values it cannot be.

    Args:
        array: HxW, HxWx1 (grey), HxWx2 (grey + alpha), HxWx3 (RGB) or HxWx4 (RGBA) samples:
            uint8 (0-255), uint16 (0-65535, divided by 257 like a 16-bit PNG), bool (0/255) or
            float in [0, 1] (scaled by 255 and rounded).
        what: How error messages name the array, e.g. ``"Image array #2"``.

    Returns:
        A PIL image of mode ``L``, ``LA``, ``RGB`` or ``RGBA`` (alpha kept).

    Raises:
        InvalidInputError: The shape is not an image's, the array is empty, the dtype's range
            is unknown (signed or wide integers), or float values lie outside [0, 1] (or are
            NaN/inf).
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (2, 3, 4))):
        raise InvalidInputError(
            f"{what} has shape {array.shape}; expected HxW, HxWx1, HxWx2, HxWx3 or HxWx4.",
            hint="Channels-first arrays (CxHxW) must be transposed with array.transpose(1, 2, 0).",
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f"{what} is empty (shape {array.shape}).")
    return Image.fromarray(np.ascontiguousarray(samples_to_uint8(array, what)))


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
    decompression bombs are refused without being decoded, whatever the bit depth. Animated
    images yield their first frame; EXIF orientation is applied (to PIL images too); every
    mode and bit depth is rendered to 8 bits by its range, transparency kept (see
    :func:`~edgemm.runtime.preprocess.image.render.eight_bit`).

    Args:
        source: Encoded bytes, a file path, a ``PIL.Image.Image`` of any mode (returned
            unchanged when it is upright 8-bit ``L``/``LA``/``RGB``/``RGBA``), or a numpy array
            (see :func:`array_to_image`).
        max_pixels: Largest accepted ``width * height`` (Pillow's own bomb limit also applies).
        formats: Allowed Pillow format names (for bytes and files).
        max_bytes: Largest accepted payload; files are read up to ``max_bytes + 1`` bytes.

    Returns:
        The loaded 8-bit image, upright, detached from any file.

    Raises:
        InputTooLargeError: More than ``max_bytes`` bytes or ``max_pixels`` pixels.
        UnsupportedMediaError: Not an image, a format outside ``formats``, truncated/corrupt,
            or a pixel mode that has no colour rendering.
        InvalidInputError: An array of the wrong dtype, value range or shape, a float image
            outside [0, 1], or an empty image.
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
        return _as_seen(source, "The image")
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_pixels(source.shape[1], source.shape[0], max_pixels, "The image array")
        return array_to_image(source, "The image array")

    allowed = allowed_formats(formats)
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
