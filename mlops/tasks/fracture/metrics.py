"""fracture's loss and metrics: cross-entropy with outlier exposure, macro F1, calibration, confidence AUROC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mlops.tasks.base import STRATUM
from mlops.tasks.fracture.layout import CLASSES
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

    scikit-learn's default label set is exactly those classes; a class in only one of them scores 0. Counted with
    numpy: the bootstrap calls it per resample.
    """
    predicted, actual = np.asarray(predicted, dtype=np.int64), np.asarray(actual, dtype=np.int64)
    if not len(actual):
        return float("nan")
    labels, codes = np.unique(np.concatenate([actual, predicted]), return_inverse=True)
    a, p = codes[: len(actual)], codes[len(actual) :]
    n = len(labels)
    tp = np.bincount(a[a == p], minlength=n)
    return float((2 * tp / (np.bincount(a, minlength=n) + np.bincount(p, minlength=n))).mean())


def _bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width confidence bins [k/n, (k+1)/n), the last one closed."""
    return np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """ECE: the count-weighted mean gap between accuracy and confidence per bin (NaN for no images)."""
    if not len(confidence):
        return float("nan")
    which = _bins(confidence, bins)
    gap = np.bincount(which, weights=correct.astype(np.float64), minlength=bins) - np.bincount(
        which, weights=confidence.astype(np.float64), minlength=bins
    )
    return float(np.abs(gap).sum() / len(confidence))


def expected_calibration_error(probs: np.ndarray, correct: np.ndarray, bins: int) -> tuple[float, pd.DataFrame]:
    """ECE over equal-width confidence bins, and the per-bin table of the reliability diagram."""
    confidence = probs.max(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    which = _bins(confidence, bins)
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


def unknown_threshold(confidence: np.ndarray, withheld_share: float) -> float:
    """The "unknown" threshold that withholds at most ``withheld_share`` of these in-domain images (confidence below
    it): the confidence of the image at that quantile (the lowest one for a share of 0: nothing withheld).

    Given validation images only (``evaluate.calibrated_threshold``): a threshold read off the test split would
    make the test's unknown share a chosen number, not a measured one."""
    if not len(confidence):
        raise ValueError("no in-domain images to calibrate the unknown threshold on")
    ordered = np.sort(np.asarray(confidence, dtype=np.float64))
    return float(ordered[min(int(np.floor(withheld_share * len(ordered))), len(ordered) - 1)])


#: columns of fracture's cases table besides case/group/stratum: class indices (-1: a probe photo has none), the
#: top class probability, whether the answer was right / given (not "unknown"), the per-image cross-entropy
ACTUAL, PREDICTED, CONFIDENCE, CORRECT, ANSWERED, CROSS_ENTROPY = (
    "actual", "predicted", "confidence", "correct", "answered", "cross_entropy"
)  # fmt: skip
#: the strata: in-domain test fractographs, and the natural photos of the out-of-domain probe
IN_DOMAIN, PROBE = "test", "probe"


def score(cases: pd.DataFrame, bins: int) -> dict[str, float]:
    """Every test metric that is a function of the cases, from any subset of them (NaN where undefined): accuracy,
    macro-F1, loss, per-class recall, ECE over ``bins`` bins, the "unknown" answer's cost in domain and its catch
    out of domain, and how well confidence separates the two (``ood_auroc``)."""
    nan = float("nan")
    stratum = cases[STRATUM].to_numpy()
    test, probe = cases[stratum == IN_DOMAIN], cases[stratum == PROBE]
    actual, predicted = test[ACTUAL].to_numpy(np.int64), test[PREDICTED].to_numpy(np.int64)
    correct, answered = test[CORRECT].to_numpy(bool), test[ANSWERED].to_numpy(bool)
    confidence, probe_confidence = test[CONFIDENCE].to_numpy(np.float64), probe[CONFIDENCE].to_numpy(np.float64)
    n = len(test)
    out = {
        "test_accuracy": float(correct.mean()) if n else nan,
        "test_macro_f1": macro_f1(predicted, actual),
        "test_loss": float(test[CROSS_ENTROPY].to_numpy(np.float64).mean()) if n else nan,
        "test_ece": calibration_error(confidence, correct, bins),
        # In-domain cost of the "unknown" answer: how often a real fractograph is withheld, and the accuracy on
        # those that are answered.
        "test_unknown_share": float(1 - answered.mean()) if n else nan,
        "test_answered_accuracy": float(correct[answered].mean()) if answered.any() else nan,
        # Threshold-free: how well confidence separates test fractographs from photos (0.5 = not at all).
        "ood_auroc": confidence_auroc(confidence, probe_confidence),
        "ood_mean_max_probability": float(probe_confidence.mean()) if len(probe) else nan,
        "ood_unknown_share": float(1 - probe[ANSWERED].to_numpy(bool).mean()) if len(probe) else nan,
    }
    for c, name in enumerate(CLASSES):
        in_class = actual == c
        out[f"test_recall_{name}"] = float(correct[in_class].mean()) if in_class.any() else nan
    return out
