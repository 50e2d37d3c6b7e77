"""One small CNN; ``cam_layer`` is the convolution Grad-CAM explains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mlops.data.arrays import read_meta
from mlops.tasks.base import ModelRegistry, ModelSpec

MODELS = ModelRegistry("spots")


class SpotCNN(nn.Module):
    def __init__(self, size: int, channels: int):
        super().__init__()
        self.cam_layer = nn.Conv2d(1, channels, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(channels * size * size, 2))

    def forward(self, x):
        return self.head(self.cam_layer(x))


@MODELS.register("cnn")
def cnn(size: int, channels: int) -> nn.Module:
    return SpotCNN(size, channels)


def build(hparams: dict[str, Any], prepared_dir: Path) -> tuple[nn.Module, ModelSpec]:
    kwargs = {"size": int(read_meta(prepared_dir)["size"]), "channels": int(hparams["channels"])}
    spec = ModelSpec("spots", str(hparams["model"]), kwargs, "mlops_spots.inference")
    return MODELS.build(spec.model, **kwargs), spec
