"""The study's CNNs in plain torch: a custom CNN and an AlexNet-style network, registered by name.

Both expose ``cam_layer`` (the last convolutional block) for Grad-CAM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlops.data.arrays import read_meta
from mlops.tasks.base import ModelRegistry, ModelSpec
from mlops.tasks.fume_hood.layout import N_LEVELS

MODELS = ModelRegistry("fume_hood")


def _block(c_in: int, c_out: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CustomCNN(nn.Module):
    """Three conv blocks with pooling, global average pooling and a linear rating head."""

    def __init__(self, width: int = 16, dropout: float = 0.2, n_classes: int = N_LEVELS):
        super().__init__()
        self.body = nn.Sequential(
            _block(1, width),
            nn.MaxPool2d(2),
            _block(width, 2 * width),
            nn.MaxPool2d(2),
        )
        self.cam_layer = _block(2 * width, 4 * width)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width, n_classes)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The input up to ``cam_layer``'s output: Grad-CAM runs the model as ``head(features(x))``, without hooks."""
        return self.cam_layer(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class AlexNetStyle(nn.Module):
    """AlexNet's shape (5 convs, 3 pools, two dense layers) scaled to small grayscale inputs."""

    def __init__(self, width: int = 16, dropout: float = 0.3, n_classes: int = N_LEVELS):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 3 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(3 * width, 3 * width, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.cam_layer = nn.Sequential(nn.Conv2d(3 * width, 2 * width, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d((3, 4)),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * width * 12, 8 * width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(8 * width, n_classes),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The input up to ``cam_layer``'s output: Grad-CAM runs the model as ``head(features(x))``, without hooks."""
        return self.cam_layer(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@MODELS.register("custom_cnn")
def custom_cnn(width: int = 16, dropout: float = 0.2) -> nn.Module:
    return CustomCNN(width=width, dropout=dropout)


@MODELS.register("alexnet")
def alexnet(width: int = 16, dropout: float = 0.3) -> nn.Module:
    return AlexNetStyle(width=width, dropout=dropout)


def lowering_evidence(logits: torch.Tensor) -> torch.Tensor:
    """Scalar per photo whose Grad-CAM shows what lowered the rating: minus the expected rating."""
    levels = torch.arange(1, logits.shape[1] + 1, dtype=logits.dtype, device=logits.device)
    return -(logits.softmax(dim=1) * levels).sum(dim=1)


def build(hparams: dict[str, Any], prepared_dir: Path, inference_module: str) -> tuple[nn.Module, ModelSpec]:
    """The model ``hparams['model']`` names and its spec (the input size comes from the prepared data)."""
    kwargs = {"width": int(hparams["width"]), "dropout": float(hparams["dropout"])}
    meta = read_meta(prepared_dir)
    spec = ModelSpec(
        task="fume_hood",
        model=str(hparams["model"]),
        model_kwargs=kwargs,
        inference_module=inference_module,
        extra={"input_width": meta["input_width"], "input_height": meta["input_height"]},
    )
    return MODELS.build(spec.model, **kwargs), spec
