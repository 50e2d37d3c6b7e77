"""Serving side of fracture: SEM image upload -> failure mode (or "unknown"), probabilities, Grad-CAM.

The flow is the shared image classifier's (``mlops.inference.classify``); this module says what a failure mode
answer looks like (when it is "unknown": ``model.decide``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mlops.inference.classify import ImageClassifier, load_classifier
from mlops.tasks.fracture.layout import CLASSES
from mlops.tasks.fracture.model import MODELS, UNKNOWN, decide, predicted_class_logit
from mlops.tasks.fracture.preprocess import square_gray_input


class FracturePredictor(ImageClassifier):
    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]):
        super().__init__(model, spec)
        self.size = int(spec["extra"]["input_size"])
        if "unknown_threshold" not in spec["extra"]:
            raise ValueError(
                "this fracture model's spec has no unknown_threshold: it is calibrated on validation when the train "
                "stage saves the model (`mlops train`); a model saved without calibration cannot be served"
            )
        self.threshold = float(spec["extra"]["unknown_threshold"])

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return square_gray_input(image, self.size)

    def evidence(self, logits: torch.Tensor) -> torch.Tensor:
        """The evidence for the most likely failure mode."""
        return predicted_class_logit(logits)

    def warmup_input(self) -> np.ndarray:
        # Noise rather than a constant: the model standardises each image, a flat one is degenerate.
        return np.random.default_rng(0).uniform(0, 1, (1, 1, self.size, self.size)).astype(np.float32)

    def answer(self, probs: np.ndarray, heatmap_png: str) -> dict[str, Any]:
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
            "heatmap_png": heatmap_png,
            "explanation": note,
        }


def load(weights_path: Path, spec: dict[str, Any]) -> FracturePredictor:
    """Rebuild the predictor from a state_dict (read with ``weights_only=True``) and its JSON spec."""
    return load_classifier(FracturePredictor, MODELS, weights_path, spec)
