"""skeleton's loss and metrics: the negative ELBO per reconstructed frame, and detection at a threshold.

The loss is model-agnostic because every model packs its own regularisation cost into its output (``model.py``):
reconstruction + that column. Validation runs on held-out *normal* videos, so it reports the loss terms and the
mean anomaly score there; the detection metrics need the test video's anomalous spans.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

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


def detection_metrics(
    labels: np.ndarray, scores: np.ndarray, actions: np.ndarray, threshold: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Test metrics of window scores against window labels (NaN where a split lacks a class), and the share of
    abnormal windows flagged per action. Windows are flagged when their score exceeds ``threshold``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    flagged = scores > threshold
    both = 0 < labels.sum() < len(labels)
    metrics = {
        "test_auroc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "test_average_precision": float(average_precision_score(labels, scores)) if both else float("nan"),
        "serving_threshold": threshold,
        "test_detection_rate": float(flagged[labels == 1].mean()) if labels.any() else float("nan"),
        "test_false_alarm_rate": float(flagged[labels == 0].mean()) if (labels == 0).any() else float("nan"),
        "test_windows": float(len(labels)),
        "test_abnormal_share": float(labels.mean()) if len(labels) else float("nan"),
    }
    rates = {str(a): float(flagged[(actions == a) & (labels == 1)].mean()) for a in sorted(set(actions[labels == 1]))}
    metrics |= {f"test_detection_rate_{a}": r for a, r in rates.items()}
    return metrics, rates
