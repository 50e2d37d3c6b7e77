"""Loss and metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets)


def val_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {"loss": float(loss(outputs, targets)), "accuracy": float((outputs.argmax(1) == targets).float().mean())}
