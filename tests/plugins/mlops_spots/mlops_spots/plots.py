"""Grad-CAM maps of a few test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def gradcam_grid(images: np.ndarray, heat: np.ndarray, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(2 * len(images), 2), squeeze=False)
    for ax, image, h in zip(axes[0], images, heat, strict=True):
        ax.imshow(image, cmap="gray")
        ax.imshow(h, cmap="jet", alpha=0.4)
        ax.axis("off")
    path = out_dir / "gradcam.png"
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path
