"""Serving: an image upload -> which side holds the spot, probabilities, Grad-CAM heat map (the shared image
classifier flow of ``mlops.inference.classify``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mlops.inference.classify import ImageClassifier, load_classifier
from mlops_spots.layout import SIDES
from mlops_spots.model import MODELS
from mlops_spots.preprocess import image_input


class SpotsPredictor(ImageClassifier):
    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]):
        super().__init__(model, spec)
        self.size = int(spec["model_kwargs"]["size"])

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return image_input(image, self.size)

    def evidence(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.max(dim=1).values

    def warmup_input(self) -> np.ndarray:
        return np.zeros((1, 1, self.size, self.size), dtype=np.float32)

    def answer(self, probs: np.ndarray, heatmap_png: str) -> dict[str, Any]:
        return {
            "side": SIDES[int(np.argmax(probs))],
            "probabilities": {side: round(float(p), 5) for side, p in zip(SIDES, probs, strict=True)},
            "heatmap_png": heatmap_png,
        }


def load(weights_path: Path, spec: dict[str, Any]) -> SpotsPredictor:
    return load_classifier(SpotsPredictor, MODELS, weights_path, spec)
