"""Serving side of fume_hood: photo upload -> rating, probabilities and Grad-CAM heat map."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlops.inference.base import Predictor
from mlops.inference.gradcam import grad_cam
from mlops.inference.images import IMAGE_TYPES, decode_image, heatmap_overlay_png, to_gray_input
from mlops.tasks.fume_hood.model import MODELS, lowering_evidence


class FumeHoodPredictor(Predictor):
    accepted_content_types = IMAGE_TYPES

    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]):
        self.model = model.eval()
        self.width = int(spec["extra"]["input_width"])
        self.height = int(spec["extra"]["input_height"])

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(batch, dtype=np.float32))
        with torch.no_grad():
            return self.model(x).softmax(dim=1).numpy()

    def warmup_input(self) -> np.ndarray:
        return np.full((1, 1, self.height, self.width), 0.5, dtype=np.float32)

    def explain(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (5,) and the Grad-CAM map (H, W) of what lowered the rating."""
        x = torch.as_tensor(gray[None, None])
        heat = grad_cam(self.model, x, lowering_evidence, self.model.cam_layer)[0].numpy()
        return self.predict_array(x.numpy())[0], heat

    def predict_upload(self, data: bytes, content_type: str) -> dict[str, Any]:
        image = decode_image(data, max_pixels=self.max_pixels)
        gray = to_gray_input(image, self.width, self.height)
        probs, heat = self.explain(gray)
        return {
            "rating": int(np.argmax(probs)) + 1,
            "probabilities": {str(level + 1): round(float(p), 5) for level, p in enumerate(probs)},
            "heatmap_png": base64.b64encode(heatmap_overlay_png(gray, heat)).decode(),
            "explanation": "Grad-CAM of minus the expected rating: bright areas lowered the rating",
        }


def load(weights_path: Path, spec: dict[str, Any]) -> FumeHoodPredictor:
    model = MODELS.build(spec["model"], **spec["model_kwargs"])
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return FumeHoodPredictor(model, spec)
