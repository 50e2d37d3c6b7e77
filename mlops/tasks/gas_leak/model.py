"""The study's two 3-D CNNs in plain torch: one shared encoder, a numeric head and a heat-map head.

Both models map a frame stack ``(N, 2, T, H, W)`` (see ``preprocess.to_channels``) to one tensor per batch whose first
three columns are the decoded answer in physical units: source X, Y (pixels) and depth velocity Z (pix/s).
The heat-map model appends its ``H * W`` map logits, so the task's loss can train the map while every
consumer (validation metrics, evaluation, serving) reads the answer the same way. H and W must be
multiples of 8 (three 2x poolings) and T a multiple of 8 for the same reason in time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlops.data.arrays import read_meta
from mlops.tasks.base import ModelRegistry, ModelSpec

N_ANSWER = 3  # x (px), y (px), z (pix/s)
MODELS = ModelRegistry("gas_leak")


def _block3d(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


def _block2d(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Encoder3D(nn.Module):
    """Four 3-D conv levels with 2x pooling in time and space; returns every level's features."""

    def __init__(self, width: int = 8, in_channels: int = 2):
        super().__init__()
        # Halving time first keeps the full-resolution level cheap on CPU; space stays at full resolution
        # there because the source position needs it.
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, width, 3, stride=(2, 1, 1), padding=1, bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
        self.level0 = nn.Sequential(
            nn.Conv3d(width, width, 3, padding=1, bias=False), nn.BatchNorm3d(width), nn.ReLU(inplace=True)
        )
        self.level1 = _block3d(width, 2 * width)
        self.level2 = _block3d(2 * width, 4 * width)
        self.level3 = _block3d(4 * width, 8 * width)
        self.channels = (width, 2 * width, 4 * width, 8 * width)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.level0(self.stem(x))
        f1 = self.level1(F.max_pool3d(f0, 2))
        f2 = self.level2(F.max_pool3d(f1, 2))
        f3 = self.level3(F.max_pool3d(f2, (1, 2, 2)))
        return [f0, f1, f2, f3]


class _Scaled(nn.Module):
    """Maps normalised network outputs to pixels and pix/s (so losses and metrics see physical units)."""

    #: fit in oneDNN's channels-last layout (mlops/fit/loop.py): a training step of either head is 27 % faster
    channels_last = True

    def __init__(self, frame_height: int, frame_width: int, z_scale: float):
        super().__init__()
        self.frame_height, self.frame_width = frame_height, frame_width
        self.register_buffer("centre", torch.tensor([(frame_width - 1) / 2, (frame_height - 1) / 2, 0.0]))
        self.register_buffer("span", torch.tensor([frame_width / 2, frame_height / 2, float(z_scale)]))


class NumericHead(_Scaled):
    """Study's Fig. 5: encoder -> pooled features -> dense layers -> (X, Y, Z) directly."""

    def __init__(self, frame_height: int, frame_width: int, z_scale: float, width: int = 8, dropout: float = 0.2):
        super().__init__(frame_height, frame_width, z_scale)
        self.encoder = Encoder3D(width)
        c = self.encoder.channels[-1]
        # A 4x4 pooled grid, not a global average: a flat global pool would throw away where the plume
        # is, which would make the comparison with the heat-map head unfair.
        self.pool = nn.AdaptiveAvgPool3d((1, 4, 4))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c * 16, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(64, N_ANSWER),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.head(self.pool(self.encoder(x)[-1]))
        return self.centre + raw * self.span


class HeatmapHead(_Scaled):
    """Study's Fig. 6: encoder-decoder with long skip connections -> source probability map + Z branch.

    The decoder is 2-D: each encoder level's features are averaged over time and joined to the upsampled
    decoder path (the long skips), so the map keeps full-resolution spatial detail.
    """

    def __init__(self, frame_height: int, frame_width: int, z_scale: float, width: int = 8, dropout: float = 0.2):
        super().__init__(frame_height, frame_width, z_scale)
        self.encoder = Encoder3D(width)
        c0, c1, c2, c3 = self.encoder.channels
        self.up2 = _block2d(c3 + c2, c2)
        self.up1 = _block2d(c2 + c1, c1)
        self.up0 = nn.Sequential(_block2d(c1 + c0, c0), nn.Dropout2d(dropout))
        self.logits = nn.Conv2d(c0, 1, 1)
        # Z reads the bottleneck (as the numeric head does) and the decoder's full-resolution features,
        # pooled to the same 4x4 grid: the plume's shape near the source is where depth flow shows.
        self.z_pool = nn.AdaptiveAvgPool2d(4)
        self.z_branch = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear((c3 + c0) * 16, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, 1),
        )

    @staticmethod
    def _join(deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([up, skip], dim=1)

    def decode(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Map logits (N, H, W) and the last decoder features (N, C, H, W)."""
        f0, f1, f2, f3 = (f.mean(dim=2) for f in feats)
        d = self.up2(self._join(f3, f2))
        d = self.up1(self._join(d, f1))
        d = self.up0(self._join(d, f0))
        return self.logits(d)[:, 0], d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        logits, d = self.decode(feats)
        pooled = torch.cat([self.z_pool(feats[-1].mean(dim=2)), self.z_pool(d)], dim=1).flatten(1)
        z = self.z_branch(pooled)[:, 0] * self.span[2]
        xy = decode_peak(logits)
        return torch.cat([xy, z[:, None], logits.flatten(1)], dim=1)


def decode_peak(logits: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """(N, H, W) map logits -> (N, 2) source (x, y): the argmax, refined to sub-pixel by the probability
    centroid of its (2r+1)^2 neighbourhood (a whole-map soft-argmax would be pulled towards the centre
    by the probability spread along the plume)."""
    n, h, w = logits.shape
    probs = logits.flatten(1).softmax(dim=1).view(n, h, w)
    peak = probs.flatten(1).argmax(dim=1)
    row, col = peak // w, peak % w
    offsets = torch.arange(-radius, radius + 1, device=logits.device)
    rows = (row[:, None] + offsets[None]).clamp(0, h - 1)  # (N, k)
    cols = (col[:, None] + offsets[None]).clamp(0, w - 1)
    window = probs[torch.arange(n, device=logits.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    mass = window.sum(dim=(1, 2)).clamp_min(1e-12)
    y = (window * rows[:, :, None].to(probs.dtype)).sum(dim=(1, 2)) / mass
    x = (window * cols[:, None, :].to(probs.dtype)).sum(dim=(1, 2)) / mass
    return torch.stack([x, y], dim=1)


@MODELS.register("numeric")
def numeric(frame_height: int, frame_width: int, z_scale: float, width: int = 8, dropout: float = 0.2) -> nn.Module:
    return NumericHead(frame_height, frame_width, z_scale, width=width, dropout=dropout)


@MODELS.register("heatmap")
def heatmap(frame_height: int, frame_width: int, z_scale: float, width: int = 8, dropout: float = 0.2) -> nn.Module:
    return HeatmapHead(frame_height, frame_width, z_scale, width=width, dropout=dropout)


def source_map(model: nn.Module, outputs: torch.Tensor) -> torch.Tensor | None:
    """The heat-map model's probability maps (N, H, W) from its outputs; None for the numeric model."""
    h, w = model.frame_height, model.frame_width
    if outputs.shape[1] != N_ANSWER + h * w:
        return None
    return outputs[:, N_ANSWER:].softmax(dim=1).view(-1, h, w)


def build_model(hparams: dict[str, Any], prepared_dir: Path, inference_module: str) -> tuple[nn.Module, ModelSpec]:
    """The model ``hparams['model']`` names, sized to the prepared frames, and the recipe serving rebuilds it from."""
    meta = read_meta(prepared_dir)
    kwargs = {
        "frame_height": int(meta["height"]),
        "frame_width": int(meta["width"]),
        "z_scale": float(meta["z_scale"]),
        "width": int(hparams["width"]),
        "dropout": float(hparams["dropout"]),
    }
    spec = ModelSpec(
        task=MODELS.task,
        model=str(hparams["model"]),
        model_kwargs=kwargs,
        inference_module=inference_module,
        extra={"frames": int(meta["frames"]), "height": int(meta["height"]), "width": int(meta["width"])},
    )
    return MODELS.build(spec.model, **kwargs), spec
