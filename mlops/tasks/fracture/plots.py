"""Evaluation figures of fracture: confusion matrix, reliability diagram, Grad-CAM overlays, out-of-domain."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mlops.tasks.fracture.model import UNKNOWN

#: PNG text chunks: none (matplotlib writes its version by default); an image depends on its figure only
PNG_METADATA = {"Software": None}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(name: str) -> str:
    return name.replace("_", "\n")


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, classes: Sequence[str], out_dir: Path) -> Path:
    """Counts of (actual, predicted) failure modes on the test split."""
    plt = _figure()
    n = len(classes)
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (actual, predicted), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(counts, cmap="Blues")
    for (i, j), k in np.ndenumerate(counts):
        ax.text(j, i, str(k), ha="center", va="center", color="black")
    ticks = np.arange(n)
    ax.set_xticks(ticks, [_short(c) for c in classes], fontsize=8)
    ax.set_yticks(ticks, [_short(c) for c in classes], fontsize=8)
    ax.set_xlabel("predicted failure mode")
    ax.set_ylabel("labelled failure mode")
    ax.set_title("fracture test split")
    return _save(fig, plt, out_dir / "confusion_matrix.png")


def reliability_diagram(table: pd.DataFrame, ece: float, out_dir: Path) -> Path:
    """Accuracy against confidence per bin (a calibrated model follows the diagonal), with bin counts."""
    plt = _figure()
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centres = (table["bin_low"] + table["bin_high"]) / 2
    width = float((table["bin_high"] - table["bin_low"]).iloc[0])
    filled = table["count"] > 0
    ax.bar(centres[filled], table["accuracy"][filled], width=width * 0.95, color="tab:blue", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect calibration")
    ax.plot(table["confidence"][filled], table["accuracy"][filled], "o", color="tab:orange", markersize=3)
    ax.set_ylabel("accuracy in bin")
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability diagram (ECE = {ece:.3f})")
    ax.legend(fontsize=8, loc="upper left")
    ax_count.bar(centres, table["count"], width=width * 0.95, color="gray")
    ax_count.set_xlabel("confidence (max class probability)")
    ax_count.set_ylabel("images")
    ax_count.set_xlim(0, 1)
    return _save(fig, plt, out_dir / "reliability_diagram.png")


def gradcam_grid(
    gray: np.ndarray,
    heat: np.ndarray,
    actual: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    ids: np.ndarray,
    classes: Sequence[str],
    n_samples: int,
    out_dir: Path,
) -> Path:
    """Test images with the Grad-CAM of their predicted class; one or more per labelled class."""
    plt = _figure()
    # Round-robin over the classes so every failure mode appears, misclassified images first within each.
    per_class = [
        list(np.flatnonzero(actual == c)[np.argsort(predicted[actual == c] == c, kind="stable")])
        for c in range(len(classes))
    ]
    order: list[int] = []
    while len(order) < n_samples and any(per_class):
        for queue in per_class:
            if queue and len(order) < n_samples:
                order.append(int(queue.pop(0)))
    cols = min(4, max(1, len(order)))
    rows = int(np.ceil(len(order) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order, strict=False):
        ax.imshow(gray[i], cmap="gray", vmin=0, vmax=1)
        ax.imshow(heat[i], cmap="inferno", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(
            f"{ids[i]}\nlabel {classes[actual[i]]}\nmodel {classes[predicted[i]]} ({confidence[i]:.2f})", fontsize=7
        )
    fig.suptitle("Grad-CAM of the predicted class (bright = evidence used)", fontsize=9)
    return _save(fig, plt, out_dir / "gradcam_overlays.png")


def out_of_domain(
    test_confidence: np.ndarray,
    ood_gray: np.ndarray,
    ood_confidence: np.ndarray,
    ood_probs: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    out_dir: Path,
) -> Path:
    """Confidence on test fractographs vs natural photos, the "unknown" threshold, and the photos' answers."""
    plt = _figure()
    shown = min(len(ood_gray), 10)
    thumbs_rows = int(np.ceil(shown / 5))
    fig = plt.figure(figsize=(10, 3.2 + 2.2 * thumbs_rows))
    grid = fig.add_gridspec(1 + thumbs_rows, 5, height_ratios=[1.6] + [1.0] * thumbs_rows)
    ax = fig.add_subplot(grid[0, :])
    bins = np.linspace(0.25, 1.0, 16)
    ax.hist(test_confidence, bins=bins, alpha=0.6, density=True, label=f"test fractographs (n={len(test_confidence)})")
    if len(ood_confidence):
        ax.hist(ood_confidence, bins=bins, alpha=0.6, density=True, label=f"natural photos (n={len(ood_confidence)})")
    ax.axvline(threshold, color="k", linestyle="--", label=f'"unknown" below {threshold:.2f}')
    ax.set_xlabel("max class probability")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("out-of-domain behaviour")
    for k in range(shown):
        thumb = fig.add_subplot(grid[1 + k // 5, k % 5])
        thumb.imshow(ood_gray[k], cmap="gray", vmin=0, vmax=1)
        thumb.axis("off")
        best = int(np.argmax(ood_probs[k]))
        answer = classes[best] if ood_confidence[k] >= threshold else UNKNOWN
        thumb.set_title(f"{answer}\n({classes[best]} {ood_confidence[k]:.2f})", fontsize=7)
    return _save(fig, plt, out_dir / "out_of_domain.png")
