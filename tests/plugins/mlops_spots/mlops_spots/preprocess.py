"""A decoded image to the model's input, shared by prepare (training) and the predictor (serving)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mlops.inference.images import to_gray_input


def image_input(image: Image.Image, size: int) -> np.ndarray:
    """(size, size) float32 in [0, 1]."""
    return to_gray_input(image, size, size)
