"""fracture's loss and metrics: cross-entropy with outlier exposure, macro F1, calibration, confidence AUROC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mlops.tasks.fracture.prepare import OUTLIER

#: Weight of an outlier image's loss relative to a fractograph's (Hendrycks et al. 2019 use 0.5).
OUTLIER_WEIGHT = 0.5


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on fractographs; for outlier images, cross-entropy to the uniform distribution."""
    known = targets != OUTLIER
    if bool(known.all()):
        return F.cross_entropy(outputs, targets)
    total = outputs.new_zeros(())
    if bool(known.any()):
        total = total + F.cross_entropy(outputs[known], targets[known], reduction="sum")
    total = total - OUTLIER_WEIGHT * outputs[~known].log_softmax(dim=1).mean(dim=1).sum()
    return total / len(targets)


def val_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Loss, accuracy and macro F1 over the fractographs (outlier images do not count)."""
    known = targets != OUTLIER
    outputs, targets = outputs[known], targets[known]
    predicted = outputs.argmax(dim=1)
    return {
        "loss": float(F.cross_entropy(outputs, targets)),
        "accuracy": float((predicted == targets).float().mean()),
        "macro_f1": macro_f1(predicted.numpy(), targets.numpy()),
    }


def macro_f1(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Macro-averaged F1 over the classes present in ``actual`` or ``predicted`` (NaN for no images).

    scikit-learn's default label set is exactly those classes; a class in only one of them scores 0.
    """
    from sklearn.metrics import f1_score

    if not len(actual):
        return float("nan")
    return float(f1_score(actual, predicted, average="macro", zero_division=0))


def expected_calibration_error(probs: np.ndarray, correct: np.ndarray, bins: int) -> tuple[float, pd.DataFrame]:
    """ECE over equal-width confidence bins, and the per-bin table of the reliability diagram."""
    confidence = probs.max(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        in_bin = which == b
        count = int(in_bin.sum())
        conf = float(confidence[in_bin].mean()) if count else float("nan")
        acc = float(correct[in_bin].mean()) if count else float("nan")
        if count:
            ece += count / len(confidence) * abs(acc - conf)
        rows.append(
            {"bin_low": edges[b], "bin_high": edges[b + 1], "count": count, "confidence": conf, "accuracy": acc}
        )
    return float(ece), pd.DataFrame(rows)


def confidence_auroc(in_domain: np.ndarray, out_of_domain: np.ndarray) -> float:
    """Probability that an in-domain image gets a higher confidence than an out-of-domain one (ties: half)."""
    if not len(in_domain) or not len(out_of_domain):
        return float("nan")
    diff = in_domain[:, None] - out_of_domain[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())
