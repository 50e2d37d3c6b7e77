"""Evaluation figures of skeleton: ROC curves, the anomaly-score timeline, latent embedding, per-action rates."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: PNG text chunks: none (matplotlib writes its version by default); an image depends on its figure only
PNG_METADATA = {"Software": None}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path | None) -> Path | bytes:
    plt = _figure()
    if path is None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        return buf.getvalue()
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> Path:
    """One figure with a ROC curve per model: name -> (false-positive rates, true-positive rates, AUROC)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("false-alarm rate (normal windows flagged)")
    ax.set_ylabel("detection rate (abnormal windows flagged)")
    ax.set_title("skeleton test video(s)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def score_timeline(
    videos: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[tuple[int, int, str]]]],
    threshold: float | None,
    path: Path | None,
) -> Path | bytes:
    """Anomaly score over time per video: (name, window end frames, scores, true anomalous spans
    (start, end inclusive, action)); spans shaded, the served threshold dashed. PNG bytes if no path."""
    plt = _figure()
    fig, axes = plt.subplots(len(videos), 1, figsize=(10, 2.6 * len(videos)), squeeze=False)
    for ax, (name, ends, scores, spans) in zip(axes[:, 0], videos, strict=True):
        for k, (start, end, action) in enumerate(spans):
            ax.axvspan(start, end, color="tab:red", alpha=0.18, label="true anomalous span" if k == 0 else None)
            ax.text((start + end) / 2, 1.0, action.replace("_", " "), transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=6, rotation=0)  # fmt: skip
        ax.plot(ends, scores, color="black", linewidth=0.9, label="anomaly score")
        if threshold is not None:
            ax.axhline(threshold, color="tab:blue", linestyle="--", linewidth=1, label="served threshold")
            flagged = scores > threshold
            ax.scatter(ends[flagged], scores[flagged], s=3, color="tab:blue")
        ax.set_ylabel("reconstruction error")
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_xlim(0, max(int(ends.max()) if len(ends) else 1, 1))
    axes[-1, 0].set_xlabel("frame (end of the 30-frame window)")
    axes[0, 0].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def latent_embedding(points: np.ndarray, abnormal: np.ndarray, method: str, path: Path) -> Path:
    """2-D embedding of window latents, normal vs abnormal."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for flag, colour, label in ((False, "tab:gray", "normal"), (True, "tab:red", "abnormal")):
        sel = abnormal == flag
        ax.scatter(points[sel, 0], points[sel, 1], s=5, alpha=0.6, color=colour, label=label)
    ax.set_title(f"latents of test windows ({method})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def detection_by_action(rates: dict[str, float], false_alarm: float, path: Path) -> Path:
    """Share of abnormal windows flagged per action, with the false-alarm rate on normal windows."""
    plt = _figure()
    names = list(rates)
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.4))
    ax.barh([n.replace("_", " ") for n in names], [rates[n] for n in names], color="tab:red")
    ax.axvline(false_alarm, color="tab:gray", linestyle="--", label=f"false alarms on normal ({false_alarm:.2f})")
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of windows flagged at the served threshold")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
