"""Image preprocessing for the torch-free edge runtime, one module per concern.

* :mod:`~edgemm.runtime.preprocess.image.render` — images as a person sees them: every PIL mode
  and bit depth to 8 bits by its range, transparency composited onto the bundle's background;
* :mod:`~edgemm.runtime.preprocess.image.decode` — safe decoding of untrusted bytes, files and
  arrays (format allow-list judged by content, byte cap, pixel cap from the header, EXIF
  orientation);
* :mod:`~edgemm.runtime.preprocess.image.transforms` — render, resize / crop / rescale /
  normalise into the model's ``[B, C, H, W]`` input, following the manifest;
* :mod:`~edgemm.runtime.preprocess.image.config` — the manifest's image section, translated from
  a Hugging Face image-processor config or built from plain parameters.

Dependencies point one way: ``config → transforms → decode → render``. The names callers use
are re-exported here.
"""

from __future__ import annotations

from edgemm.runtime.preprocess.image.config import (
    default_image_preprocessing,
    image_preprocessing_from_hf,
)
from edgemm.runtime.preprocess.image.decode import (
    DEFAULT_FORMATS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageSource,
    decode_image,
)
from edgemm.runtime.preprocess.image.render import WHITE, render
from edgemm.runtime.preprocess.image.transforms import (
    RESAMPLE_FILTERS,
    image_feed,
    preprocess_images,
)

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "RESAMPLE_FILTERS",
    "WHITE",
    "ImageSource",
    "decode_image",
    "default_image_preprocessing",
    "image_feed",
    "image_preprocessing_from_hf",
    "preprocess_images",
    "render",
]
