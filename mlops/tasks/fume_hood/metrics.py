"""fume_hood's loss and metrics: cross-entropy over the five ratings, accuracy within one level, the pointing game."""

from __future__ import annotations

import numpy as np
import pandas as pd
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


#: columns of fume_hood's cases table besides case/group/stratum: ratings 1..5 and the per-photo cross-entropy
ACTUAL, PREDICTED, CROSS_ENTROPY = "actual", "predicted", "cross_entropy"


def macro_f1(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Macro-averaged F1 over the ratings present in ``actual`` or ``predicted`` (scikit-learn's default label set;
    a rating in only one of them scores 0); NaN for no photos. Counted with numpy: the bootstrap calls it per
    resample."""
    actual, predicted = np.asarray(actual, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if not len(actual):
        return float("nan")
    labels, codes = np.unique(np.concatenate([actual, predicted]), return_inverse=True)
    a, p = codes[: len(actual)], codes[len(actual) :]
    n = len(labels)
    tp = np.bincount(a[a == p], minlength=n)
    f1 = 2 * tp / (np.bincount(a, minlength=n) + np.bincount(p, minlength=n))
    return float(f1.mean())


def score(cases: pd.DataFrame) -> dict[str, float]:
    """The headline test metrics from a cases table (any subset of its rows; NaN for none)."""
    if not len(cases):
        nan = float("nan")
        return {"test_accuracy": nan, "test_within_one_accuracy": nan, "test_macro_f1": nan, "test_loss": nan}
    actual, predicted = cases[ACTUAL].to_numpy(np.int64), cases[PREDICTED].to_numpy(np.int64)
    return {
        "test_accuracy": float((actual == predicted).mean()),
        "test_within_one_accuracy": float((np.abs(actual - predicted) <= 1).mean()),
        "test_macro_f1": macro_f1(actual, predicted),
        "test_loss": float(cases[CROSS_ENTROPY].to_numpy(np.float64).mean()),
    }


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


def model_free_heat(photos: np.ndarray, blur_px: float) -> np.ndarray:
    """A heat map that needs no model: how far each (blurred) pixel is from its row's median gray level.

    The pointing game's baseline. A hood's empty background is made of horizontal bands (sash, wall, baffle slots,
    work surface), so anything that stands out from its row is an object; if this points at the causes as often
    as Grad-CAM does, a high Grad-CAM hit rate says the model found the objects, not that it rates by them.
    """
    blurred = ndimage.gaussian_filter(photos.astype(np.float32), (0, blur_px, blur_px)) if blur_px else photos
    return np.abs(blurred - np.median(blurred, axis=2, keepdims=True))
