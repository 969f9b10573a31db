"""An image corpus: every PIL mode and bit depth × EXIF orientation × format, as a person sees it.

Two pictures — a dark digit drawn on light paper and a colourful photo-like image — are saved
in every mode Pillow has (``1``, ``L``, ``LA``, ``La``, ``P`` with a transparent index and with a
``tRNS`` alpha table, ``PA``, ``RGB``, ``RGBA``, ``RGBa``, ``RGBX``, ``I;16`` and its byte orders,
``I``, ``F``, ``CMYK``, ``YCbCr``, ``HSV``, 16-bit RGB/RGBA PNG), in every format that holds the
mode (PNG, TIFF, JPEG, WEBP, GIF, BMP, a PIL image in memory, a numpy array), under each of
the 8 EXIF orientations where the format carries EXIF. Each variant must render to the 8-bit
opaque picture (exactly when lossless), preprocess to the same tensor, and get the same answer
from a real exported bundle as that picture. The two reported cases are here literally: a
16-bit PNG digit (was all white) and black strokes on a transparent background (was all black).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from edgemm.data.synthetic import synthesize_image
from edgemm.runtime.preprocess.image import (
    WHITE,
    decode_image,
    default_image_preprocessing,
    preprocess_images,
    render,
)
from tests.runtime.test_image_preprocess import png_file

HEIGHT, WIDTH = 28, 40  # not square, so a wrong orientation cannot pass
ALL_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
EXIF_FORMATS = {"mem", "PNG", "JPEG", "WEBP", "TIFF"}
# Displaying orientation k means applying TRANSPOSE[k]; storing a picture for it, the inverse.
INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
# Largest 8-bit error allowed per format / conversion that is lossy by nature.
JPEG_TOLERANCE = 40
JPEG_MEAN_TOLERANCE = 3.0


# --- the two pictures and their 8-bit opaque renderings ----------------------------------------


def _digit_ink() -> np.ndarray:
    """Ink coverage (0 paper .. 255 ink) of a hand-drawn '2', anti-aliased by 4x supersampling."""
    canvas = Image.new("L", (WIDTH * 4, HEIGHT * 4), 0)
    draw = ImageDraw.Draw(canvas)
    draw.arc((44, 10, 116, 62), start=180, end=30, fill=255, width=11)
    draw.line([(110, 48), (50, 100), (122, 100)], fill=255, width=11, joint="curve")
    return np.asarray(canvas.resize((WIDTH, HEIGHT), Image.Resampling.BOX))


INK = _digit_ink()
# Pencil on white paper (darkest 31, grey at the stroke edges), and black ink strokes.
DIGIT = (255 - np.rint(INK * (224 / 255))).astype(np.uint8)
STROKES = 255 - INK
DIGIT_1 = np.where(DIGIT < 128, 0, 255).astype(np.uint8)
PHOTO = synthesize_image(HEIGHT, WIDTH, seed=3)
_yy, _xx = np.mgrid[0:HEIGHT, 0:WIDTH]
SOFT_ALPHA = np.clip(
    400 - 1.1 * ((_yy - HEIGHT / 2) ** 2 * 3 + (_xx - WIDTH / 2) ** 2), 0, 255
).astype(np.uint8)
# What a transparent pixel stores is invisible; make it loud (inverted colours) so that dropping
# alpha instead of compositing shows.
SOFT_RGB = np.where(SOFT_ALPHA[:, :, None] == 0, 255 - PHOTO, PHOTO).astype(np.uint8)
_a = SOFT_ALPHA[:, :, None].astype(np.int64)
PHOTO_SOFT = ((SOFT_RGB * _a + 255 * (255 - _a) + 127) // 255).astype(np.uint8)
PHOTO_PALETTE = Image.fromarray(PHOTO).quantize(48, dither=Image.Dither.NONE)

REFERENCES: dict[str, np.ndarray] = {
    "digit": DIGIT,
    "strokes": STROKES,
    "digit_1": DIGIT_1,
    "photo": PHOTO,
    "photo_soft": PHOTO_SOFT,
    "photo_palette": np.asarray(PHOTO_PALETTE.convert("RGB")),
}


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels


def _reference_image(name: str) -> Image.Image:
    return Image.fromarray(REFERENCES[name])


# --- building each mode ------------------------------------------------------------------------


def _from_bytes(mode: str, pixels: np.ndarray) -> Image.Image:
    return Image.frombytes(mode, (pixels.shape[1], pixels.shape[0]), pixels.tobytes())


def _black_palette(image: Image.Image) -> Image.Image:
    image.putpalette([0, 0, 0] * 256)
    return image


def _p_keyed() -> Image.Image:
    # Index 0 is the paper (transparent), index 1 the ink: both black, like a drawing app's export.
    image = _black_palette(_from_bytes("P", (DIGIT_1 == 0).astype(np.uint8)))
    image.info["transparency"] = 0
    return image


def _p_alpha_table() -> Image.Image:
    # All-black palette whose tRNS table gives index i the opacity i: the index is the ink.
    image = _black_palette(_from_bytes("P", INK))
    image.info["transparency"] = bytes(range(256))
    return image


def _pa() -> Image.Image:
    image = _black_palette(Image.new("PA", (WIDTH, HEIGHT)))
    image.putalpha(Image.fromarray(INK))
    return image


def _keyed_16bit() -> Image.Image:
    # A 16-bit greyscale PNG whose paper is one tRNS-keyed grey (dark: 12345 / 257 = 48).
    values = np.where(DIGIT == 255, 12345, DIGIT.astype(np.uint32) * 257).astype(np.uint16)
    image = Image.fromarray(values)
    image.info["transparency"] = 12345
    return image


def _soft_rgba() -> Image.Image:
    return Image.fromarray(np.dstack([SOFT_RGB, SOFT_ALPHA]))


def _png16(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (Pillow cannot write 16-bit colour), from HxWxC uint16 samples."""
    height, width = samples.shape[:2]
    rows = samples.reshape(height, -1).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return png_file(width, height, 16, color_type, zlib.compress(raw))


@dataclass(frozen=True)
class Case:
    """One picture in one mode, the formats that hold it, and what it must render to."""

    name: str
    reference: str
    build: Callable[[], Image.Image]
    formats: tuple[str, ...]
    tolerance: int = 0  # 8-bit levels, for conversions lossy by nature (YCbCr, HSV)
    png16: Callable[[], np.ndarray] | None = None  # samples for a hand-made 16-bit PNG instead


CASES = [
    # The digit: greyscale, bilevel, transparency in every form, every bit depth.
    Case("L", "digit", lambda: Image.fromarray(DIGIT),
         ("mem", "array", "PNG", "TIFF", "JPEG", "WEBP", "GIF", "BMP")),
    Case("1", "digit_1", lambda: Image.fromarray(DIGIT_1).convert("1"),
         ("mem", "array", "PNG", "TIFF", "GIF", "BMP")),
    Case("LA-black-strokes", "strokes", lambda: Image.fromarray(np.dstack([np.zeros_like(INK), INK])),
         ("mem", "array", "PNG", "TIFF", "WEBP")),
    # The reported case: black strokes on a transparent background (RGB of the paper is black).
    Case("RGBA-black-strokes", "strokes",
         lambda: Image.fromarray(np.dstack([np.zeros((HEIGHT, WIDTH, 3), np.uint8), INK])),
         ("mem", "array", "PNG", "TIFF", "WEBP")),
    Case("La-premultiplied", "strokes",
         lambda: Image.fromarray(np.dstack([np.zeros_like(INK), INK])).convert("La"), ("mem",)),
    Case("RGBa-premultiplied", "strokes",
         lambda: Image.fromarray(np.dstack([np.zeros((HEIGHT, WIDTH, 3), np.uint8), INK])).convert("RGBa"),
         ("mem",)),
    Case("P-transparent-index", "digit_1", _p_keyed, ("mem", "PNG", "GIF")),
    Case("P-tRNS-alpha-table", "strokes", _p_alpha_table, ("mem", "PNG")),
    Case("PA", "strokes", _pa, ("mem", "TIFF")),
    # The reported case: the digit as a 16-bit PNG.
    Case("I;16", "digit", lambda: Image.fromarray(DIGIT.astype(np.uint16) * 257),
         ("mem", "array", "PNG", "TIFF")),
    Case("I;16B", "digit", lambda: _from_bytes("I;16B", DIGIT.astype(">u2") * 257),
         ("mem", "array", "TIFF")),
    Case("I;16L", "digit", lambda: _from_bytes("I;16L", DIGIT.astype("<u2") * 257), ("mem",)),
    Case("I;16N", "digit", lambda: _from_bytes("I;16N", DIGIT.astype("=u2") * 257), ("mem",)),
    Case("I;16-tRNS", "digit", _keyed_16bit, ("mem", "PNG")),
    # In memory an 'I' image is 16-bit data; in a TIFF it declares 32-bit signed samples.
    Case("I-16bit-in-memory", "digit", lambda: Image.fromarray(DIGIT.astype(np.int32) * 257), ("mem",)),
    Case("I-32bit-TIFF", "digit",
         lambda: Image.fromarray(np.rint(DIGIT * ((2**31 - 1) / 255)).astype(np.int32)), ("TIFF",)),
    Case("F", "digit", lambda: Image.fromarray(DIGIT.astype(np.float32) / 255),
         ("mem", "array", "TIFF")),
    # The photo: colour modes, palettes, soft transparency, 16-bit colour.
    Case("RGB", "photo", lambda: Image.fromarray(PHOTO),
         ("mem", "array", "PNG", "TIFF", "JPEG", "WEBP", "BMP")),
    Case("RGBA-opaque", "photo", lambda: Image.fromarray(PHOTO).convert("RGBA"),
         ("mem", "array", "PNG", "TIFF", "WEBP")),
    Case("RGBA-soft-edges", "photo_soft", _soft_rgba, ("mem", "array", "PNG", "TIFF", "WEBP")),
    Case("RGBX", "photo", lambda: Image.fromarray(PHOTO).convert("RGBX"), ("mem",)),
    Case("P-photo", "photo_palette", lambda: PHOTO_PALETTE.copy(), ("mem", "PNG", "TIFF", "GIF", "BMP")),
    Case("CMYK", "photo", lambda: Image.fromarray(PHOTO).convert("CMYK"), ("mem", "TIFF", "JPEG")),
    Case("YCbCr", "photo", lambda: Image.fromarray(PHOTO).convert("YCbCr"), ("mem", "TIFF", "JPEG"),
         tolerance=3),
    Case("HSV", "photo", lambda: Image.fromarray(PHOTO).convert("HSV"), ("mem",), tolerance=6),
    Case("RGB-16bit", "photo", lambda: Image.fromarray(PHOTO), ("PNG",),
         png16=lambda: PHOTO.astype(np.uint16) * 257),
    Case("RGBA-16bit-soft", "photo_soft", _soft_rgba, ("PNG",),
         png16=lambda: np.dstack([SOFT_RGB, SOFT_ALPHA]).astype(np.uint16) * 257),
]


# --- variants: each case in each format and orientation ---------------------------------------


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _encode(image: Image.Image, fmt: str, orientation: int) -> bytes:
    params: dict[str, Any] = {}
    if orientation != 1:
        params["exif"] = _exif(orientation)
    if fmt == "JPEG":
        params.update(quality=95, subsampling=0)
    if fmt == "WEBP":
        params.update(lossless=True, exact=True)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@dataclass(frozen=True)
class Variant:
    """One way the case reaches edgemm: encoded bytes, a PIL image, or an array."""

    label: str
    payload: Any
    lossy: bool


def _variants(case: Case) -> list[Variant]:
    upright = case.build()
    variants: list[Variant] = []
    for fmt in case.formats:
        orientations = range(1, 9) if fmt in EXIF_FORMATS else (1,)
        for orientation in orientations:
            stored = upright if orientation == 1 else upright.transpose(INVERSE[orientation])
            stored.info.update(upright.info)  # palette transparency, tRNS keys
            label = f"{case.name}/{fmt}/orientation {orientation}"
            if case.png16 is not None:
                samples = case.png16()
                if orientation != 1:
                    continue  # a hand-made PNG carries no EXIF here
                color_type = {3: 2, 4: 6}[samples.shape[2]]
                variants.append(Variant(label, _png16(samples, color_type), False))
            elif fmt == "mem":
                if orientation != 1:
                    stored.info["exif"] = _exif(orientation).tobytes()
                variants.append(Variant(label, stored, False))
            elif fmt == "array":
                variants.append(Variant(label, np.asarray(stored), False))
            else:
                variants.append(Variant(label, _encode(stored, fmt, orientation), fmt == "JPEG"))
    return variants


def _close_enough(actual: np.ndarray, expected: np.ndarray, lossy: bool, tolerance: int) -> str | None:
    """None when the renderings agree (exactly for lossless), else what differs."""
    if actual.shape != expected.shape:
        return f"shape {actual.shape} != {expected.shape}"
    diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    limit = JPEG_TOLERANCE if lossy else tolerance
    if diff.max() > limit or (lossy and diff.mean() > JPEG_MEAN_TOLERANCE):
        return f"max diff {diff.max()} (mean {diff.mean():.2f}) over {limit}"
    return None


# --- the renderings ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_variant_renders_as_its_8bit_opaque_picture(case: Case):
    expected = _as_rgb(REFERENCES[case.reference])
    section = default_image_preprocessing(size=(20, 24))
    expected_tensor = preprocess_images([_reference_image(case.reference)], section)
    failures: list[str] = []
    variants = _variants(case)
    assert variants
    for variant in variants:
        decoded = decode_image(variant.payload, formats=ALL_FORMATS)
        assert decoded.mode in ("L", "LA", "RGB", "RGBA"), variant.label
        shown = np.asarray(render(decoded, background=WHITE, mode="RGB"))
        problem = _close_enough(shown, expected, variant.lossy, case.tolerance)
        if problem:
            failures.append(f"{variant.label}: {problem}")
            continue
        tensor = preprocess_images([decoded], section)
        if not variant.lossy and case.tolerance == 0 and not np.array_equal(tensor, expected_tensor):
            failures.append(f"{variant.label}: the preprocessed tensor differs")
    assert not failures, "\n".join(failures)


def test_preprocess_renders_undecoded_pil_images_and_arrays_the_same():
    """preprocess_images called directly (training, parity probes) renders like decode_image."""
    section = default_image_preprocessing(size=(20, 24))
    for case in CASES:
        expected = preprocess_images([_reference_image(case.reference)], section)
        if "mem" in case.formats and not case.tolerance:
            np.testing.assert_array_equal(preprocess_images([case.build()], section), expected,
                                          err_msg=case.name)
        if "array" in case.formats:
            array = np.asarray(case.build())
            np.testing.assert_array_equal(preprocess_images([array], section), expected,
                                          err_msg=case.name)


def test_reported_cases_literally():
    """A 16-bit PNG digit was all white; black strokes on transparency were all black."""
    png16 = _encode(Image.fromarray(DIGIT.astype(np.uint16) * 257), "PNG", 1)
    with Image.open(io.BytesIO(png16)) as raw:
        assert raw.mode == "I;16"
        assert np.asarray(raw.convert("RGB")).min() == 255  # Pillow saturates: all white
    np.testing.assert_array_equal(np.asarray(decode_image(png16)), DIGIT)

    strokes = _encode(Image.fromarray(np.dstack([np.zeros((HEIGHT, WIDTH, 3), np.uint8), INK])), "PNG", 1)
    with Image.open(io.BytesIO(strokes)) as raw:
        assert raw.mode == "RGBA"
        assert np.asarray(raw.convert("RGB")).max() == 0  # alpha dropped: all black
    shown = render(decode_image(strokes), background=WHITE, mode="L")
    np.testing.assert_array_equal(np.asarray(shown), STROKES)


# --- the answers of a real exported bundle ---------------------------------------------------


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path):
    from edgemm.runtime import Predictor

    with Predictor.load(tiny_bundle, device="cpu") as loaded:
        yield loaded


def _bundle_input(variant: Variant, allowed: list[str]) -> Any:
    """What a user hands the Predictor: bytes where the bundle accepts the format, else the PIL
    image they opened themselves (a TIFF here: the bundle does not accept TIFF bytes)."""
    payload = variant.payload
    if isinstance(payload, bytes):
        with Image.open(io.BytesIO(payload)) as probe:
            fmt = probe.format
        if fmt not in allowed:
            opened = Image.open(io.BytesIO(payload))
            opened.load()
            return opened
    return payload


def test_bundle_records_white_paper(predictor):
    section = predictor.manifest.preprocessing["image"]
    assert section["background"] == [255, 255, 255]
    assert section["channels"] == 3


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bundle_answers_every_variant_like_the_8bit_opaque_picture(case: Case, predictor):
    allowed = predictor.manifest.preprocessing["image"]["formats"]
    variants = _variants(case)
    reference = io.BytesIO()
    _reference_image(case.reference).save(reference, format="PNG")
    images = [reference.getvalue()] + [_bundle_input(v, allowed) for v in variants]
    answers = predictor.predict(text=["the digit two"] * len(images), image=images)
    expected = answers[0]
    logits = np.asarray(next(iter(expected.outputs.values())))
    top_two = np.sort(logits)[-2:]
    failures = []
    for variant, answer in zip(variants, answers[1:], strict=True):
        got = np.asarray(next(iter(answer.outputs.values())))
        lossy = variant.lossy or case.tolerance > 0
        atol = 2e-2 if lossy else 1e-5
        # A lossy picture may move each logit by atol; where the reference's top two are closer
        # than that, which one wins is the codec's noise, and the logits are the whole check.
        decided = top_two[1] - top_two[0] > 2 * atol
        wrong_label = decided and answer.label != expected.label
        if wrong_label or not np.allclose(got, logits, atol=atol):
            failures.append(f"{variant.label}: {answer.label} {got} != {expected.label} {logits}")
    assert not failures, "\n".join(failures)


def test_reported_cases_get_the_answer_of_the_8bit_digit(predictor):
    def png(pixels: np.ndarray) -> bytes:
        return _encode(Image.fromarray(pixels), "PNG", 1)

    images = [
        png(DIGIT),  # the 8-bit opaque digit ...
        png(DIGIT.astype(np.uint16) * 257),  # ... and it as a 16-bit PNG
        png(STROKES),  # black ink on white paper ...
        png(np.dstack([np.zeros((HEIGHT, WIDTH, 3), np.uint8), INK])),  # ... and on transparency
        png(np.full((HEIGHT, WIDTH), 255, np.uint8)),  # what the bugs made of them
        png(np.zeros((HEIGHT, WIDTH), np.uint8)),
    ]
    answers = predictor.predict(text=["the digit two"] * len(images), image=images)
    logits = [np.asarray(next(iter(a.outputs.values()))) for a in answers]
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-5)
    np.testing.assert_allclose(logits[3], logits[2], atol=1e-5)
    assert answers[1].label == answers[0].label and answers[3].label == answers[2].label
    # A blank page and a black one answer differently from the digits they were mistaken for.
    assert not np.allclose(logits[4], logits[0], atol=1e-4)
    assert not np.allclose(logits[5], logits[2], atol=1e-4)


# --- the hostile-input guarantees hold for every new mode ----------------------------------------


def test_wide_images_that_would_be_a_guess_are_refused():
    from edgemm.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=r"\[0, 1\]") as info:
        decode_image(Image.fromarray(np.full((4, 4), 255.0, np.float32)))  # a 0-255 float image
    assert info.value.hint
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        decode_image(Image.fromarray(np.full((4, 4), np.nan, np.float32)))
    with pytest.raises(InvalidInputError, match="16-bit") as info:
        decode_image(Image.fromarray(np.full((4, 4), 70000, np.int32)))  # no declared depth
    assert "I;16" in info.value.hint
    # A float TIFF holding 0-255 values is refused the same way (it would otherwise be white).
    tiff = _encode(Image.fromarray(np.full((4, 4), 200.0, np.float32)), "TIFF", 1)
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        decode_image(tiff, formats=["TIFF"])


def test_pil_inputs_are_turned_by_their_exif_orientation_without_side_effects():
    stored = Image.fromarray(PHOTO).transpose(INVERSE[6])
    stored.info["exif"] = _exif(6).tobytes()
    first = decode_image(stored)
    second = decode_image(stored)  # the caller's image still says 6: same answer twice
    np.testing.assert_array_equal(np.asarray(first), PHOTO)
    np.testing.assert_array_equal(np.asarray(second), PHOTO)
    assert stored.getexif().get(0x0112) == 6
    plain = Image.fromarray(PHOTO)
    assert decode_image(plain) is plain  # upright 8-bit images come back as they are
    assert ImageOps.exif_transpose(stored).size == (WIDTH, HEIGHT)
