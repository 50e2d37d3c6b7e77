"""Loss and metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets)


def val_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {"loss": float(loss(outputs, targets)), "accuracy": float((outputs.argmax(1) == targets).float().mean())}


def score(cases: pd.DataFrame) -> dict[str, float]:
    """Test accuracy and loss of any subset of the test images (NaN for none)."""
    if not len(cases):
        return {"test_accuracy": float("nan"), "test_loss": float("nan")}
    return {
        "test_accuracy": float((cases["actual"].to_numpy() == cases["predicted"].to_numpy()).mean()),
        "test_loss": float(cases["cross_entropy"].to_numpy(np.float64).mean()),
    }
