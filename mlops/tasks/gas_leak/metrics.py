"""gas_leak's training loss and its error metrics, for both heads.

The errors are plain NumPy rather than scikit-learn's ``mean_absolute_error`` (which gives the same values on
finite answers): sklearn refuses NaN, and a diverging sweep trial must report a NaN error, not end the worker.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mlops.tasks.base import STRATUM
from mlops.tasks.gas_leak.model import N_ANSWER

#: weight of the depth-velocity error (pix/s) against the position loss in both heads' training loss
Z_WEIGHT = 0.5


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Numeric head: Huber on (X, Y, Z). Heat-map head: cross-entropy of the map against the
    Gaussian target + Huber on Z. The head is told apart by its output width (3 vs 3 + H*W)."""
    z_loss = F.smooth_l1_loss(outputs[:, 2], targets[:, 2])
    if outputs.shape[1] == N_ANSWER:
        return F.smooth_l1_loss(outputs[:, :2], targets[:, :2]) + Z_WEIGHT * z_loss
    if outputs.shape[1] != targets.shape[1]:
        raise ValueError(f"heat-map outputs have {outputs.shape[1]} columns, targets {targets.shape[1]}")
    log_probs = outputs[:, N_ANSWER:].log_softmax(dim=1)
    cross_entropy = -(targets[:, N_ANSWER:] * log_probs).sum(dim=1).mean()
    return cross_entropy + Z_WEIGHT * z_loss


def errors(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Mean absolute error of X, Y (px) and Z (pix/s), and the mean Euclidean position error (px)."""
    if not len(true):
        nan = float("nan")
        return {"x_mae": nan, "y_mae": nan, "z_mae": nan, "xy_error": nan}
    err = np.abs(pred - true)
    return {
        "x_mae": float(err[:, 0].mean()),
        "y_mae": float(err[:, 1].mean()),
        "z_mae": float(err[:, 2].mean()),
        "xy_error": float(np.hypot(err[:, 0], err[:, 1]).mean()),
    }


#: the strata of the cases table: in-domain test scenes and the held-out field footage (resampled apart)
STRATA = ("test", "field")
_TRUE, _PRED = ["x", "y", "z"], ["pred_x", "pred_y", "pred_z"]


def score(cases: pd.DataFrame) -> dict[str, float]:
    """The test and field errors, whole and split into visible / occluded sources, from a cases table (one row per
    sequence: ``stratum``, ``occluded``, true ``x, y, z`` and ``pred_x, pred_y, pred_z``), or any resample of it.

    Beside Z's error stands the study's baseline for it, the error of answering Z = 0 (``<split>_z_mae_zero``,
    the mean |Z|), and ``<split>_z_skill`` = 1 - z_mae / z_mae_zero: at or below 0 the model has no skill on Z, it
    does no better than saying "no depth flow". A split without rows gives NaN."""
    stratum = cases[STRATUM].to_numpy()
    occluded = cases["occluded"].to_numpy().astype(bool)
    true = cases[_TRUE].to_numpy(dtype=np.float64)
    pred = cases[_PRED].to_numpy(dtype=np.float64)
    out: dict[str, float] = {}
    for split in STRATA:
        rows = stratum == split
        for subset, mask in (("", rows), ("visible_", rows & ~occluded), ("occluded_", rows & occluded)):
            for name, value in errors(pred[mask], true[mask]).items():
                out[f"{split}_{subset}{name}"] = value
        zero = float(np.abs(true[rows, 2]).mean()) if rows.any() else float("nan")
        out[f"{split}_z_mae_zero"] = zero
        out[f"{split}_z_skill"] = 1.0 - out[f"{split}_z_mae"] / zero if zero > 0 else float("nan")
    return out


def val_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The loss and the errors of a whole split's answers (the sweep's objective is one of them)."""
    return {
        "loss": float(loss(outputs, targets)),
        **errors(outputs[:, :N_ANSWER].numpy(), targets[:, :N_ANSWER].numpy()),
    }


def error_table(metrics: dict[str, float], head: str) -> pd.DataFrame:
    """The study's Table 1 layout for one head: mean error of X, Y (px) and Z (pix/s) per data subset."""
    columns = ["test", "test_visible", "test_occluded", "field", "field_visible", "field_occluded"]
    rows = []
    for quantity, unit in (("x", "px"), ("y", "px"), ("z", "pix/s")):
        row = {"head": head, "quantity": f"{quantity.upper()} mean error", "unit": unit}
        row.update({c: metrics.get(f"{c}_{quantity}_mae", float("nan")) for c in columns})
        rows.append(row)
    return pd.DataFrame(rows)
