"""skeleton's loss and metrics: the negative ELBO per reconstructed frame, and detection at a threshold.

The loss is model-agnostic because every model packs its own regularisation cost into its output (``model.py``):
reconstruction + that column. Validation runs on held-out *normal* videos, so it reports the loss terms and the
mean anomaly score there; the detection metrics need the test video's anomalous spans.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from mlops.tasks.skeleton.model import reconstructed_targets, unpack, window_scores


def negative_elbo(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss terms per reconstructed frame, averaged over the batch and frames: Bernoulli reconstruction
    (nats summed over the map's pixels) and KL to the prior (0 for the AE)."""
    recon, kl = unpack(outputs)
    target = reconstructed_targets(outputs, targets)
    bce = F.binary_cross_entropy_with_logits(recon, target, reduction="none").sum(-1)
    return {"loss": (bce + kl).mean(), "reconstruction": bce.mean(), "kl": kl.mean()}


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss: the negative ELBO per reconstructed frame (nats)."""
    return negative_elbo(outputs, targets)["loss"]


def val_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Negative ELBO terms per frame (nats) and the mean anomaly score on held-out normal videos."""
    terms = negative_elbo(outputs, targets)
    metrics = {k: float(v) for k, v in terms.items()}
    metrics["anomaly_score"] = float(window_scores(outputs, targets).mean())
    return metrics


def serving_threshold(val_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The score above which a window is flagged: the (1 - false_alarm_rate) quantile of the scores of held-out
    normal windows, so normal work raises that share of false alarms."""
    return float(np.quantile(val_scores, 1 - false_alarm_rate))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the share of (abnormal, normal) window pairs the scores rank right, ties counting
    half (scikit-learn's ``roc_auc_score``, from one ranking, so the bootstrap affords it). NaN without both
    classes."""
    positive = labels.astype(bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # ties get their average rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: precision at each distinct score, weighted by the recall it adds (scikit-learn's
    ``average_precision_score``, without its per-call checks). NaN without both classes."""
    positive = labels.astype(bool)
    if not 0 < positive.sum() < len(positive):
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    ranked = scores[order]
    # the last window of each run of equal scores: a threshold there flags the whole run
    cut = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    true_pos = np.cumsum(positive[order])[cut]
    precision = true_pos / (cut + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def score(cases: pd.DataFrame) -> dict[str, float]:
    """The test metrics from a cases table (one row per test window: ``label``, anomaly ``score``, ``flagged`` =
    score above the serving threshold calibrated on validation, ``action``), or any resample of it: ranking
    metrics (AUROC, average precision) and detection at the serving threshold (detection rate = recall, false
    alarm rate, precision, F1, and the detection rate per abnormal action present). NaN where a class is
    missing."""
    labels = cases["label"].to_numpy().astype(np.int64)
    scores = cases["score"].to_numpy(dtype=np.float64)
    flagged = cases["flagged"].to_numpy().astype(bool)
    abnormal = labels == 1
    nan = float("nan")
    detection = float(flagged[abnormal].mean()) if abnormal.any() else nan
    precision = float(abnormal[flagged].mean()) if flagged.any() else nan
    metrics = {
        "test_auroc": auroc(labels, scores),
        "test_average_precision": average_precision(labels, scores),
        "test_detection_rate": detection,
        "test_false_alarm_rate": float(flagged[~abnormal].mean()) if (~abnormal).any() else nan,
        "test_precision": precision,
        "test_f1": 2 * precision * detection / (precision + detection) if precision + detection > 0 else nan,
        "test_abnormal_share": float(abnormal.mean()) if len(labels) else nan,
    }
    actions = cases["action"].to_numpy().astype(str)
    for action in np.unique(actions[abnormal]):
        metrics[f"test_detection_rate_{action}"] = float(flagged[abnormal & (actions == action)].mean())
    return metrics


def action_rates(metrics: dict[str, float]) -> dict[str, float]:
    """The share of abnormal windows flagged per action, from ``score``'s metrics (for the per-action figure)."""
    prefix = "test_detection_rate_"
    return {name.removeprefix(prefix): value for name, value in metrics.items() if name.startswith(prefix)}
