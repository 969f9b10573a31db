"""Synthetic raw samples for the build side: natural-looking images and speech-like audio.

Parity checks, golden sets, calibration probes and tests need raw inputs that look like what a
kiosk receives (photos, voiced speech) rather than random tensors, and that are the same on every
machine for a given seed. These generators make them; the runtime never needs them, so they live
here on the build side. Only numpy is used.
"""

from __future__ import annotations

import numbers

import numpy as np

from edgemm.errors import InvalidInputError
from edgemm.runtime.preprocess.audio.limits import check_sample_rate

__all__ = ["synthesize_image", "synthesize_speechlike"]


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


def synthesize_speechlike(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A deterministic speech-like signal for parity checks and tests.

    A gliding fundamental with decaying harmonics, a syllable-rate (3–6 Hz) amplitude envelope
    and a little noise, so that spectra, energies and envelopes look like voiced speech.

    Args:
        seconds: Duration (> 0, at most one hour).
        rate: Sample rate in Hz.
        seed: Seed of the random generator; the same arguments always give the same samples.

    Returns:
        float32 1-D array of ``round(seconds * rate)`` samples with peak amplitude ≤ 0.9.

    Raises:
        InvalidInputError: Non-positive or excessive duration, or an invalid rate.
    """
    rate = check_sample_rate(rate, "sample rate")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, numbers.Real)
        or not 0 < seconds <= 3600
    ):
        raise InvalidInputError(
            f"seconds must be in (0, 3600], got {seconds!r}.", hint="Pass a positive duration."
        )
    n = max(1, round(seconds * rate))
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64) / rate
    f0 = rng.uniform(100.0, 220.0)
    glide = f0 * (
        1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 2 * np.pi))
    )
    phase = 2 * np.pi * np.cumsum(glide) / rate
    nyquist = rate / 2
    voiced = np.zeros(n)
    for k in range(1, 9):
        if k * f0 * 1.1 >= nyquist:
            break
        voiced += rng.uniform(0.5, 1.0) / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    syllable = rng.uniform(3.0, 6.0)
    envelope = np.clip(np.sin(np.pi * syllable * t + rng.uniform(0, np.pi)), 0.0, None) ** 1.5
    signal = voiced * (0.1 + 0.9 * envelope) + 0.02 * rng.standard_normal(n)
    peak = float(np.abs(signal).max())
    if peak > 0:
        signal *= 0.8 / peak
    return signal.astype(np.float32)
