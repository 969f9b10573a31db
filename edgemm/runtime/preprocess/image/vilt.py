"""ViLT's image geometry, torch-free: the divisor-aligned resize and the batch padding with a pixel mask.

transformers' ``ViltImageProcessor`` gives every picture its own size: the shorter side goes to
``size["shortest_edge"]``, the longer side is capped at ``int(1333 / 800 * shortest_edge)``, both
are rounded to the nearest pixel and then *down* to a multiple of ``size_divisor``; after
rescale and normalise, a batch is zero-padded at the bottom and right to its largest height and
width, and ``pixel_mask`` marks the real pixels (1) against the padding (0). The model ignores
the padded patches, so an image's answer does not depend on what shares its batch.

:func:`divisor_resize_size` is the resize rule (``get_resize_output_image_size`` of
``transformers/models/vilt/image_processing_vilt.py``, same float operations);
:func:`pad_to_batch_max` is its ``pad`` with ``return_pixel_mask=True``. The transforms module
(:mod:`edgemm.runtime.preprocess.image.transforms`) runs them when a manifest's image section
asks for ``resize.mode: shortest_edge_divisor`` and ``pad_to_batch_max: true``.

Only numpy is used here; this module runs on the edge device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgemm.errors import InvalidInputError

__all__ = ["divisor_resize_size", "longest_edge_for", "pad_to_batch_max"]

# ViLT's processor caps the longer side at this ratio of the shorter one (its DETR-style 800 / 1333).
_LONG_OVER_SHORT = 1333 / 800


def longest_edge_for(shortest_edge: int) -> int:
    """The longer-side cap ``ViltImageProcessor.resize`` derives from ``shortest_edge``."""
    return int(_LONG_OVER_SHORT * shortest_edge)


def divisor_resize_size(height: int, width: int, shortest_edge: int, longest_edge: int,
                        size_divisor: int) -> tuple[int, int]:
    """The ``(height, width)`` ViLT resizes a ``height`` x ``width`` picture to.

    The shorter side becomes ``shortest_edge`` keeping the aspect ratio; when the longer side
    then exceeds ``longest_edge`` both shrink until it fits; each side is rounded half up and
    floored to a multiple of ``size_divisor`` — exactly transformers' float arithmetic.

    Raises:
        InvalidInputError: The picture is so elongated that its shorter side would round to
            zero pixels (transformers itself fails on it).
    """
    scale = shortest_edge / min(height, width)
    if height < width:
        new_height, new_width = float(shortest_edge), scale * width
    else:
        new_height, new_width = scale * height, float(shortest_edge)
    if max(new_height, new_width) > longest_edge:
        scale = longest_edge / max(new_height, new_width)
        new_height, new_width = scale * new_height, scale * new_width
    out_height = int(new_height + 0.5) // size_divisor * size_divisor
    out_width = int(new_width + 0.5) // size_divisor * size_divisor
    if out_height == 0 or out_width == 0:
        raise InvalidInputError(
            f"A {width}x{height} picture is too elongated for this model: resized with its longer side "
            f"capped at {longest_edge} px, its shorter side falls below {size_divisor} px.",
            hint=f"Crop the picture to an aspect ratio of at most about "
                 f"{longest_edge // size_divisor}:1 before sending it.",
        )
    return out_height, out_width


def pad_to_batch_max(pictures: Sequence[np.ndarray],
                     at_least: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad ``[C, H, W]`` pictures at the bottom and right to the batch's largest H and W.

    Args:
        pictures: Normalised float32 ``[C, h_i, w_i]`` arrays (one channel count).
        at_least: Pad to at least this ``(height, width)`` (calibration batches of one shape:
            more padding only adds masked-out pixels, which the model ignores).

    Returns:
        ``(pixels [B, C, H, W] float32, pixel_mask [B, H, W] int64)``: the mask is 1 over each
        picture's own pixels and 0 over its padding, as transformers' ``make_pixel_mask``.
    """
    height = max(max(p.shape[1] for p in pictures), at_least[0] if at_least else 0)
    width = max(max(p.shape[2] for p in pictures), at_least[1] if at_least else 0)
    channels = pictures[0].shape[0]
    pixels = np.zeros((len(pictures), channels, height, width), dtype=np.float32)
    mask = np.zeros((len(pictures), height, width), dtype=np.int64)
    for row, picture in enumerate(pictures):
        _, h, w = picture.shape
        pixels[row, :, :h, :w] = picture
        mask[row, :h, :w] = 1
    return pixels, mask
