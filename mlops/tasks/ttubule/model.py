"""A plain-torch 2-D U-Net with a boundary output, how it is built, and seamless sliding-window inference.

One network serves both of the study's arms:

- ``label_mode="multi"``: 4-class softmax (background, mitochondria, myofibril, T-tubule) + boundary logit;
- ``label_mode="single"``: one T-tubule-vs-rest logit + boundary logit.

The loss is chosen per model (the tuned hyperparameters ``loss``, ``rare_weight``, ``boundary_weight``, kept
as ``model.loss_config`` with the loss constants of params.yaml that ``build_model`` adds); the task's
``criterion(model)`` binds it for the training loop (``metrics.segmentation_loss``). The label mode is read from
the output's channel count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlops.data.arrays import read_meta
from mlops.tasks.base import ModelRegistry, ModelSpec
from mlops.tasks.ttubule.layout import CLASS_NAMES, N_CLASSES
from mlops.tasks.ttubule.preprocess import model_input

LABEL_MODES = ("multi", "single")
LOSSES = ("ce", "weighted_ce", "dice", "tversky", "focal")
MODELS = ModelRegistry("ttubule")


#: what params.yaml (ttubule.input, copied into the prepared data by prepare) sets for every model
FIXED = ("depth", "focal_gamma", "tversky_alpha")


@dataclass(frozen=True)
class LossConfig:
    """Which loss and its weights: ``rare_weight`` weighs the T-tubule class (weighted_ce), the boundary
    term is added with ``boundary_weight``. The focal exponent and the Tversky weight of false positives
    (1 - alpha weighs false negatives: recall first) are params.yaml's; None where a loss does not use them
    (a network rebuilt for serving, the plain loss of the validation metrics)."""

    loss: str
    rare_weight: float | None
    boundary_weight: float
    focal_gamma: float | None
    tversky_alpha: float | None


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net (Ronneberger et al.) with padded convolutions; input (N, 1, H, W), H and W multiples of 2**depth.

    Output (N, n_classes + 1, H, W) logits: the class logits (4 multi-label, 1 single-label) then the
    boundary logit.
    """

    #: fit in oneDNN's channels-last layout (mlops/fit/loop.py): a training step is 11 % faster
    channels_last = True

    def __init__(
        self,
        label_mode: str,
        width: int,
        depth: int,
        dropout: float = 0.0,
        loss: str = "ce",
        rare_weight: float = 10.0,
        boundary_weight: float = 0.5,
    ):
        super().__init__()
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.label_mode = label_mode
        self.depth = depth
        self.n_classes = N_CLASSES if label_mode == "multi" else 1
        self.loss_config = LossConfig(loss, float(rare_weight), float(boundary_weight), None, None)
        widths = [width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        c_in = 1
        for w in widths[:-1]:
            self.down.append(_block(c_in, w))
            c_in = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = nn.Sequential(_block(widths[-2], widths[-1]), nn.Dropout2d(dropout))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth))
        self.dec = nn.ModuleList(_block(2 * widths[i], widths[i]) for i in range(depth))
        self.head = nn.Conv2d(widths[0], self.n_classes + 1, 1)

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this (one halving per level)."""
        return 2**self.depth

    @property
    def halo(self) -> int:
        """Receptive-field radius in pixels: an output pixel depends on inputs at most this far away.

        Per level l two 3x3 convolutions down and two up (2**l each) and a 2x2 pooling (2**l, one side);
        at the bottom two convolutions (2**depth each); the stride-2 transposed convolutions add nothing.
        """
        return 5 * (2**self.depth - 1) + 2 ** (self.depth + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for i in reversed(range(self.depth)):
            x = self.dec[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)


@MODELS.register("unet")
def unet(
    label_mode: str,
    width: int,
    depth: int,
    dropout: float = 0.0,
    loss: str = "ce",
    rare_weight: float = 10.0,
    boundary_weight: float = 0.5,
) -> nn.Module:
    """The study's U-Net in either label mode (see ``UNet``)."""
    return UNet(label_mode, width, depth, dropout, loss, rare_weight, boundary_weight)


def with_loss_constants(model: UNet, focal_gamma: float, tversky_alpha: float) -> UNet:
    """``model`` with params.yaml's loss constants beside its tuned loss choice (``model.loss_config``)."""
    model.loss_config = replace(model.loss_config, focal_gamma=focal_gamma, tversky_alpha=tversky_alpha)
    return model


def build_model(hparams: dict[str, Any], prepared_dir: Path, inference_module: str) -> tuple[nn.Module, ModelSpec]:
    """The U-Net of an arm's hyperparameters, at the depth and with the loss constants the prepared data carries
    (params.yaml ttubule.input), and the recipe serving rebuilds it from (with the normalisation and class names).

    The loss constants are not in the recipe: serving does not train.
    """
    fixed = sorted(set(hparams) & set(FIXED))
    if fixed:
        raise ValueError(f"{fixed} are set by params.yaml ttubule.input for every model, not by hyperparameters")
    meta = read_meta(prepared_dir)
    kwargs = {
        "label_mode": str(hparams.get("label_mode", "multi")),
        "width": int(hparams["width"]),
        "depth": int(meta["depth"]),
        "dropout": float(hparams.get("dropout", 0.0)),
        "loss": str(hparams.get("loss", "ce")),
        "rare_weight": float(hparams.get("rare_weight", 10.0)),
        "boundary_weight": float(hparams.get("boundary_weight", 0.5)),
    }
    served = ("P1", "P2", "peak_smoothing", "peak_min_separation", "infer_tile", "max_upload_voxels")
    extra = {k: meta[k] for k in served}
    extra["voxel_size_nm"] = meta["voxel_size_nm"]
    extra["class_names"] = {str(c): n for c, n in CLASS_NAMES.items()}
    spec = ModelSpec(
        task=MODELS.task,
        model=str(hparams.get("model", "unet")),
        model_kwargs=kwargs,
        inference_module=inference_module,
        extra=extra,
    )
    model = MODELS.build(spec.model, **kwargs)
    return with_loss_constants(model, float(meta["focal_gamma"]), float(meta["tversky_alpha"])), spec


def label_mode_of(outputs: torch.Tensor) -> str:
    """'multi' or 'single' from the output's channel count (4 + 1 or 1 + 1)."""
    channels = outputs.shape[1]
    if channels == N_CLASSES + 1:
        return "multi"
    if channels == 2:
        return "single"
    raise ValueError(f"outputs have {channels} channels; expected {N_CLASSES + 1} (multi) or 2 (single)")


def probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """Logits -> per-class probabilities + boundary probability, (N, n_classes + 1, H, W).

    Multi-label: softmax over the 4 classes; single-label: the T-tubule sigmoid. The last channel is the
    boundary sigmoid in both.
    """
    multi = label_mode_of(outputs) == "multi"
    classes = outputs[:, :-1].softmax(dim=1) if multi else torch.sigmoid(outputs[:, :-1])
    return torch.cat([classes, torch.sigmoid(outputs[:, -1:])], dim=1)


def tile_margin(model: UNet) -> int:
    """Margin discarded at inner tile edges: the halo rounded up so the tile stride stays a multiple of 2**depth."""
    half = model.multiple // 2
    return int(np.ceil(model.halo / half) * half)


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def sliding_window(model: UNet, x: torch.Tensor, tile: int, batch_size: int = 8) -> torch.Tensor:
    """Logits of (N, 1, H, W) inputs by overlapping tiles of ``tile`` pixels, without seams.

    Each output pixel comes from a tile in which it lies at least the network's receptive-field radius away
    from every tile edge that is not an image edge, and tiles start on multiples of 2**depth, so the result
    equals one pass over the whole image (``predict_whole``) up to float rounding. Inputs are padded to a
    multiple of 2**depth (edge values repeated) and the padding is cut off again.
    """
    model.eval()
    n, _, h, w = x.shape
    m = model.multiple
    if tile % m:
        raise ValueError(f"tile {tile} must be a multiple of {m} (2**depth)")
    margin = tile_margin(model)
    stride = tile - 2 * margin
    padded = _pad_to_multiple(x, m)
    hp, wp = padded.shape[-2:]
    if hp <= tile and wp <= tile:
        return predict_whole(model, x)
    if stride <= 0:
        raise ValueError(f"tile {tile} is too small for the network's receptive field: needs > {2 * margin}")
    out = None
    th, tw = min(tile, hp), min(tile, wp)
    boxes = [(sy, sx) for sy in _starts(hp, th, stride) for sx in _starts(wp, tw, stride)]
    with torch.no_grad():
        for i in range(0, len(boxes), max(1, batch_size // max(n, 1))):
            chunk = boxes[i : i + max(1, batch_size // max(n, 1))]
            batch = torch.cat([padded[:, :, sy : sy + th, sx : sx + tw] for sy, sx in chunk])
            logits = model(batch).reshape(len(chunk), n, -1, th, tw)
            if out is None:
                out = torch.empty(n, logits.shape[2], hp, wp)
            for (sy, sx), pred in zip(chunk, logits, strict=True):
                y0 = sy + margin if sy > 0 else 0
                y1 = sy + th - margin if sy + th < hp else hp
                x0 = sx + margin if sx > 0 else 0
                x1 = sx + tw - margin if sx + tw < wp else wp
                out[:, :, y0:y1, x0:x1] = pred[:, :, y0 - sy : y1 - sy, x0 - sx : x1 - sx]
    return out[:, :, :h, :w]


def _pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def predict_whole(model: UNet, x: torch.Tensor) -> torch.Tensor:
    """Logits of (N, 1, H, W) inputs in one pass (padded to a multiple of 2**depth, then cropped)."""
    model.eval()
    h, w = x.shape[-2:]
    with torch.no_grad():
        return model(_pad_to_multiple(x, model.multiple))[:, :, :h, :w]


def predict_probabilities(model: UNet, slices: np.ndarray, tile: int) -> np.ndarray:
    """(N, n_classes + 1, H, W) probabilities of normalised uint8 slices (N, H, W), by sliding window, 8 at a time.

    What evaluation, calibration and the served predictor all decide on.
    """
    out = []
    for start in range(0, len(slices), 8):
        out.append(probabilities(sliding_window(model, model_input(slices[start : start + 8]), tile)).numpy())
    return np.concatenate(out)
