"""The serving flow every image classifier shares: photo upload -> class probabilities and a Grad-CAM heat map.

decode the upload (with the firewall's checks) -> the task's preprocessing -> forward -> softmax probabilities
-> Grad-CAM of the task's evidence scalar -> the task's answer with the heat map drawn over the model's input.
A task's predictor subclasses :class:`ImageClassifier` and supplies only what differs: ``preprocess`` (decoded
image to model input), ``evidence`` (which scalar of the output the heat map explains), ``warmup_input`` and
``answer`` (the JSON's shape: label names, an "unknown" threshold). Imports no training code.
"""

from __future__ import annotations

import base64
from abc import abstractmethod
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from mlops.inference.base import Predictor
from mlops.inference.gradcam import grad_cam
from mlops.inference.images import IMAGE_TYPES, decode_image, heatmap_overlay_png
from mlops.inference.model_files import ModelRegistry, rebuild


class ImageClassifier(Predictor):
    """A CNN with a ``cam_layer`` over one grayscale image in [0, 1], answering class probabilities."""

    accepted_content_types = IMAGE_TYPES

    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]):
        self.model = model.eval()

    @abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The model's input (H, W), float32 in [0, 1], of one decoded RGB image."""

    @abstractmethod
    def evidence(self, logits: torch.Tensor) -> torch.Tensor:
        """One scalar per image (from the logits (N, classes)) whose Grad-CAM the heat map shows."""

    @abstractmethod
    def answer(self, probs: np.ndarray, heatmap_png: str) -> dict[str, Any]:
        """The JSON answer for one image's probabilities; ``heatmap_png`` is the base64 PNG of the overlay."""

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for preprocessed inputs (N, 1, H, W) in [0, 1]."""
        x = torch.as_tensor(np.asarray(batch, dtype=np.float32))
        with torch.no_grad():
            return self.model(x).softmax(dim=1).numpy()

    def explain(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (classes,) and the Grad-CAM map (H, W) of the evidence, for one model input."""
        x = torch.as_tensor(gray[None, None])
        heat = grad_cam(self.model, x, self.evidence, self.model.cam_layer)[0].numpy()
        return self.predict_array(x.numpy())[0], heat

    def predict_upload(self, data: bytes, content_type: str) -> dict[str, Any]:
        """The answer and heat map of one PNG/JPEG upload; BadInput (4xx) for bad files."""
        image = decode_image(data, max_pixels=self.max_pixels)
        gray = self.preprocess(image)
        probs, heat = self.explain(gray)
        return self.answer(probs, base64.b64encode(heatmap_overlay_png(gray, heat)).decode())


Classifier = TypeVar("Classifier", bound=ImageClassifier)


def load_classifier(
    predictor: type[Classifier], models: ModelRegistry, weights_path: Path, spec: dict[str, Any]
) -> Classifier:
    """Rebuild ``predictor`` from a state_dict (read with ``weights_only=True``) and its JSON spec."""
    return predictor(rebuild(models, weights_path, spec), spec)
