"""Image decoding and preprocessing: parity with transformers' slow processors, hostile inputs."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from edgemm.data.synthetic import synthesize_image
from edgemm.errors import (
    BundleError,
    InputPathError,
    InputTooLargeError,
    InvalidInputError,
    UnsupportedMediaError,
    UnsupportedModelError,
    UsageError,
)
from edgemm.runtime.preprocess.image import (
    DEFAULT_FORMATS,
    decode_image,
    default_image_preprocessing,
    image_preprocessing_from_hf,
    preprocess_images,
)
from edgemm.runtime.preprocess.image.decode import open_image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]
PARITY_ATOL = 1e-5
_ALL_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_dir() -> Path:
    matplotlib = pytest.importorskip("matplotlib")
    path = Path(matplotlib.get_data_path()) / "sample_data"
    if not (path / "grace_hopper.jpg").is_file():
        pytest.skip("matplotlib sample data is not installed")
    return path


@pytest.fixture(scope="module")
def photos(sample_dir: Path) -> dict[str, Image.Image]:
    """Real images of several modes and aspect ratios, loaded as PIL images."""

    def load(name: str) -> Image.Image:
        with Image.open(sample_dir / name) as image:
            image.load()
            return image.copy()

    hopper = load("grace_hopper.jpg")  # RGB 512x600 JPEG photo
    return {
        "hopper": hopper,
        "present_rgba": load("Minduka_Present_Blue_Pack.png"),  # RGBA 128x128
        "logo_rgba": load("logo2.png"),  # RGBA 542x130, very wide
        "hopper_gray": hopper.convert("L"),
        "hopper_tall": hopper.crop((200, 0, 261, 600)),  # 61x600, odd width
    }


@pytest.fixture(scope="module")
def transformers_module():
    return pytest.importorskip("transformers")


# --- parity with transformers' slow image processors ------------------------------------------

PARITY_CASES = [
    ("ViTImageProcessor", {}),
    ("ViTImageProcessor", {"size": {"height": 32, "width": 32}, "resample": 3}),
    ("ViTImageProcessor", {"size": 48, "do_convert_rgb": True, "resample": 1}),
    ("ViTImageProcessor", {"size": {"height": 40, "width": 24}, "do_normalize": False}),
    ("ViTImageProcessor", {"size": 24, "do_rescale": False, "resample": 0}),
    ("ViTImageProcessor", {"size": 24, "do_rescale": False, "do_normalize": False}),
    ("DeiTImageProcessor", {}),
    ("CLIPImageProcessor", {}),
    ("CLIPImageProcessor", {"size": 100, "crop_size": 91, "resample": 4}),
    # no resize: the crop pads small images with zeros (transformers' padding branch)
    ("CLIPImageProcessor", {"do_resize": False, "crop_size": {"height": 301, "width": 200}}),
    ("SiglipImageProcessor", {}),
    ("SiglipImageProcessor", {"size": {"height": 64, "width": 96}, "do_convert_rgb": True}),
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}, "crop_pct": 0.875}),
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 384}}),
    ("ConvNextImageProcessor", {"size": 200, "crop_pct": 0.95, "resample": 5}),
    # crop_pct > 1: the crop is larger than the resized image and gets zero padding
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 96}, "crop_pct": 1.3}),
    ("BitImageProcessor", {}),
    ("BitImageProcessor", {"size": {"height": 70, "width": 50}, "crop_size": 64}),
]


def _on_white(image: Image.Image) -> Image.Image:
    """The opaque RGB rendering on white, by Pillow's own alpha compositing."""
    rgba = image.convert("RGBA")
    paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(paper, rgba).convert("RGB")


def _case_id(case: tuple[str, dict]) -> str:
    name, kwargs = case
    return name.replace("ImageProcessor", "") + ("-" + json.dumps(kwargs) if kwargs else "")


@pytest.mark.parametrize("case", PARITY_CASES, ids=[_case_id(c) for c in PARITY_CASES])
def test_matches_transformers_slow_processor(case, photos, transformers_module):
    name, kwargs = case
    processor = getattr(transformers_module, name)(**kwargs)
    images = list(photos.values())
    from_saved = image_preprocessing_from_hf(json.loads(processor.to_json_string()))
    from_raw = image_preprocessing_from_hf({"image_processor_type": name, **kwargs})
    assert from_saved == from_raw
    if processor.to_dict().get("do_convert_rgb"):
        # The processor drops alpha itself (PIL convert("RGB")); the section reproduces that.
        assert from_saved["background"] is None
        hf_inputs = images
    else:
        # The slow processors without do_convert_rgb reject non-RGB images; edgemm renders them
        # onto white paper itself, so transformers gets the same rendering done up front.
        assert from_saved["background"] == [255, 255, 255]
        hf_inputs = [_on_white(image) for image in images]
    expected = processor(hf_inputs, return_tensors="np")["pixel_values"]

    actual = preprocess_images(images, from_saved)

    assert actual.dtype == np.float32
    assert actual.flags.c_contiguous
    assert actual.shape == expected.shape
    diff = float(np.max(np.abs(actual - expected.astype(np.float32))))
    print(f"{_case_id(case)}: shape {actual.shape} max abs diff {diff:.3g}")
    assert diff <= PARITY_ATOL


def test_parity_on_synthetic_and_array_inputs(transformers_module):
    processor = transformers_module.CLIPImageProcessor()
    arrays = [synthesize_image(300, 257, seed) for seed in range(3)]
    expected = processor(arrays, return_tensors="np")["pixel_values"]
    actual = preprocess_images(arrays, image_preprocessing_from_hf(processor.to_dict()))
    assert np.max(np.abs(actual - expected)) <= PARITY_ATOL


def test_fast_and_legacy_names_map_to_slow_processor(transformers_module):
    saved = transformers_module.ConvNextImageProcessor(size={"shortest_edge": 224}).to_dict()
    expected = image_preprocessing_from_hf(saved)
    assert expected["resize"] == {"mode": "crop_pct", "shortest_edge": 224, "crop_pct": 0.875}
    for alias in ("ConvNextImageProcessorFast", "ConvNextFeatureExtractor"):
        assert image_preprocessing_from_hf({**saved, "image_processor_type": alias}) == expected


def test_translation_of_flags_and_forms():
    vit = image_preprocessing_from_hf({"image_processor_type": "ViTImageProcessor", "size": 32})
    assert vit["resize"] == {"mode": "exact", "height": 32, "width": 32}
    assert vit["resample"] == "bilinear"
    assert vit["center_crop"] is None
    assert vit["convert_rgb"] is False
    assert vit["mean"] == [0.5, 0.5, 0.5]
    assert vit["input"] == "pixel_values"
    assert vit["formats"] == list(DEFAULT_FORMATS)

    clip = image_preprocessing_from_hf(
        {"image_processor_type": "CLIPImageProcessorFast", "size": 336, "crop_size": 336},
        input_name="image",
    )
    assert clip["input"] == "image"
    assert clip["resize"] == {"mode": "shortest_edge", "shortest_edge": 336}
    assert clip["center_crop"] == {"height": 336, "width": 336}
    assert clip["resample"] == "bicubic"
    assert clip["convert_rgb"] is True

    bare = image_preprocessing_from_hf(
        {
            "image_processor_type": "DeiTImageProcessor",
            "do_resize": False,
            "do_center_crop": False,
            "do_rescale": False,
            "do_normalize": False,
        }
    )
    assert bare["resize"] is None and bare["center_crop"] is None
    assert bare["rescale_factor"] is None and bare["mean"] is None and bare["std"] is None

    warp = image_preprocessing_from_hf({"image_processor_type": "ConvNextImageProcessor"})
    assert warp["resize"] == {"mode": "exact", "height": 384, "width": 384}
    json.dumps(warp)  # the manifest stores it as JSON


def test_unknown_or_unusable_processor_is_refused():
    with pytest.raises(UnsupportedModelError) as info:
        image_preprocessing_from_hf({"image_processor_type": "DetrImageProcessor"})
    assert "CLIPImageProcessor" in info.value.hint and "ViTImageProcessor" in info.value.hint
    with pytest.raises(UnsupportedModelError):
        image_preprocessing_from_hf({"size": 224})
    with pytest.raises(UnsupportedModelError, match="shortest_edge"):
        image_preprocessing_from_hf(
            {"image_processor_type": "ConvNextImageProcessor", "size": {"height": 2, "width": 2}}
        )
    with pytest.raises(UnsupportedModelError, match="height"):
        image_preprocessing_from_hf({"image_processor_type": "SiglipImageProcessor", "size": 224})
    with pytest.raises(UnsupportedModelError, match="resample"):
        image_preprocessing_from_hf({"image_processor_type": "ViTImageProcessor", "resample": 9})


# --- default recipe and preprocess_images ------------------------------------------------------


def test_default_preprocessing_rgb_and_grayscale(photos):
    config = default_image_preprocessing(size=(20, 30))
    out = preprocess_images([photos["hopper"], photos["present_rgba"]], config)
    assert out.shape == (2, 3, 20, 30) and out.dtype == np.float32
    resized = np.asarray(photos["hopper"].resize((30, 20), Image.Resampling.BILINEAR))
    expected = ((resized.astype(np.float64) / 255).astype(np.float32) - 0.5) / 0.5
    np.testing.assert_array_equal(out[0], expected.transpose(2, 0, 1))

    gray = default_image_preprocessing(size=16, channels=1, resample="box")
    out = preprocess_images([photos["hopper"], synthesize_image(10, 12, 0)], gray)
    assert out.shape == (2, 1, 16, 16)
    assert out.min() >= -1.0 and out.max() <= 1.0

    with pytest.raises(UsageError):
        default_image_preprocessing(size=0)
    with pytest.raises(UsageError):
        default_image_preprocessing(size=8, resample="cubic")
    with pytest.raises(UsageError):
        default_image_preprocessing(size=8, mean=(0.1, 0.2))


def test_preprocess_refuses_mixed_sizes_without_resize():
    config = default_image_preprocessing(size=8)
    config["resize"] = None
    images = [synthesize_image(8, 8, 0), synthesize_image(9, 8, 1)]
    with pytest.raises(InvalidInputError, match="different sizes"):
        preprocess_images(images, config)
    assert preprocess_images(images[:1], config).shape == (1, 3, 8, 8)
    with pytest.raises(InvalidInputError):
        preprocess_images([], config)
    with pytest.raises(InvalidInputError):
        preprocess_images(["not an image"], config)


def test_preprocess_refuses_malformed_config():
    good = default_image_preprocessing(size=8)
    for bad in (
        {**good, "resize": {"mode": "fit", "height": 8}},
        {**good, "resample": "cubic"},
        {**good, "mean": [0.5, 0.5]},
        {**good, "std": None},
        {**good, "center_crop": {"height": 0, "width": 4}},
        {**good, "kind": "audio"},
    ):
        with pytest.raises(BundleError):
            preprocess_images([synthesize_image(8, 8, 0)], bad)


def test_background_is_recorded_and_validated():
    assert default_image_preprocessing(size=8)["background"] == [255, 255, 255]
    assert default_image_preprocessing(size=8, background=(0, 64, 255))["background"] == [0, 64, 255]
    assert default_image_preprocessing(size=8, background=None)["background"] is None
    # HF processors: convert_rgb processors drop alpha themselves; the others refuse such images.
    clip = image_preprocessing_from_hf({"image_processor_type": "CLIPImageProcessor"})
    assert clip["background"] is None
    vit = image_preprocessing_from_hf({"image_processor_type": "ViTImageProcessor"})
    assert vit["background"] == [255, 255, 255]
    vit_rgb = image_preprocessing_from_hf(
        {"image_processor_type": "ViTImageProcessor", "do_convert_rgb": True}
    )
    assert vit_rgb["background"] is None
    chosen = image_preprocessing_from_hf(
        {"image_processor_type": "CLIPImageProcessor"}, background=(255, 255, 255)
    )
    assert chosen["background"] == [255, 255, 255]
    json.dumps(chosen)

    for bad in ((255, 255), (256, 0, 0), (-1, 0, 0), (True, 0, 0), (1.5, 0, 0), "white", 255):
        with pytest.raises(UsageError, match="background"):
            default_image_preprocessing(size=8, background=bad)
        with pytest.raises(UsageError, match="background"):
            image_preprocessing_from_hf({"image_processor_type": "ViTImageProcessor"}, background=bad)
        with pytest.raises(BundleError, match="background") as info:
            preprocess_images([synthesize_image(8, 8, 0)], {**default_image_preprocessing(size=8),
                                                           "background": bad})
        assert info.value.hint
    # A grey model may give its paper as one grey level.
    grey = {**default_image_preprocessing(size=4, channels=1), "background": [200]}
    assert preprocess_images([np.zeros((4, 4, 2), np.uint8)], grey).max() == pytest.approx(
        (200 / 255 - 0.5) / 0.5, abs=1e-6
    )
    with pytest.raises(BundleError, match="background"):
        preprocess_images([synthesize_image(8, 8, 0)], {**default_image_preprocessing(size=8),
                                                       "background": [200]})


def test_transparency_is_composited_onto_the_recorded_background():
    # Half-transparent red over a recorded colour; fully transparent pixels hide pure green.
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (255, 0, 0, 128)
    pixels[0, 1] = (0, 255, 0, 0)
    pixels[1] = (10, 20, 30, 255)
    background = (0, 64, 255)
    config = {**default_image_preprocessing(size=2, background=background), "mean": None,
              "std": None, "rescale_factor": None}
    out = preprocess_images([pixels], config)[0].transpose(1, 2, 0)
    alpha = 128
    blended = [(c * alpha + b * (255 - alpha) + 127) // 255 for c, b in zip((255, 0, 0), background,
                                                                           strict=True)]
    np.testing.assert_array_equal(out[0, 0], blended)
    np.testing.assert_array_equal(out[0, 1], background)
    np.testing.assert_array_equal(out[1, 0], (10, 20, 30))

    # Absent key (a bundle from before it existed): white paper.
    legacy = {k: v for k, v in config.items() if k != "background"}
    np.testing.assert_array_equal(preprocess_images([pixels], legacy)[0][:, 0, 1], (255, 255, 255))
    # null: alpha dropped, exactly as PIL's convert("RGB") (what HF processors do).
    dropped = preprocess_images([pixels], {**config, "background": None})[0].transpose(1, 2, 0)
    np.testing.assert_array_equal(dropped, np.asarray(Image.fromarray(pixels).convert("RGB")))
    # A grey model gets the luma of the composited colour.
    grey = {**config, "channels": 1, "mean": None, "std": None}
    luma = np.asarray(Image.fromarray(out.astype(np.uint8)).convert("L"))
    np.testing.assert_array_equal(preprocess_images([pixels], grey)[0, 0], luma)


# --- decode_image -------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_file(width: int, height: int, depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG from its header fields and an already compressed IDAT stream (any claimed size)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _zero_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of zeros; the deflate stream is tiny whatever the size."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed bits
    compressor = zlib.compressobj(9)
    block_rows = max(1, 2**20 // len(row))
    parts, remaining = [], height
    while remaining:
        count = min(block_rows, remaining)
        parts.append(compressor.compress(row * count))
        remaining -= count
    parts.append(compressor.flush())
    return png_file(width, height, 1, 0, b"".join(parts))


def _tiff_with_size(image: Image.Image, width: int, height: int) -> bytes:
    """``image`` as a little-endian TIFF whose header claims another size (data stays tiny)."""
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    assert data[:2] == b"II"
    (offset,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, offset)
    patched = 0
    for index in range(count):
        entry = offset + 2 + 12 * index
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            if kind == 3:  # SHORT
                struct.pack_into("<HHIHH", data, entry, tag, 4, 1, value & 0xFFFF, value >> 16)
            else:
                struct.pack_into("<HHII", data, entry, tag, 4, 1, value)
            patched += 1
    assert patched == 2
    return bytes(data)


@pytest.fixture
def load_spy(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The formats of every image Pillow decodes (``ImageFile.load``) during the test."""
    loads: list[str | None] = []
    real_load = ImageFile.ImageFile.load

    def spy(image: ImageFile.ImageFile):
        loads.append(image.format)
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return loads


def test_decodes_png_and_jpeg_bytes_and_paths(sample_dir: Path):
    jpeg = (sample_dir / "grace_hopper.jpg").read_bytes()
    png = (sample_dir / "logo2.png").read_bytes()
    photo = decode_image(jpeg)
    assert photo.size == (512, 600) and photo.mode == "RGB"
    with Image.open(io.BytesIO(jpeg)) as reference:
        np.testing.assert_array_equal(np.asarray(photo), np.asarray(reference))
    logo = decode_image(png)
    assert logo.size == (542, 130) and logo.mode == "RGBA"
    assert decode_image(bytearray(png)).size == (542, 130)
    assert decode_image(memoryview(png)).size == (542, 130)
    assert decode_image(sample_dir / "grace_hopper.jpg").size == (512, 600)
    assert decode_image(str(sample_dir / "logo2.png")).size == (542, 130)


def test_format_is_judged_by_content(tmp_path: Path):
    pixels = synthesize_image(20, 30, 1)
    png_named_jpg = tmp_path / "photo.jpg"
    png_named_jpg.write_bytes(_encode(Image.fromarray(pixels), "PNG"))
    np.testing.assert_array_equal(np.asarray(decode_image(png_named_jpg)), pixels)

    gif_named_png = tmp_path / "photo.png"
    gif_named_png.write_bytes(_encode(Image.fromarray(pixels), "GIF"))
    with pytest.raises(UnsupportedMediaError, match="GIF"):
        decode_image(gif_named_png, formats=("PNG", "JPEG"))
    assert decode_image(gif_named_png).size == (30, 20)  # GIF is in the default allow-list

    tiff = _encode(Image.fromarray(pixels), "TIFF")
    with pytest.raises(UnsupportedMediaError, match="TIFF") as info:
        decode_image(tiff)
    assert info.value.hint
    assert decode_image(tiff, formats=["tiff"]).size == (30, 20)
    with pytest.raises(UsageError):
        decode_image(tiff, formats=["NOTAFORMAT"])


def test_decompression_bombs_are_refused(tmp_path: Path):
    # 8000x8000 = 64 Mpx: over edgemm's 40 Mpx default, under Pillow's own limit.
    bomb = _zero_png(8000, 8000)
    assert len(bomb) < 64_000
    with pytest.raises(InputTooLargeError, match="8000x8000"):
        decode_image(bomb)
    # 20000x20000 = 400 Mpx: Pillow's DecompressionBombError becomes InputTooLargeError.
    huge = _zero_png(20000, 20000)
    with pytest.raises(InputTooLargeError):
        decode_image(huge, max_pixels=10**12)
    # 10000x10000 = 100 Mpx: Pillow only warns; the warning must still refuse the image.
    with pytest.raises(InputTooLargeError):
        decode_image(_zero_png(10000, 10000), max_pixels=10**12)
    # An ordinary image over a small cap.
    with pytest.raises(InputTooLargeError, match="limit of 100"):
        decode_image(_encode(Image.new("RGB", (20, 20)), "PNG"), max_pixels=100)
    with pytest.raises(InputTooLargeError):
        decode_image(np.zeros((20, 20, 3), np.uint8), max_pixels=100)


def test_bomb_is_refused_before_any_pixel_is_decoded(load_spy: list[str | None]):
    """The pixel cap is judged from the header: the decoder never runs on a bomb."""
    loads = load_spy
    with pytest.raises(InputTooLargeError, match="8000x8000"):
        decode_image(_zero_png(8000, 8000))
    assert loads == []
    # The spy does see the decoder run for an image within the cap.
    assert decode_image(_zero_png(64, 48)).size == (64, 48)
    assert loads and set(loads) == {"PNG"}


@pytest.mark.parametrize("side", [8000, 20000])
def test_wide_and_float_bombs_are_refused_from_the_header(side: int, load_spy: list[str | None]):
    # 8000x8000 is over edgemm's 40 Mpx cap; 20000x20000 over Pillow's own bomb limit as well.
    row = zlib.compress(bytes(1 + 8 * side))
    bombs = {
        "16-bit grey PNG": png_file(side, side, 16, 0, row),
        "16-bit RGBA PNG": png_file(side, side, 16, 6, row),
        "16-bit TIFF": _tiff_with_size(Image.fromarray(np.zeros((2, 2), np.uint16)), side, side),
        "32-bit int TIFF": _tiff_with_size(Image.fromarray(np.zeros((2, 2), np.int32)), side, side),
        "float TIFF": _tiff_with_size(Image.fromarray(np.zeros((2, 2), np.float32)), side, side),
        "CMYK TIFF": _tiff_with_size(Image.new("CMYK", (2, 2)), side, side),
    }
    for name, payload in bombs.items():
        assert len(payload) < 100_000, name
        with pytest.raises(InputTooLargeError) as info:
            decode_image(payload, formats=_ALL_FORMATS)
        assert f"{side}x{side}" in info.value.message or "too large" in info.value.message, name
        if side == 20000:  # Pillow's limit holds even when the bundle's cap is raised
            with pytest.raises(InputTooLargeError):
                decode_image(payload, formats=_ALL_FORMATS, max_pixels=10**12)
    assert load_spy == []  # refused from the header: no decoder ran
    # The caps also hold for wide images in memory and wide arrays.
    with pytest.raises(InputTooLargeError):
        decode_image(Image.new("I;16", (200, 200)), max_pixels=1000)
    with pytest.raises(InputTooLargeError):
        decode_image(np.zeros((200, 200), np.uint16), max_pixels=1000)
    # The allow-list is not widened by a mode: a TIFF is still refused unless the bundle allows it.
    with pytest.raises(UnsupportedMediaError, match="TIFF"):
        decode_image(_encode(Image.fromarray(np.zeros((4, 4), np.uint16)), "TIFF"))


def test_bomb_is_not_decoded_in_a_fresh_process(tmp_path: Path):
    """Decoding the 64 Mpx bomb would allocate 64 MB; refusing it costs no decoder run at all."""
    bomb_path = tmp_path / "bomb.png"
    bomb_path.write_bytes(_zero_png(8000, 8000))
    script = textwrap.dedent(
        f"""
        import json, resource
        from PIL import ImageFile
        from edgemm.errors import InputTooLargeError
        from edgemm.runtime.preprocess.image import decode_image
        loads = []
        real_load = ImageFile.ImageFile.load
        def spy_load(image):
            loads.append(image.format)
            return real_load(image)
        ImageFile.ImageFile.load = spy_load
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decode_image({str(bomb_path)!r})
            refused = False
        except InputTooLargeError:
            refused = True
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({{"refused": refused, "loads": loads, "grown_kb": grown}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["refused"]
    assert report["loads"] == []  # refused from the header: the decoder never ran
    assert report["grown_kb"] < 16 * 1024  # KiB on Linux


def test_corrupt_and_garbage_payloads(sample_dir: Path):
    jpeg = (sample_dir / "grace_hopper.jpg").read_bytes()
    with pytest.raises(UnsupportedMediaError, match="truncated or corrupt"):
        decode_image(jpeg[: len(jpeg) // 2])
    garbage = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(UnsupportedMediaError):
        decode_image(garbage)
    with pytest.raises(UnsupportedMediaError):
        decode_image(b"")
    with pytest.raises(UnsupportedMediaError):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


def test_byte_cap(tmp_path: Path, sample_dir: Path):
    jpeg = (sample_dir / "grace_hopper.jpg").read_bytes()
    with pytest.raises(InputTooLargeError, match="bytes"):
        decode_image(jpeg, max_bytes=len(jpeg) - 1)
    assert decode_image(jpeg, max_bytes=len(jpeg)).size == (512, 600)
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg)
    with pytest.raises(InputTooLargeError):
        decode_image(path, max_bytes=1000)
    with pytest.raises(InputPathError):
        decode_image(tmp_path / "missing.png")
    with pytest.raises(InputPathError):
        decode_image(tmp_path)


def test_exif_orientation_is_applied():
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:10, :10] = (255, 0, 0)  # red block top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display", as phone cameras write it
    jpeg = _encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)
    decoded = decode_image(jpeg)
    assert decoded.size == (20, 40)  # width, height swapped
    shown = np.asarray(decoded).astype(int)
    assert shown[:10, -10:, 0].mean() > 200  # the red block is now top-right
    assert shown[:10, :10, 0].mean() < 50


def test_animated_gif_yields_first_frame():
    frames = [Image.new("RGB", (16, 12), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    decoded = decode_image(buffer.getvalue())
    assert decoded.size == (16, 12)
    np.testing.assert_array_equal(np.asarray(decoded.convert("RGB"))[0, 0], (255, 0, 0))


def test_array_inputs():
    assert decode_image(np.zeros((4, 5), np.uint8)).mode == "L"
    assert decode_image(np.zeros((4, 5, 1), np.uint8)).mode == "L"
    assert decode_image(np.zeros((4, 5, 2), np.uint8)).mode == "LA"
    assert decode_image(np.zeros((4, 5, 3), np.uint8)).size == (5, 4)
    assert decode_image(np.zeros((4, 5, 4), np.uint8)).mode == "RGBA"
    floats = np.full((4, 5, 3), 0.5, np.float32)
    assert np.asarray(decode_image(floats))[0, 0, 0] == 128
    # 16-bit samples by their range (65535 is white), like a 16-bit PNG: value / 257, rounded.
    wide = np.array([[0, 128, 129, 257 * 100 + 128, 257 * 100 + 129, 65535]], np.uint16)
    np.testing.assert_array_equal(np.asarray(decode_image(wide)), [[0, 0, 1, 100, 101, 255]])
    mask = np.array([[True, False]])
    np.testing.assert_array_equal(np.asarray(decode_image(mask)), [[255, 0]])

    for dtype in (np.int64, np.int32, np.int16, np.uint32, np.complex64):
        with pytest.raises(InvalidInputError, match="uint8") as info:
            decode_image(np.zeros((4, 5, 3), dtype))
        assert "uint16" in info.value.message and info.value.hint
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        decode_image(np.full((4, 5, 3), 2.0))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        decode_image(np.full((4, 5, 3), np.nan))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        decode_image(np.full((4, 5, 3), -0.01, np.float16))
    for shape in ((3, 4, 5), (4, 5, 5), (2, 4, 5, 3), (7,), (0, 5, 3)):
        with pytest.raises(InvalidInputError):
            decode_image(np.zeros(shape, np.uint8))
    with pytest.raises(InvalidInputError):
        preprocess_images([np.zeros((3, 8, 8), np.uint8)], default_image_preprocessing(size=4))
    with pytest.raises(InvalidInputError):
        decode_image(12345)


def test_pil_image_source_is_checked_and_loaded(photos):
    image = photos["hopper"]
    assert decode_image(image) is image
    with pytest.raises(InputTooLargeError):
        decode_image(image, max_pixels=1000)


def test_module_stays_torch_free():
    script = (
        "import sys, edgemm.runtime.preprocess.image\n"
        "heavy = sorted(m for m in sys.modules "
        "if m.split('.')[0] in {'torch', 'torchvision', 'transformers'})\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- reduce while decoding (what edgemm serve asks for) -----------------------------------------


def _real_photos(sample_dir: Path) -> dict[str, bytes]:
    """Real JPEG photos that ship with installed packages, and the same pixels as PNG."""
    datasets = pytest.importorskip("sklearn.datasets")
    photos = {"hopper": (sample_dir / "grace_hopper.jpg").read_bytes()}
    for name in ("china.jpg", "flower.jpg"):
        photos[name.split(".")[0]] = (Path(datasets.__file__).parent / "images" / name).read_bytes()
    for name, jpeg in list(photos.items()):
        with Image.open(io.BytesIO(jpeg)) as image:
            photos[name + ".png"] = _encode(image, "PNG")
    return photos


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_reduce_while_decoding_stays_close_to_a_full_decode(sample_dir: Path, resample: str):
    # The margin kept above the resize target bounds the difference to a full decode (see
    # REDUCE_MARGIN: at most 6/255 on 17 real photos of up to 17.9 MP); checked again here on
    # the real photos the test environment has.
    reduced_any = False
    for size in (32, 64):
        section = default_image_preprocessing(size=size, mean=0.0, std=1.0, resample=resample)
        for name, data in _real_photos(sample_dir).items():
            full = decode_image(data)
            reduced = decode_image(data, reduce_to=(size, size))
            assert min(reduced.size) >= 3 * size and full.width % reduced.width == 0, name
            reduced_any |= reduced.size != full.size
            diff = np.abs(preprocess_images([reduced], section) - preprocess_images([full], section)) * 255
            assert diff.max() <= 6.5 and diff.mean() <= 0.5, (name, size, diff.max(), diff.mean())
    assert reduced_any


def test_reduction_divides_both_sides_and_spares_alpha_and_odd_sizes():
    photo = Image.fromarray(synthesize_image(900, 1200, seed=5))
    png, jpeg = _encode(photo, "PNG"), _encode(photo, "JPEG", quality=90)
    # Image.reduce by the largest factor dividing 1200 and 900 that keeps 3 x 32 on each side.
    assert decode_image(png, reduce_to=(32, 32)).size == (200, 150)
    # JPEG: DCT scaling to 1/4 (1/8 does not divide 900), no further factor divides 300 x 225.
    assert decode_image(jpeg, reduce_to=(32, 32)).size == (300, 225)
    assert decode_image(png, reduce_to=(400, 300)).size == (1200, 900)  # no room above the margin
    assert decode_image(png).size == (1200, 900)  # nothing asked, nothing reduced
    odd = _encode(photo.crop((0, 0, 1201, 899)), "PNG")  # 1201 is prime: no factor divides it
    assert decode_image(odd, reduce_to=(32, 32)).size == (1201, 899)
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    assert decode_image(_encode(rgba, "PNG"), reduce_to=(32, 32)).size == (1200, 900)


def test_reduction_is_planned_in_the_upright_orientation():
    pixels = np.zeros((800, 1200, 3), np.uint8)
    pixels[:100, :100] = (255, 0, 0)  # red block top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": upright it is 800 wide, 1200 tall
    jpeg = _encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)
    # Upright, 40 x 100 needs 120 x 300 with the margin: 1/4 scale (200 x 300), not 1/2.
    decoded = decode_image(jpeg, reduce_to=(40, 100))
    assert decoded.size == (200, 300)
    shown = np.asarray(decoded).astype(int)
    assert shown[:20, -20:, 0].mean() > 200 and shown[:20, :20, 0].mean() < 50  # turned, as without


def test_golden_and_training_sizes_decode_exactly_as_before():
    # Golden sets hold 64 x 48 images, digit-match scans are 8 x 8 scaled to the model's size:
    # all are under the margin above a 32 x 32 input, so serving decodes them pixel for pixel.
    images = [synthesize_image(48, 64, seed=70), synthesize_image(32, 32, seed=1),
              np.kron(np.arange(64, dtype=np.uint8).reshape(8, 8), np.ones((4, 4), np.uint8))]
    for pixels in images:
        for fmt in ("PNG", "JPEG", "WEBP"):
            data = _encode(Image.fromarray(pixels), fmt)
            np.testing.assert_array_equal(np.asarray(decode_image(data, reduce_to=(32, 32))),
                                          np.asarray(decode_image(data)))


def test_decode_memory_is_known_before_decoding(load_spy: list[str | None]):
    photo = Image.fromarray(synthesize_image(250, 250, seed=2)).resize((2000, 2000))
    jpeg = _encode(photo, "JPEG", quality=85)
    # The whole bitmap and one 8-bit copy (a conversion, the EXIF turn or the detached result).
    assert open_image(jpeg).working_bytes >= 2000 * 2000 * 8
    # DCT-scaled to 1/8 while decoding: the full bitmap never exists.
    assert open_image(jpeg, reduce_to=(32, 32)).working_bytes < 2 * 2**20
    # libwebp's own canvas and Pillow's copy of it: 16 bytes a pixel for a few hundred bytes.
    tiny_webp = _encode(Image.new("RGBA", (2000, 2000), (1, 2, 3, 4)), "WEBP", lossless=True)
    assert len(tiny_webp) < 1000 and open_image(tiny_webp).working_bytes >= 2000 * 2000 * 16
    grey = _encode(photo.convert("L"), "PNG")
    assert 2000 * 2000 * 2 <= open_image(grey).working_bytes < 2000 * 2000 * 3
    assert load_spy == []  # none of that decoded a pixel

    pending = open_image(grey, reduce_to=(32, 32))
    assert pending.format == "PNG" and pending.decode().size == (100, 100)
    with pytest.raises(RuntimeError):
        pending.decode()
    with pytest.raises(InputTooLargeError, match="8000x8000"):
        open_image(_zero_png(8000, 8000), reduce_to=(32, 32))
    with pytest.raises(UsageError):
        open_image(grey, reduce_to=(0, 32))
