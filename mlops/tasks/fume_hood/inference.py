"""Serving side of fume_hood: photo upload -> rating, probabilities and Grad-CAM heat map.

The flow is the shared image classifier's (``mlops.inference.classify``); this module says what a rating is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mlops.inference.classify import ImageClassifier, load_classifier
from mlops.tasks.fume_hood.model import MODELS, lowering_evidence
from mlops.tasks.fume_hood.preprocess import photo_input


class FumeHoodPredictor(ImageClassifier):
    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]):
        super().__init__(model, spec)
        self.width = int(spec["extra"]["input_width"])
        self.height = int(spec["extra"]["input_height"])

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return photo_input(image, self.width, self.height)

    def evidence(self, logits: torch.Tensor) -> torch.Tensor:
        """What lowered the rating: minus the expected rating."""
        return lowering_evidence(logits)

    def warmup_input(self) -> np.ndarray:
        return np.full((1, 1, self.height, self.width), 0.5, dtype=np.float32)

    def answer(self, probs: np.ndarray, heatmap_png: str) -> dict[str, Any]:
        return {
            "rating": int(np.argmax(probs)) + 1,
            "probabilities": {str(level + 1): round(float(p), 5) for level, p in enumerate(probs)},
            "heatmap_png": heatmap_png,
            "explanation": "Grad-CAM of minus the expected rating: bright areas lowered the rating",
        }


def load(weights_path: Path, spec: dict[str, Any]) -> FumeHoodPredictor:
    return load_classifier(FumeHoodPredictor, MODELS, weights_path, spec)
