"""fume_hood's loss and metrics: cross-entropy over the five ratings, accuracy within one level, the pointing game."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the rating logits (N, 5) against the rating index (N,)."""
    return F.cross_entropy(outputs, targets)


def val_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    predicted = outputs.argmax(dim=1)
    return {
        "loss": float(F.cross_entropy(outputs, targets)),
        "accuracy": float((predicted == targets).float().mean()),
        "within_one_accuracy": float(((predicted - targets).abs() <= 1).float().mean()),
    }


def macro_f1(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Macro-averaged F1 over the ratings present in ``actual`` or ``predicted``."""
    from sklearn.metrics import f1_score

    return float(f1_score(actual, predicted, average="macro"))


def pointing_game(heat: np.ndarray, masks: np.ndarray, tolerance_px: int) -> tuple[float, float]:
    """Share of photos with causes whose Grad-CAM peak falls on a cause (within a tolerance).

    Returns (hit rate, chance rate): chance is the mean area share of the tolerant masks, the hit rate
    a peak placed uniformly at random would get. NaN when no test photo has a cause.
    """
    has_cause = masks.reshape(len(masks), -1).any(axis=1)
    if not has_cause.any():
        return float("nan"), float("nan")
    structure = np.ones((2 * tolerance_px + 1,) * 2, dtype=bool)
    hits, areas = [], []
    for h, m in zip(heat[has_cause], masks[has_cause], strict=True):
        tolerant = ndimage.binary_dilation(m, structure=structure) if tolerance_px else m
        r, c = np.unravel_index(np.argmax(h), h.shape)
        hits.append(bool(tolerant[r, c]))
        areas.append(tolerant.mean())
    return float(np.mean(hits)), float(np.mean(areas))
