"""ttubule's losses and metrics: the segmentation losses, the study's threshold sweep, its per-image scores and
instance matching.

The threshold sweep counts all 256 thresholds at once (one histogram per slice and class, cumulated):
scikit-learn's scorers would take one pass over the voxels per threshold, and its curves cut at the distinct
scores, not at the study's fixed 0-255 grid. The test scores are per-slice counts at one threshold (the
validation split's), so any resample of slices is scored from the counts alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mlops.tasks.ttubule.layout import N_CLASSES, SCORED, TTUBULE
from mlops.tasks.ttubule.model import LossConfig, label_mode_of, probabilities

#: the constants each loss reads besides its choice and the boundary weight
NEEDS = {"weighted_ce": ("rare_weight",), "focal": ("focal_gamma",), "tversky": ("tversky_alpha",)}
#: the loss the validation metrics report for every model, whatever it trains on: plain cross-entropy + half the
#: boundary term (so arms and trials with different losses compare)
PLAIN = LossConfig("ce", rare_weight=None, boundary_weight=0.5, focal_gamma=None, tversky_alpha=None)


# --- losses -------------------------------------------------------------------------------------------


def _soft_overlap(prob: torch.Tensor, target: torch.Tensor, alpha: float, eps: float = 1.0) -> torch.Tensor:
    """Tversky index per channel over the batch (alpha = 0.5 is Dice); prob/target (N, C, H, W)."""
    dims = (0, 2, 3)
    tp = (prob * target).sum(dims)
    fp = (prob * (1 - target)).sum(dims)
    fn = ((1 - prob) * target).sum(dims)
    return (tp + eps) / (tp + alpha * fp + (1 - alpha) * fn + eps)


def segmentation_loss(outputs: torch.Tensor, targets: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Class loss (per ``cfg.loss``) + ``boundary_weight`` x boundary BCE; targets (N, 2, H, W): label, boundary.

    The boundary target holds the contours of every instance (mitochondria and T-tubules); single-label
    learns those of the T-tubules only, so no mitochondrion information reaches it through the boundary output.
    """
    missing = [name for name in NEEDS.get(cfg.loss, ()) if getattr(cfg, name) is None]
    if missing:
        raise ValueError(f"the {cfg.loss} loss needs {missing}: build the model with the task's build_model")
    labels = targets[:, 0].long()
    boundary = targets[:, 1].float()
    class_logits = outputs[:, :-1]
    if label_mode_of(outputs) == "multi":
        weight = None
        if cfg.loss == "weighted_ce":
            weight = torch.ones(N_CLASSES, device=outputs.device)
            weight[TTUBULE] = cfg.rare_weight
        ce = F.cross_entropy(class_logits, labels, weight=weight, reduction="none")
        if cfg.loss == "focal":
            pt = torch.exp(-F.cross_entropy(class_logits, labels, reduction="none"))
            ce = (1 - pt) ** cfg.focal_gamma * ce
        class_loss = ce.mean() if weight is None else ce.sum() / weight[labels].sum()
        if cfg.loss in ("dice", "tversky"):
            prob = class_logits.softmax(dim=1)[:, 1:]
            onehot = F.one_hot(labels, N_CLASSES).permute(0, 3, 1, 2).float()[:, 1:]
            alpha = 0.5 if cfg.loss == "dice" else cfg.tversky_alpha
            class_loss = class_loss + (1 - _soft_overlap(prob, onehot, alpha)).mean()
    else:
        logit = class_logits[:, 0]
        target = (labels == TTUBULE).float()
        # Single-label knows T-tubules only: its boundary target is their contours, not the mitochondria's too.
        boundary = boundary * target
        pos_weight = torch.tensor(cfg.rare_weight, device=outputs.device) if cfg.loss == "weighted_ce" else None
        bce = F.binary_cross_entropy_with_logits(logit, target, pos_weight=pos_weight, reduction="none")
        if cfg.loss == "focal":
            p = torch.sigmoid(logit)
            pt = p * target + (1 - p) * (1 - target)
            bce = (1 - pt) ** cfg.focal_gamma * bce
        class_loss = bce.mean()
        if cfg.loss in ("dice", "tversky"):
            alpha = 0.5 if cfg.loss == "dice" else cfg.tversky_alpha
            overlap = _soft_overlap(torch.sigmoid(logit)[:, None], target[:, None], alpha)
            class_loss = class_loss + (1 - overlap).mean()
    boundary_loss = F.binary_cross_entropy_with_logits(outputs[:, -1], boundary)
    return class_loss + cfg.boundary_weight * boundary_loss


def plain_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``PLAIN``: cross-entropy + 0.5 x boundary BCE."""
    return segmentation_loss(outputs, targets, PLAIN)


# --- the study's threshold sweep ----------------------------------------------------------------------


def threshold_counts(prob: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TP, FP, FN) for every threshold t = 0..255 of ``round(255 * prob) > t``."""
    q = np.clip(np.rint(np.asarray(prob, dtype=np.float64) * 255), 0, 255).astype(np.int64).ravel()
    pos = np.asarray(positive, dtype=bool).ravel()
    hist_pos = np.bincount(q[pos], minlength=256)
    hist_neg = np.bincount(q[~pos], minlength=256)
    tp = pos.sum() - np.cumsum(hist_pos)
    fp = (~pos).sum() - np.cumsum(hist_neg)
    return tp.astype(np.float64), fp.astype(np.float64), pos.sum() - tp.astype(np.float64)


def scores(tp, fp, fn) -> dict[str, np.ndarray]:
    """Precision, recall, F and IoU from counts (arrays or scalars); precision is 1 with no predictions."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 0.0)
    return {"precision": precision, "recall": recall, "f": f, "iou": iou}


def class_channels(label_mode: str) -> dict[int, int]:
    """Scored class -> channel of ``probabilities()``: all three multi-label, only T-tubules single-label."""
    return {c: c for c in SCORED} if label_mode == "multi" else {TTUBULE: 0}


def best_thresholds(prob: np.ndarray, labels: np.ndarray, cls: int) -> list[int]:
    """The threshold (0-255) maximising F on each of the (N, H, W) slices that contain ``cls`` (the study's
    per-image sweep); slices without the class have no best threshold and are left out."""
    best = []
    for p, lab in zip(prob, labels, strict=True):
        positive = lab == cls
        if positive.any():
            best.append(int(np.argmax(scores(*threshold_counts(p, positive))["f"])))
    return best


def mean_best_threshold(best: list[int]) -> int:
    """The study's threshold: the mean of the per-slice best ones, rounded; 127 (mid-range) when no slice
    holds the class."""
    return int(round(float(np.mean(best)))) if best else 127


def pooled_curves(prob: np.ndarray, labels: np.ndarray, cls: int) -> pd.DataFrame:
    """Pooled precision, recall and F of ``cls`` per threshold 0-255 over all slices (a descriptive figure)."""
    curves = scores(*threshold_counts(prob, labels == cls))
    return pd.DataFrame({"threshold": np.arange(256), **{k: v for k, v in curves.items() if k != "iou"}})


def slice_counts(
    prob: np.ndarray, labels: np.ndarray, cls: int, threshold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice of (N, H, W): TP, FP, FN voxels of ``round(255 * prob) > threshold`` against ``labels == cls``
    (the masks the served predictor draws)."""
    predicted = np.rint(np.asarray(prob, dtype=np.float64) * 255) > threshold
    positive = np.asarray(labels) == cls
    axes = tuple(range(1, predicted.ndim))
    tp = (predicted & positive).sum(axis=axes)
    fp = (predicted & ~positive).sum(axis=axes)
    fn = (~predicted & positive).sum(axis=axes)
    return tp.astype(np.int64), fp.astype(np.int64), fn.astype(np.int64)


#: the per-slice count columns of a class in the cases table
COUNTS = ("tp", "fp", "fn")


def score_cases(cases: pd.DataFrame) -> dict[str, float]:
    """The test metrics of every class with ``<class>_tp/_fp/_fn`` columns, from any set of slice rows.

    Headline (the study's): precision, recall, F and IoU per slice at the validation threshold, averaged over
    the slices that contain the class. A slice without the class is skipped for that class: its F is 0 with any
    false positive and undefined without, which would score emptiness, not segmentation (the study sweeps and
    scores the images a class appears in). Its false positives still count in ``pooled_f``/``pooled_iou``
    (all slices' voxels summed), the second, clearly named view. A slice that holds the class where the model
    predicts none of it has precision 0 (as F and recall; sklearn's zero_division default). No slice with the
    class (a bootstrap resample without it): NaN.
    """
    out: dict[str, float] = {}
    for name in (n for n in SCORED.values() if f"{n}_tp" in cases):
        tp, fp, fn = (cases[f"{name}_{c}"].to_numpy(dtype=np.float64) for c in COUNTS)
        has = tp + fn > 0
        if has.any():
            t, p, n = tp[has], fp[has], fn[has]
            with np.errstate(divide="ignore", invalid="ignore"):
                per_slice = {
                    "precision": np.where(t + p > 0, t / (t + p), 0.0),
                    "recall": t / (t + n),
                    "f": 2 * t / (2 * t + p + n),
                    "iou": t / (t + p + n),
                }
            out |= {f"test_{name}_{k}": float(v.mean()) for k, v in per_slice.items()}
        else:
            out |= {f"test_{name}_{k}": float("nan") for k in ("precision", "recall", "f", "iou")}
        pooled = scores(tp.sum(), fp.sum(), fn.sum()) if has.any() else {"f": np.nan, "iou": np.nan}
        out[f"test_{name}_pooled_f"] = float(pooled["f"])
        out[f"test_{name}_pooled_iou"] = float(pooled["iou"])
    return out


def instance_matches(pred: np.ndarray, truth: np.ndarray, min_iou: float = 0.5) -> tuple[int, int, int]:
    """(matched, predicted, true) instance counts; a match is a pair with IoU >= ``min_iou`` (unique then)."""
    n_pred, n_true = int(pred.max()), int(truth.max())
    if n_pred == 0 or n_true == 0:
        return 0, len(np.unique(pred[pred > 0])), len(np.unique(truth[truth > 0]))
    both = (pred > 0) | (truth > 0)
    pairs = np.bincount(pred[both].astype(np.int64) * (n_true + 1) + truth[both], minlength=(n_pred + 1) * (n_true + 1))
    inter = pairs.reshape(n_pred + 1, n_true + 1)
    size_p, size_t = np.bincount(pred.ravel(), minlength=n_pred + 1), np.bincount(truth.ravel(), minlength=n_true + 1)
    iou = inter / np.maximum(size_p[:, None] + size_t[None, :] - inter, 1)
    matched = int((iou[1:, 1:] >= min_iou).sum())
    return matched, len(np.unique(pred[pred > 0])), len(np.unique(truth[truth > 0]))


def val_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Plain loss and, per scored class, the best F over thresholds 0-255 on the pooled split."""
    with torch.no_grad():
        metrics = {"loss": float(plain_loss(outputs, targets))}
        probs = probabilities(outputs).numpy()
    labels = targets[:, 0].numpy()
    label_mode = "multi" if outputs.shape[1] == N_CLASSES + 1 else "single"
    for cls, channel in class_channels(label_mode).items():
        curves = scores(*threshold_counts(probs[:, channel], labels == cls))
        best = int(np.argmax(curves["f"]))
        metrics[f"{SCORED[cls]}_f"] = float(curves["f"][best])
        metrics[f"{SCORED[cls]}_iou"] = float(curves["iou"][best])
    return metrics
