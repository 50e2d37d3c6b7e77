"""Photometric and geometric augmentation of 2-D images, deterministic from a seed."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def augment_image(
    image: np.ndarray,
    rng: np.random.Generator,
    max_rotation_deg: float,
    max_shift_frac: float,
    brightness: tuple[float, float],
) -> np.ndarray:
    """Rotate, shift and rescale brightness of a uint8 H x W image; returns uint8 of the same shape."""
    h, w = image.shape
    angle = rng.uniform(-max_rotation_deg, max_rotation_deg)
    shift = rng.uniform(-max_shift_frac, max_shift_frac, size=2) * (h, w)
    out = ndimage.rotate(image.astype(np.float32), angle, reshape=False, order=1, mode="nearest")
    out = ndimage.shift(out, shift, order=1, mode="nearest")
    out = out * rng.uniform(*brightness)
    return np.clip(out, 0, 255).astype(np.uint8)
