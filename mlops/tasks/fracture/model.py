"""The failure-mode CNN in plain torch, registered by name; the sweep chooses its width and depth.

The network standardises each image itself (zero mean, unit std), so the global gray level and
contrast (SEM brightness/contrast knobs, different per microscope) cannot be used as a cue. It exposes
``cam_layer`` (the last convolutional block) for Grad-CAM.
"""

from __future__ import annotations

import torch
from torch import nn

from mlops.tasks.base import ModelRegistry
from mlops.tasks.fracture.simulate import CLASSES

N_CLASSES = len(CLASSES)
MODELS = ModelRegistry("fracture")


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cam_layer(self.body(x)))


@MODELS.register("cnn")
def cnn(width: int = 16, depth: int = 4, dropout: float = 0.2) -> nn.Module:
    """The registered failure-mode classifier."""
    return FractureCNN(width=width, depth=depth, dropout=dropout)


def predicted_class_logit(logits: torch.Tensor) -> torch.Tensor:
    """Scalar per image whose Grad-CAM shows the evidence for the predicted failure mode."""
    return logits.gather(1, logits.argmax(dim=1, keepdim=True))[:, 0]
