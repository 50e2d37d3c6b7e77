"""fume_hood's one preprocessing, shared by prepare (training) and the predictor (serving).

A photo becomes grayscale, resized (bilinear) to the model's input size (params ``input``: 4:3 like the photos)
and scaled to [0, 1]. Prepared data stores it as uint8; the dataset divides by 255 again.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mlops.inference.images import to_gray_input


def photo_input(img: Image.Image, width: int, height: int) -> np.ndarray:
    """The model's input (height, width), float32 in [0, 1], of one photo."""
    return to_gray_input(img, width, height)


def stored(x: np.ndarray) -> np.ndarray:
    """A [0, 1] model input as the uint8 image prepared data holds."""
    return np.rint(x * 255).astype(np.uint8)


def mask_input(mask: Image.Image, width: int, height: int) -> np.ndarray:
    """A cause mask on the model input's grid (nearest neighbour, so it stays binary)."""
    return np.asarray(mask.convert("L").resize((width, height), Image.Resampling.NEAREST)) > 0
