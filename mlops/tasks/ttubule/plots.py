"""Evaluation figures of ttubule: F/precision/recall against the threshold, prediction overlays, instances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlops.tasks.ttubule.inference import class_overlay
from mlops.tasks.ttubule.layout import TTUBULE

#: PNG text chunks: none (matplotlib writes its version by default); an image depends on its figure only
PNG_METADATA = {"Software": None}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def threshold_curves(curves: pd.DataFrame, thresholds: dict[int, float], label_mode: str, out_dir: Path) -> Path:
    """Pooled test precision, recall and F per threshold 0-255, one panel per class (descriptive: nothing is
    chosen on them); the validation threshold the test scores use marked."""
    plt = _figure()
    names = list(dict.fromkeys(curves["class"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name, threshold in zip(axes[0], names, thresholds.values(), strict=True):
        part = curves[curves["class"] == name]
        for column, colour in (("f", "black"), ("precision", "tab:blue"), ("recall", "tab:orange")):
            ax.plot(part["threshold"], part[column], color=colour, label=column)
        ax.axvline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"val threshold = {threshold:.0f}")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, 255)
        ax.set_xlabel("threshold on 255 x probability")
        ax.set_title(name)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"ttubule test split ({label_mode}-label): pooled curves; threshold from the validation slices")
    fig.tight_layout()
    path = out_dir / "threshold_curves.png"
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def _pick_slices(labels: np.ndarray, n: int) -> np.ndarray:
    """Slices with the most T-tubule voxels first (where the rare class is to be judged)."""
    counts = (labels == TTUBULE).reshape(len(labels), -1).sum(axis=1)
    return np.argsort(-counts, kind="stable")[: max(1, n)]


def overlays(
    x: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    thresholds: dict[int, float],
    label_mode: str,
    ids: np.ndarray,
    n: int,
    out_dir: Path,
) -> Path:
    """Test slices: the image, and predicted classes (at the evaluation thresholds) with true T-tubules outlined."""
    plt = _figure()
    chosen = _pick_slices(labels, n)
    fig, axes = plt.subplots(len(chosen), 2, figsize=(7, 3.4 * len(chosen)), squeeze=False)
    for row, i in zip(axes, chosen, strict=True):
        channel = dict(zip(thresholds, range(len(thresholds)), strict=True))
        masks = {
            cls: np.rint(probs[i, cls if label_mode == "multi" else channel[cls]] * 255) > t
            for cls, t in thresholds.items()
        }
        row[0].imshow(x[i], cmap="gray", vmin=0, vmax=255)
        row[0].set_title(f"{ids[i]} (normalised)", fontsize=8)
        row[1].imshow(class_overlay(x[i], masks))
        if (labels[i] == TTUBULE).any():
            row[1].contour(labels[i] == TTUBULE, levels=[0.5], colors="cyan", linewidths=0.7)
        row[1].set_title("prediction: red mito, green myofibril, yellow T-tubule; cyan = truth", fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    path = out_dir / "overlays.png"
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def instance_slices(
    x: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    truth_ids: np.ndarray,
    ids: np.ndarray,
    n: int,
    out_dir: Path,
) -> Path:
    """Predicted 3-D T-tubule instances (one colour each) next to the true ones, on the same slices."""
    plt = _figure()
    chosen = _pick_slices(labels, n)
    fig, axes = plt.subplots(len(chosen), 2, figsize=(7, 3.4 * len(chosen)), squeeze=False)
    truth = np.where(labels == TTUBULE, truth_ids, 0)
    if not truth.any():  # no instance file: connected components stand in for the true instances
        from scipy import ndimage

        truth = ndimage.label(labels == TTUBULE)[0]
    palette = np.random.default_rng(0).uniform(0.3, 1.0, size=(int(max(predicted.max(), truth.max())) + 1, 3))
    for row, i in zip(axes, chosen, strict=True):
        for ax, ids_map, title in ((row[0], predicted[i], "predicted instances"), (row[1], truth[i], "true instances")):
            rgb = np.repeat(x[i][..., None] / 255.0, 3, axis=2) * 0.6
            rgb[ids_map > 0] = palette[ids_map[ids_map > 0]]
            ax.imshow(rgb)
            ax.set_title(f"{ids[i]}: {title} ({len(np.unique(ids_map[ids_map > 0]))} here)", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path = out_dir / "ttubule_instances.png"
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def compare_arms(curves: dict[str, pd.DataFrame], thresholds: dict[str, float], out_dir: Path) -> Path:
    """The study's comparison in one figure: T-tubule F, precision and recall against the threshold, per arm
    (each arm's pooled test curves, ``threshold_curves`` of its evaluation), each arm's validation threshold
    (the one its test scores use) dashed. No test-swept optimum is shown: the curves only describe."""
    plt = _figure()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    for colour, (arm, table) in zip(("tab:blue", "tab:orange", "tab:green", "tab:red"), curves.items(), strict=False):
        part = table[table["class"] == "ttubule"]
        threshold = thresholds.get(arm)
        for ax, column in zip(axes, ("f", "precision", "recall"), strict=True):
            label = f"{arm} (val threshold {threshold:.0f})" if column == "f" and threshold is not None else arm
            ax.plot(part["threshold"], part[column], color=colour, label=label)
            if threshold is not None:
                ax.axvline(threshold, color=colour, linestyle="--", linewidth=1)
    for ax, column in zip(axes, ("F", "precision", "recall"), strict=True):
        ax.set_title(f"T-tubule {column}")
        ax.set_xlabel("threshold on 255 x probability")
        ax.set_xlim(0, 255)
        ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("ttubule test split: the arms' pooled T-tubule curves")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "ttubule_arms.png"
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def compare(tables: dict[str, dict[str, pd.DataFrame]], out_dir: Path) -> dict[str, Path]:
    """The arms' T-tubule curves (F, precision, recall against the threshold) in one figure, from each arm's
    evaluation tables (its validation threshold from ``class_metrics``, when there); none when no arm has its
    ``threshold_curves``."""
    curves = {arm: t["threshold_curves"] for arm, t in tables.items() if "threshold_curves" in t}
    thresholds = {
        arm: float(t["class_metrics"].set_index("class").loc["ttubule", "val_threshold"])
        for arm, t in tables.items()
        if "class_metrics" in t and "ttubule" in set(t["class_metrics"]["class"])
    }
    return {"ttubule_arms.png": compare_arms(curves, thresholds, out_dir)} if curves else {}
