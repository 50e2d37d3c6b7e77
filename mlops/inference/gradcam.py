"""Grad-CAM in plain torch (no torchvision): which regions drove a chosen scalar of the output."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: Callable[[torch.Tensor], torch.Tensor],
    layer: nn.Module,
) -> torch.Tensor:
    """Heat maps in [0, 1], shape (N, H, W) of ``x``.

    ``target`` maps the model output (N, ...) to one scalar per sample whose evidence is shown; ``layer``
    is the convolutional block whose activations are weighted by their pooled gradients.
    """
    acts: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        was_training = model.training
        model.eval()
        with torch.enable_grad():
            out = model(x)
            score = target(out).sum()
            (grads,) = torch.autograd.grad(score, acts[0])
        model.train(was_training)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts[0]).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).detach()
