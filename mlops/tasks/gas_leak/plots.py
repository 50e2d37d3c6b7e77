"""Evaluation figures of gas_leak: predicted heat maps over the last frame, true and predicted source."""

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


def overlay_grid(
    last: np.ndarray,
    heat: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    occluded: np.ndarray,
    ids: np.ndarray,
    n_samples: int,
    split: str,
    head: str,
    out_dir: Path,
) -> Path:
    """Last frames with the model's map; green x = true source, red + = predicted. Hidden sources first,
    since they are the case the study is about."""
    plt = _figure()
    order = np.argsort(~occluded, kind="stable")[:n_samples]
    cols = min(4, max(1, len(order)))
    rows = int(np.ceil(len(order) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order, strict=False):
        ax.imshow(last[i], cmap="gray")
        ax.imshow(heat[i], cmap="inferno", alpha=0.45, vmin=0, vmax=1)
        ax.plot(true[i, 0], true[i, 1], "gx", markersize=9, mew=2)
        ax.plot(pred[i, 0], pred[i, 1], "r+", markersize=11, mew=2)
        hidden = "hidden" if occluded[i] else "visible"
        ax.set_title(f"{ids[i]} ({hidden})\nZ true {true[i, 2]:.1f} / pred {pred[i, 2]:.1f} pix/s", fontsize=7)
    kind = "source probability" if head == "heatmap" else "input-gradient saliency"
    fig.suptitle(f"gas_leak {split}, {head} head: {kind}; green x true, red + predicted", fontsize=9)
    fig.tight_layout()
    path = out_dir / f"heatmap_overlays_{split}.png"
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return path
