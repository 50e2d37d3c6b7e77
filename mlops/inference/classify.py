"""The serving flow every image classifier shares: photo upload -> class probabilities and a Grad-CAM heat map.

decode the upload (with the firewall's checks) -> the task's preprocessing -> one forward pass giving the logits and
the Grad-CAM of the task's evidence scalar (``gradcam.explain_forward``: no hooks, no second forward) -> softmax
probabilities -> the task's answer with the heat map drawn over the model's input (at its resolution). Without the
explanation (``explain=False``) it is one no-grad forward.
A task's predictor subclasses :class:`ImageClassifier` and supplies only what differs: ``preprocess`` (decoded
image to model input), ``evidence`` (which scalar of the output the heat map explains), ``warmup_input`` and
``answer`` (the JSON's shape: label names, an "unknown" threshold). Imports no training code.
"""

from __future__ import annotations

import base64
import io
from abc import abstractmethod
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from mlops.inference import images
from mlops.inference.base import Predictor
from mlops.inference.gradcam import explain_forward, grad_cam, splits_at_cam
from mlops.inference.images import IMAGE_TYPES, decode_image, heatmap_overlay_png
from mlops.inference.model_files import ModelRegistry, rebuild


class ImageClassifier(Predictor):
    """A CNN with a ``cam_layer`` over one grayscale image in [0, 1], answering class probabilities."""

    accepted_content_types = IMAGE_TYPES
    skips_explanation = True

    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]):
        self.model = model.eval()
        # A model that splits at its cam layer is explained without hooks: requests may share it across threads.
        self.parallel_safe = splits_at_cam(self.model)

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

    def model_input(self, data: bytes) -> np.ndarray:
        """The model input (H, W) of one PNG/JPEG upload; BadInput (4xx) for a bad file."""
        return self.preprocess(decode_image(data, max_pixels=self.max_pixels))

    def compute(self, grays: list[np.ndarray], explain: bool = True) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Probabilities (classes,) and, when ``explain``, the Grad-CAM map (H, W) of the evidence, for model inputs
        of one shape computed as one batch: one forward pass (no-grad without the map). The service's micro-batches
        (mlops/serving/batching.py) and a single upload both come here; a batch equals its inputs one by one up to
        float rounding."""
        x = np.stack(grays)[:, None]
        if not explain:
            return [(probs, None) for probs in self.predict_array(x)]
        if not self.parallel_safe:  # a model without the features/head split: hooks, then a forward of its own
            heat = grad_cam(self.model, torch.as_tensor(x), self.evidence, self.model.cam_layer).numpy()
            return list(zip(self.predict_array(x), heat, strict=True))
        logits, heat = explain_forward(self.model, torch.as_tensor(x), self.evidence)
        return list(zip(logits.softmax(dim=1).numpy(), heat.numpy(), strict=True))

    def explain(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (classes,) and the Grad-CAM map (H, W) of the evidence, for one model input."""
        probs, heat = self.compute([gray])[0]
        assert heat is not None
        return probs, heat

    def finish(self, gray: np.ndarray, probs: np.ndarray, heat: np.ndarray | None) -> dict[str, Any]:
        """The answer for one model input: with the heat map drawn over it, or (``heat`` None) without the
        ``heatmap_png`` field."""
        if heat is None:
            answer = self.answer(probs, "")
            answer.pop("heatmap_png", None)
            return answer
        return self.answer(probs, base64.b64encode(heatmap_overlay_png(gray, heat)).decode())

    def predict_upload(self, data: bytes, content_type: str, explain: bool = True) -> dict[str, Any]:
        """The answer and heat map of one PNG/JPEG upload; BadInput (4xx) for bad files. ``explain=False``: the
        answer alone (one no-grad forward, no Grad-CAM, no PNG), without the ``heatmap_png`` field."""
        gray = self.model_input(data)
        return self.finish(gray, *self.compute([gray], explain)[0])

    def warm_up(self) -> None:
        """The whole upload path once, at model load: the decoders, autograd, the PNG encoder and the colour
        table are loaded now, so the first request pays for none of it."""
        super().warm_up()
        images.warm_up()
        pixels = (np.clip(self.warmup_input()[0, 0], 0, 1) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).convert("RGB").save(buf, format="PNG")
        self.predict_upload(buf.getvalue(), "image/png")
        self.predict_upload(buf.getvalue(), "image/png", explain=False)


Classifier = TypeVar("Classifier", bound=ImageClassifier)


def load_classifier(
    predictor: type[Classifier], models: ModelRegistry, weights_path: Path, spec: dict[str, Any]
) -> Classifier:
    """Rebuild ``predictor`` from a state_dict (read with ``weights_only=True``) and its JSON spec."""
    return predictor(rebuild(models, weights_path, spec), spec)
