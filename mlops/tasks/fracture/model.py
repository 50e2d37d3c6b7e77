"""The failure-mode CNN in plain torch, registered by name; the sweep chooses its width and depth.

The network standardises each image itself (zero mean, unit std), so the global gray level and
contrast (SEM brightness/contrast knobs, different per microscope) cannot be used as a cue. It exposes
``cam_layer`` (the last convolutional block) for Grad-CAM. The answer rule (the most likely failure mode, or
"unknown" below the threshold) is here too: serving answers with it and evaluation reports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlops.data.arrays import read_meta
from mlops.tasks.base import ModelRegistry, ModelSpec
from mlops.tasks.fracture.layout import CLASSES

N_CLASSES = len(CLASSES)
MODELS = ModelRegistry("fracture")
#: the answer when the model is not confident enough in any failure mode
UNKNOWN = "unknown"


class Standardize(nn.Module):
    """Per-image zero mean / unit std (no parameters): invariance to brightness and contrast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return (x - mean) / std


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        # GroupNorm, not BatchNorm: training batches mix fractographs with outlier-exposure images, and
        # running batch statistics of that mixture made eval-mode predictions swing between epochs.
        nn.GroupNorm(min(4, c_out), c_out),
        nn.ReLU(inplace=True),
    )


class FractureCNN(nn.Module):
    """``depth`` conv blocks (pooling between them), global average pooling and a linear class head.

    Channels double per block up to ``4 * width``. Textures need context (a grain or facet spans tens of
    pixels), hence the pooling between blocks: with depth 4 the receptive field is ~31 input pixels.
    """

    def __init__(self, width: int = 16, depth: int = 4, dropout: float = 0.2, n_classes: int = N_CLASSES):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        channels = [width * 2 ** min(i, 2) for i in range(depth)]
        layers: list[nn.Module] = [Standardize()]
        c_in = 1
        for c in channels[:-1]:
            layers += [_block(c_in, c), nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.cam_layer = _block(c_in, channels[-1])
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels[-1], n_classes)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The input up to ``cam_layer``'s output: Grad-CAM runs the model as ``head(features(x))``, without hooks."""
        return self.cam_layer(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@MODELS.register("cnn")
def cnn(width: int = 16, depth: int = 4, dropout: float = 0.2) -> nn.Module:
    """The registered failure-mode classifier."""
    return FractureCNN(width=width, depth=depth, dropout=dropout)


def decide(probs: np.ndarray, threshold: float) -> str:
    """The answer for one probability vector: the most likely class, or "unknown" below ``threshold``."""
    best = int(np.argmax(probs))
    return CLASSES[best] if float(probs[best]) >= threshold else UNKNOWN


def predicted_class_logit(logits: torch.Tensor) -> torch.Tensor:
    """Scalar per image whose Grad-CAM shows the evidence for the predicted failure mode."""
    return logits.gather(1, logits.argmax(dim=1, keepdim=True))[:, 0]


def build(hparams: dict[str, Any], prepared_dir: Path, inference_module: str) -> tuple[nn.Module, ModelSpec]:
    """The model ``hparams['model']`` names and its spec.

    The served "unknown" threshold is not known yet: the train stage calibrates it on validation after training
    (``FractureTask.calibrate``) and it then travels with the weights in ``extra``.
    """
    kwargs = {
        "width": int(hparams["width"]),
        "depth": int(hparams["depth"]),
        "dropout": float(hparams["dropout"]),
    }
    meta = read_meta(prepared_dir)
    spec = ModelSpec(
        task="fracture",
        model=str(hparams["model"]),
        model_kwargs=kwargs,
        inference_module=inference_module,
        extra={
            "input_size": meta["input_size"],
            "classes": list(CLASSES),
        },
    )
    return MODELS.build(spec.model, **kwargs), spec
