"""Evaluation figures of fume_hood: confusion matrix and Grad-CAM overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: PNG text chunks: none (matplotlib writes its version by default); an image depends on its figure only
PNG_METADATA = {"Software": None}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, n_levels: int, out_dir: Path) -> Path:
    plt = _figure()
    counts = np.zeros((n_levels, n_levels), dtype=int)
    np.add.at(counts, (actual, predicted), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", color="black")
    ticks = np.arange(n_levels)
    ax.set_xticks(ticks, [str(t + 1) for t in ticks])
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    ax.set_xlabel("predicted rating")
    ax.set_ylabel("expert rating")
    ax.set_title("fume_hood test split")
    fig.tight_layout()
    path = out_dir / "confusion_matrix.png"
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def gradcam_grid(
    gray: np.ndarray,
    heat: np.ndarray,
    masks: np.ndarray,
    actual: np.ndarray,
    predicted: np.ndarray,
    ids: np.ndarray,
    n_samples: int,
    out_dir: Path,
) -> Path:
    """Photos with their Grad-CAM (what lowered the rating) and the simulator's cause outline."""
    plt = _figure()
    order = np.argsort(-masks.reshape(len(masks), -1).mean(axis=1))[:n_samples]
    cols = min(4, max(1, len(order)))
    rows = int(np.ceil(len(order) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order, strict=False):
        ax.imshow(gray[i], cmap="gray", vmin=0, vmax=1)
        ax.imshow(heat[i], cmap="inferno", alpha=0.45, vmin=0, vmax=1)
        if masks[i].any():
            ax.contour(masks[i], levels=[0.5], colors="cyan", linewidths=0.8)
        r, c = np.unravel_index(np.argmax(heat[i]), heat[i].shape)
        ax.plot(c, r, "g+", markersize=10)
        ax.set_title(f"{ids[i]}: expert {actual[i]} / model {predicted[i]}", fontsize=8)
    fig.suptitle("Grad-CAM (bright = lowered the rating); cyan = simulator's causes; + = peak", fontsize=9)
    fig.tight_layout()
    path = out_dir / "gradcam_overlays.png"
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return path
