"""From a decoded frame stack to the model's input: the same steps in training (prepare, dataset) and serving.

prepare keeps each recording's ``centre_crop`` (training copies crop at a shifted start); ``dataset`` and the
served predictor turn the cropped stack into the two input channels with ``to_channels``.
"""

from __future__ import annotations

import numpy as np


def centre_crop(frames: np.ndarray, n_frames: int, start: int | None = None) -> np.ndarray:
    """``n_frames`` consecutive frames of a (F, H, W) stack: the middle ones, or from ``start``."""
    if frames.shape[0] < n_frames:
        raise ValueError(f"need at least {n_frames} frames, got {frames.shape[0]}")
    if start is None:
        start = (frames.shape[0] - n_frames) // 2
    return frames[start : start + n_frames]


def to_channels(frames: np.ndarray) -> np.ndarray:
    """(..., T, H, W) intensities -> (..., 2, T, H, W) float32 model input.

    Channel 0 is the stack standardised per sequence (camera gain and offset drop out); channel 1 is the
    temporal fluctuation (each pixel minus its mean over time), standardised on its own: static background
    and pipes vanish from it and the flickering plume remains, as in the study's fluctuation images.
    """
    f = np.asarray(frames, dtype=np.float32)
    axes = (-3, -2, -1)
    level = (f - f.mean(axis=axes, keepdims=True)) / (f.std(axis=axes, keepdims=True) + 1e-6)
    moving = f - f.mean(axis=-3, keepdims=True)
    moving = moving / (moving.std(axis=axes, keepdims=True) + 1e-6)
    return np.stack([level, moving], axis=-4).astype(np.float32)
