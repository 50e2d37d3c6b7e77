"""Serving side of fracture: SEM image upload -> failure mode (or "unknown"), probabilities, Grad-CAM."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mlops.inference.base import Predictor
from mlops.inference.gradcam import grad_cam
from mlops.inference.images import IMAGE_TYPES, decode_image, heatmap_overlay_png, to_gray_input
from mlops.tasks.fracture.model import MODELS, predicted_class_logit
from mlops.tasks.fracture.simulate import CLASSES

UNKNOWN = "unknown"


def square_gray_input(img: Image.Image, size: int) -> np.ndarray:
    """The model's preprocessing: central square crop, grayscale, resize to ``size``, [0, 1] float32.

    Cropping (rather than squeezing) keeps textures undistorted: a stretched striation spacing or
    dimple shape would be a different texture.
    """
    side = min(img.width, img.height)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return to_gray_input(img.crop((left, top, left + side, top + side)), size, size)


def decide(probs: np.ndarray, threshold: float) -> str:
    """The answer for one probability vector: the most likely class, or "unknown" below ``threshold``."""
    best = int(np.argmax(probs))
    return CLASSES[best] if float(probs[best]) >= threshold else UNKNOWN


class FracturePredictor(Predictor):
    accepted_content_types = IMAGE_TYPES

    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]):
        self.model = model.eval()
        self.size = int(spec["extra"]["input_size"])
        self.threshold = float(spec["extra"]["unknown_threshold"])

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 4) for preprocessed inputs (N, 1, size, size) in [0, 1]."""
        x = torch.as_tensor(np.asarray(batch, dtype=np.float32))
        with torch.no_grad():
            return self.model(x).softmax(dim=1).numpy()

    def warmup_input(self) -> np.ndarray:
        # Noise rather than a constant: the model standardises each image, a flat one is degenerate.
        return np.random.default_rng(0).uniform(0, 1, (1, 1, self.size, self.size)).astype(np.float32)

    def explain(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (4,) and the Grad-CAM map (H, W) of the evidence for the most likely class."""
        x = torch.as_tensor(gray[None, None])
        heat = grad_cam(self.model, x, predicted_class_logit, self.model.cam_layer)[0].numpy()
        return self.predict_array(x.numpy())[0], heat

    def predict_upload(self, data: bytes, content_type: str) -> dict[str, Any]:
        """Failure mode, probabilities and heat map of one PNG/JPEG upload; BadInput (4xx) for bad files."""
        image = decode_image(data, max_pixels=self.max_pixels)
        gray = square_gray_input(image, self.size)
        probs, heat = self.explain(gray)
        best = int(np.argmax(probs))
        answer = decide(probs, self.threshold)
        note = "Grad-CAM of the most likely class: bright areas are the evidence the model used"
        if answer == UNKNOWN:
            note = (
                f"confidence {float(probs[best]):.2f} is below {self.threshold:.2f}: the image may not be an SEM "
                "fractograph of a known failure mode; the heat map shows the evidence for the most likely class"
            )
        return {
            "class": answer,
            "most_likely": CLASSES[best],
            "confidence": round(float(probs[best]), 5),
            "unknown_threshold": self.threshold,
            "probabilities": {name: round(float(p), 5) for name, p in zip(CLASSES, probs, strict=True)},
            "heatmap_png": base64.b64encode(heatmap_overlay_png(gray, heat)).decode(),
            "explanation": note,
        }


def load(weights_path: Path, spec: dict[str, Any]) -> FracturePredictor:
    """Rebuild the predictor from a state_dict (read with ``weights_only=True``) and its JSON spec."""
    model = MODELS.build(spec["model"], **spec["model_kwargs"])
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return FracturePredictor(model, spec)
