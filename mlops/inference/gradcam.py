"""Grad-CAM in plain torch (no torchvision): which regions drove a chosen scalar of the output.

A model that can be run in two parts, ``features(x)`` (the input up to and including ``cam_layer``'s output) and
``head`` (the rest: ``model(x) == model.head(model.features(x))``), is explained without hooks and in one forward
pass: the features are computed once without a graph, the head once with one, and its backward gives the
gradient at the features. That pass yields the logits too, so a predictor gets its probabilities from it (no
second forward), and nothing is attached to the shared module: threads may explain with the same model at once.
A model without that split (an older plugin's) is explained with a forward hook on ``cam_layer``, as before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Target = Callable[[torch.Tensor], torch.Tensor]


def splits_at_cam(model: nn.Module) -> bool:
    """Whether ``model`` runs in the two parts Grad-CAM needs (``features`` up to ``cam_layer``, then ``head``)."""
    return callable(getattr(model, "features", None)) and isinstance(getattr(model, "head", None), nn.Module)


def _cam(acts: torch.Tensor, grads: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Activations weighted by their spatially pooled gradients, positive part, resized to ``size``, peak 1."""
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).detach()


def explain_forward(model: nn.Module, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, ...) and Grad-CAM heat maps in [0, 1], shape (N, H, W) of ``x``, from one forward pass.

    ``model`` must split at its cam layer (:func:`splits_at_cam`) and be in the mode it should explain in (the
    served models are in eval mode; this function never changes the mode, so it is safe to call from several
    threads on one model). ``target`` maps the logits to one scalar per sample whose evidence is shown.
    """
    with torch.no_grad():
        features = model.features(x)
    acts = features.requires_grad_(True)  # a leaf: the backward stops here, the body before it has no graph
    with torch.enable_grad():
        logits = model.head(acts)
        (grads,) = torch.autograd.grad(target(logits).sum(), acts)
    return logits.detach(), _cam(acts.detach(), grads, x.shape[-2:])


def _hooked(model: nn.Module, x: torch.Tensor, target: Target, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and heat maps of a model without the split: a forward hook on ``layer`` catches its output."""
    acts: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        with torch.enable_grad():
            out = model(x)
            (grads,) = torch.autograd.grad(target(out).sum(), acts[0])
    finally:
        handle.remove()
    return out.detach(), _cam(acts[0].detach(), grads, x.shape[-2:])


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: Target,
    layer: nn.Module,
) -> torch.Tensor:
    """Heat maps in [0, 1], shape (N, H, W) of ``x``.

    ``target`` maps the model output (N, ...) to one scalar per sample whose evidence is shown; ``layer``
    is the convolutional block whose activations are weighted by their pooled gradients (``model.cam_layer``: the
    one ``features`` ends with when the model splits there). The model is explained in eval mode and left in the
    mode it was in.
    """
    was_training = model.training
    model.eval()
    try:
        if splits_at_cam(model) and layer is getattr(model, "cam_layer", None):
            return explain_forward(model, x, target)[1]
        return _hooked(model, x, target, layer)[1]
    finally:
        model.train(was_training)
