"""fracture's one preprocessing, shared by prepare (training), the out-of-domain probe (evaluation) and the
predictor (serving): an SEM image becomes a central square crop, grayscale, resized to ``input.size``, in [0, 1].

Prepared data stores it as uint8; the dataset divides by 255 again.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mlops.inference.images import to_gray_input


def square_gray_input(img: Image.Image, size: int) -> np.ndarray:
    """The model's input (size, size), float32 in [0, 1], of one image.

    Cropping (rather than squeezing) keeps textures undistorted: a stretched striation spacing or
    dimple shape would be a different texture.
    """
    side = min(img.width, img.height)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return to_gray_input(img.crop((left, top, left + side, top + side)), size, size)


def stored(x: np.ndarray) -> np.ndarray:
    """A [0, 1] model input as the uint8 image prepared data holds."""
    return np.rint(x * 255).astype(np.uint8)
