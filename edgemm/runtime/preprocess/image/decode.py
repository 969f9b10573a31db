"""Safe decoding of untrusted images for the torch-free edge runtime.

:func:`decode_image` turns bytes, files, PIL images or arrays into a loaded, upright 8-bit PIL
image (``L``, ``LA``, ``RGB`` or ``RGBA``; see :mod:`~edgemm.runtime.preprocess.image.render`):
the content decides the format (checked against an allow-list), the byte size is capped before
anything is parsed, the pixel count is checked from the header before anything is decoded, and
every decoder failure becomes a typed edgemm error. Transparency is kept; compositing it onto
the bundle's background is the transforms' job, which know the bundle.

A server decodes in two steps (:func:`open_image`, then :meth:`PendingImage.decode`) so that it
knows the decode's worst-case memory (:attr:`PendingImage.working_bytes`) before it starts, and
may ask for the image reduced while decoding to what the model needs (``reduce_to``).

Only the standard library, numpy and Pillow are used here; this module runs on the edge device.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgemm.errors import InputTooLargeError, InvalidInputError, UnsupportedMediaError, UsageError
from edgemm.runtime.preprocess.files import read_capped
from edgemm.runtime.preprocess.image.render import declared_white, eight_bit, samples_to_uint8

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "REDUCE_MARGIN",
    "ImageSource",
    "PendingImage",
    "array_to_image",
    "decode_image",
    "image_bytes",
    "open_image",
]

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
DEFAULT_MAX_BYTES = 20 * 2**20

_ORIENTATION = 0x0112  # the EXIF Orientation tag

_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}
# Codecs that a Pillow build may lack; asking for them is not a configuration error.
_OPTIONAL_CODECS = frozenset({"WEBP", "AVIF"})

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image | np.ndarray

# Reduce-while-decoding keeps every side at least REDUCE_MARGIN times the size the bundle resizes
# to, and reduces only by factors that divide both sides: the reduced pixel grid then lines up
# with the full one, so the final resize sees the same geometry and differs only in its input.
# Measured against full decode + the same preprocessing on 17 real photos of 0.27 to 17.9 MP
# (Debian's mate-backgrounds nature photos and painting, scikit-learn's and matplotlib's sample
# photos), as JPEG (DCT scaling, then reduce) and as PNG (Image.reduce), through exact resizes
# to 32-384 px squares (bilinear and bicubic), CLIP's shortest edge 224 + centre crop and
# ConvNeXt's crop_pct: with a margin of 3 the model's input values differ by at most 6/255
# (mean at most 0.19/255; at most 0.84 % of them by more than 2/255). A margin of 2 allowed up to
# 12/255, a margin of 1 up to 55/255, and factors that do not divide the sides up to 124/255.
# Images with transparency are never reduced (averaging alpha does not commute with dropping it,
# which some bundles do), nor are images a bundle does not resize (a crop needs its pixels).
REDUCE_MARGIN = 3
_JPEG_SCALES = (8, 4, 2)  # what libjpeg's DCT scaling (Pillow's draft) offers

# Decoder working memory beyond the decoded image, in bytes per pixel, measured as peak RSS
# (VmHWM) over decoding 4000x4000 images with Pillow 13: libwebp keeps its own canvas and Pillow
# copies the frame out of it as bytes before loading it (8); PNG, JPEG, BMP and GIF decode
# straight into the image (0). Formats not measured are assumed to need what WEBP does.
_DECODER_EXTRA = {"PNG": 0, "JPEG": 0, "MPO": 0, "BMP": 0, "GIF": 0, "WEBP": 8}
_UNMEASURED_DECODER_EXTRA = 8
# Line buffers and decoder state that do not grow with the image (measured: under 1 MiB).
_DECODER_FIXED = 2**20
# EXIF orientations that swap width and height (transpose, rotations by 90 and 270 degrees).
_SWAPS_SIDES = frozenset({5, 6, 7, 8})

def allowed_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """Pillow format names for a section's ``formats`` (aliases such as ``JPG`` resolved).

    Raises:
        UsageError: A name Pillow cannot read, or no usable format at all.
    """
    if isinstance(formats, str):
        formats = (formats,)
    try:
        key = tuple(formats)
        hash(key)
    except TypeError:
        return _allowed_formats(formats)
    return _allowed_formats_cached(key)


@functools.lru_cache(maxsize=32)
def _allowed_formats_cached(formats: tuple[Any, ...]) -> tuple[str, ...]:
    # Every request names its bundle's list again; the answer only changes with Pillow itself.
    return _allowed_formats(formats)


def _allowed_formats(formats: Sequence[Any]) -> tuple[str, ...]:
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


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of ``image``; 1 when it has none or its EXIF block is broken."""
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except Exception:
        # A broken EXIF block should not cost the user their (intact) picture.
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _stored_bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel Pillow allocates for ``mode`` (multi-band 8-bit modes take 4)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def image_bytes(image: Image.Image) -> int:
    """Bytes that Pillow holds for ``image``'s pixels (what keeping it costs).

    Args:
        image: A PIL image of any mode.

    Returns:
        ``width * height`` times the bytes per pixel of its mode (4 for RGB: Pillow pads it).
    """
    return image.width * image.height * _stored_bytes_per_pixel(image.mode)


def _reduction(size: tuple[int, int], target: tuple[int, int], factors: Sequence[int]) -> int:
    """The largest of ``factors`` dividing both sides of ``size`` that keeps each side at least
    :data:`REDUCE_MARGIN` times ``target`` (both ``(width, height)``); 1 when none does."""
    width, height = size
    for factor in factors:
        if (factor > 1 and width % factor == 0 and height % factor == 0
                and width // factor >= REDUCE_MARGIN * target[0]
                and height // factor >= REDUCE_MARGIN * target[1]):
            return factor
    return 1


class PendingImage:
    """An untrusted image whose header passed every check, not decoded yet (see :func:`open_image`).

    Attributes:
        what: How error messages name the image.
    """

    def __init__(self, image: Image.Image, what: str, reduce_to: tuple[int, int] | None):
        self._image: Image.Image | None = image
        self.what = what
        self._reduce_to = reduce_to

    @property
    def format(self) -> str:
        """The format Pillow identified from the content (``PNG``, ``JPEG`` ...)."""
        return str(self._opened().format)

    @property
    def working_bytes(self) -> int:
        """The most memory :meth:`decode` takes at once, in bytes (its result included).

        The decoded image (a JPEG at its reduced DCT scale), the decoder's own buffers
        (measured per format), and one full-size copy in 8 bits (a mode conversion, the EXIF
        rotation, or detaching the result from the decoder).
        """
        image = self._opened()
        pixels = image.width * image.height
        decoded = _stored_bytes_per_pixel(image.mode)
        grey = image.mode in ("1", "L", "I", "F") or image.mode.startswith("I;16")
        eight_bit_copy = 1 if grey and "transparency" not in image.info else 4
        extra = _DECODER_EXTRA.get(str(image.format), _UNMEASURED_DECODER_EXTRA)
        return pixels * (decoded + extra + eight_bit_copy) + _DECODER_FIXED

    def _opened(self) -> Image.Image:
        if self._image is None:
            raise RuntimeError("PendingImage.decode() was already called; open the image again.")
        return self._image

    def decode(self, *, detach: bool = True) -> Image.Image:
        """Decode the image: loaded, upright, 8-bit, reduced if asked, detached from the payload.

        Args:
            detach: ``False`` may leave the result attached to the payload buffer (one
                full-size copy fewer), for a caller that drops it right after preprocessing.

        Returns:
            See :func:`decode_image`.

        Raises:
            InputTooLargeError: Pillow's decompression-bomb guard fired while decoding.
            UnsupportedMediaError: The data is truncated or corrupt, or its mode has no colour
                rendering.
            InvalidInputError: See :func:`decode_image`.
            RuntimeError: Called a second time.
        """
        image, what = self._opened(), self.what
        self._image = None  # the decoder's buffers go as soon as the result no longer needs them
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
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
        if self._reduce_to is not None and seen.mode in ("L", "RGB"):
            # Upright already, so the target needs no turning; a JPEG may be DCT-scaled already.
            top = min(seen.width // (REDUCE_MARGIN * self._reduce_to[0]),
                      seen.height // (REDUCE_MARGIN * self._reduce_to[1]))
            factor = _reduction(seen.size, self._reduce_to, range(top, 1, -1))
            if factor > 1:
                seen = seen.reduce(factor)
        # Detach the result from the payload buffer the decoder may still hold.
        return image.copy() if seen is image and detach else seen


def open_image(
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] = DEFAULT_FORMATS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    reduce_to: tuple[int, int] | None = None,
) -> PendingImage:
    """Check an encoded image up to its header, without decoding a pixel.

    The byte cap, the format allow-list (judged by content) and the pixel cap (from the
    header, so decompression bombs are never decoded) are applied here; :meth:`PendingImage.decode`
    decodes. In between, :attr:`PendingImage.working_bytes` tells what decoding will cost.

    Args:
        source: Encoded bytes or a file path.
        max_pixels / formats / max_bytes: See :func:`decode_image`.
        reduce_to: The ``(width, height)`` the caller will resize the upright image to, or
            ``None`` for the image as stored. Where it is given, the image may be reduced while
            decoding (JPEG DCT scaling, else :meth:`PIL.Image.Image.reduce` of opaque images) by
            a factor that divides both sides, to no less than :data:`REDUCE_MARGIN` times it.

    Returns:
        The checked, not yet decoded image.

    Raises:
        InputTooLargeError: More than ``max_bytes`` bytes or ``max_pixels`` pixels.
        UnsupportedMediaError: Not an image, or a format outside ``formats``.
        InvalidInputError: An empty image, or a source that is neither bytes nor a path.
        InputPathError: A path that does not exist or cannot be read.
        UsageError: Invalid limits, formats or ``reduce_to``.
    """
    max_pixels = _check_cap(max_pixels, "max_pixels")
    max_bytes = _check_cap(max_bytes, "max_bytes")
    if reduce_to is not None:
        reduce_to = (_check_cap(reduce_to[0], "reduce_to width"), _check_cap(reduce_to[1], "reduce_to height"))
    allowed = allowed_formats(formats)
    if isinstance(source, (bytes, bytearray, memoryview)):
        what = "The image payload"
        size = source.nbytes if isinstance(source, memoryview) else len(source)
        if size > max_bytes:
            raise _too_many_bytes(max_bytes, what, size)
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        what = f"Image file {os.fspath(source)!r}"
        data = read_capped(source, max_bytes, "Image")
        if len(data) > max_bytes:
            raise _too_many_bytes(max_bytes, what)
    else:
        raise InvalidInputError(
            f"Cannot read an image from a {type(source).__name__}.",
            hint="Pass bytes, a file path, a PIL image or a numpy array.",
        )
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
    # Checked from the header, before load(): a decompression bomb is never decoded.
    _check_pixels(image.width, image.height, max_pixels, what)
    if reduce_to is not None and image.format in ("JPEG", "MPO"):
        # libjpeg decodes straight to 1/2, 1/4 or 1/8 scale: the full bitmap never exists.
        stored = reduce_to[::-1] if _orientation(image) in _SWAPS_SIDES else reduce_to
        scale = _reduction(image.size, stored, _JPEG_SCALES)
        if scale > 1:
            image.draft(image.mode, (image.width // scale, image.height // scale))
    return PendingImage(image, what, reduce_to)


def _as_seen(image: Image.Image, what: str) -> Image.Image:
    """``image`` upright and in 8 bits: the same object when it already is both."""
    # The white point of a 32-bit TIFF lives on the file object: read it before transposing.
    white = declared_white(image)
    upright = image
    # Phone cameras store rotation in EXIF; without this the model sees the photo sideways.
    if _orientation(image) != 1:
        try:
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
    reduce_to: tuple[int, int] | None = None,
    detach: bool = True,
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
        reduce_to: For bytes and files: the ``(width, height)`` the caller resizes to; the
            image may then come back reduced, to no less than :data:`REDUCE_MARGIN` times it
            (see :func:`open_image`). ``None`` (default): the image as stored.
        detach: ``False`` lets a decoded payload's image keep referring to the payload buffer
            instead of being copied (see :meth:`PendingImage.decode`).

    Returns:
        The loaded 8-bit image, upright, detached from any file (unless ``detach`` is False).

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
    return open_image(
        source, max_pixels=max_pixels, formats=formats, max_bytes=max_bytes, reduce_to=reduce_to
    ).decode(detach=detach)
