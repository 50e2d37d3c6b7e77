"""skeleton's evaluation on the test videos: window scores against the true anomalous spans, at the serving
threshold calibrated on held-out normal videos (the val split; nothing here is chosen on the test split); and the
study's figures across arms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from mlops.data.arrays import load_array, read_meta
from mlops.tasks.base import CASE, GROUP, STRATUM, Evaluation, ModelSpec
from mlops.tasks.skeleton import plots
from mlops.tasks.skeleton.metrics import action_rates, score, serving_threshold
from mlops.tasks.skeleton.model import score_windows
from mlops.tasks.skeleton.params import SkeletonParams


def split_scores(
    model: nn.Module, prepared_dir: Path, split: str, with_latents: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(window starts, anomaly scores, latents if asked) of every window of one prepared split."""
    maps, starts = load_array(prepared_dir, split, "x"), load_array(prepared_dir, split, "starts")
    window = int(read_meta(prepared_dir)["window"])
    scores, latents = score_windows(model, maps, starts, window, with_latents=with_latents)
    return starts, scores, latents


def calibrated_threshold(model: nn.Module, prepared_dir: Path, params: SkeletonParams) -> float:
    """The serving threshold of ``model``: set on the scores of the held-out normal windows (the val split)."""
    _, scores, _ = split_scores(model, prepared_dir, "val")
    return serving_threshold(scores, params.evaluate.false_alarm_rate)


def calibrate(model: nn.Module, spec: ModelSpec, prepared_dir: Path, params: SkeletonParams) -> ModelSpec:
    """The spec with the serving threshold in ``extra`` (to be called after training, before saving)."""
    threshold = calibrated_threshold(model, prepared_dir, params)
    extra = {**spec.extra, "threshold": threshold, "false_alarm_rate": params.evaluate.false_alarm_rate}
    return ModelSpec(spec.task, spec.model, spec.model_kwargs, spec.inference_module, extra)


def window_labels(prepared_dir: Path, split: str, starts: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Per window 0/1 and action: by its last frame (what an online detector judges at that moment) or by the
    majority of its frames (the study's: abnormal when more than half its frames are; the action then is the most
    frequent one in the window, the alphabetically first of a tie)."""
    y, actions = load_array(prepared_dir, split, "y"), load_array(prepared_dir, split, "actions")
    window = int(read_meta(prepared_dir)["window"])
    if rule == "last":
        return y[starts + window - 1], actions[starts + window - 1]
    index = starts[:, None] + np.arange(window)
    labels = (y[index].mean(axis=1) > 0.5).astype(np.int64)
    names, codes = np.unique(actions, return_inverse=True)
    counts = (codes[index][..., None] == np.arange(len(names))).sum(axis=1)
    return labels, names[counts.argmax(axis=1)].astype(str)


def evaluate(model: nn.Module, prepared_dir: Path, params: SkeletonParams, out_dir: Path) -> Evaluation:
    """Test metrics at the serving threshold (calibrated on the val split only), the cases table they are
    computed from (one row per test window, grouped by video), the per-window table and the study's figures."""
    from sklearn.metrics import roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    e = params.evaluate
    threshold = calibrated_threshold(model, prepared_dir, params)
    starts, scores, latents = split_scores(model, prepared_dir, "test", with_latents=True)
    labels, actions = window_labels(prepared_dir, "test", starts, e.window_label)
    window = int(read_meta(prepared_dir)["window"])
    scores = scores.astype(np.float64)  # the cases' scores: a reader recomputing a metric gets the same number
    flagged = scores > threshold

    groups, frames = load_array(prepared_dir, "test", "groups"), load_array(prepared_dir, "test", "frame")
    videos, end = groups[starts], starts + window - 1
    cases = pd.DataFrame(
        {
            CASE: [f"{v}:{f}" for v, f in zip(videos, frames[starts], strict=True)],
            GROUP: videos.astype(str),
            STRATUM: "test",
            "label": labels,
            "score": scores,
            "flagged": flagged,
            "action": actions,
        }
    )
    metrics = score(cases)
    metrics |= {"serving_threshold": threshold, "test_windows": float(len(cases))}
    rates = action_rates(metrics)
    table = pd.DataFrame(
        {"video": groups[end], "end_frame": frames[end], "score": scores, "label": labels,
         "flagged": flagged, "action": actions}
    )  # fmt: skip
    images = {}
    if 0 < labels.sum() < len(labels):
        fpr, tpr, _ = roc_curve(labels, scores)
        images["roc_curve.png"] = plots.roc_curves(
            {"model": (fpr, tpr, metrics["test_auroc"])}, out_dir / "roc_curve.png"
        )
    timeline = []
    for video in dict.fromkeys(table["video"]):
        rows = table[table["video"] == video]
        timeline.append((video, rows["end_frame"].to_numpy(), rows["score"].to_numpy(), _spans(rows)))
    if timeline:
        images["score_timeline.png"] = plots.score_timeline(timeline, threshold, out_dir / "score_timeline.png")
    if rates:
        images["detection_by_action.png"] = plots.detection_by_action(
            rates, metrics["test_false_alarm_rate"], out_dir / "detection_by_action.png"
        )
    if latents is not None and len(latents) >= 10:
        points, keep = embed_2d(latents, e.embedding, e.embedding_max_points)
        images["latent_embedding.png"] = plots.latent_embedding(
            points, labels[keep] == 1, e.embedding, out_dir / "latent_embedding.png"
        )
    return Evaluation(metrics=metrics, images=images, tables={"window_scores": table}, cases=cases)


def compare(tables: dict[str, dict[str, pd.DataFrame]], out_dir: Path) -> dict[str, Path]:
    """All models' ROC curves in one figure and their score timelines stacked, from each arm's evaluation
    tables (arms without a ``window_scores`` table are left out)."""
    return compare_arms({arm: t["window_scores"] for arm, t in tables.items() if "window_scores" in t}, out_dir)


def compare_arms(tables: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """The study's side-by-side figures from each model's ``window_scores`` table (what ``evaluate``
    returns): all ROC curves in one figure, and the score timelines stacked (scores differ in scale between
    models, so each row has its own axis)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    curves, timelines = {}, []
    for arm, table in tables.items():
        labels, scores = table["label"].to_numpy(), table["score"].to_numpy()
        if 0 < labels.sum() < len(labels):
            fpr, tpr, _ = roc_curve(labels, scores)
            curves[arm] = (fpr, tpr, float(roc_auc_score(labels, scores)))
        for video in dict.fromkeys(table["video"]):
            rows = table[table["video"] == video]
            timelines.append((f"{arm}: {video}", rows["end_frame"].to_numpy(), rows["score"].to_numpy(), _spans(rows)))
    images = {}
    if curves:
        images["roc_curves.png"] = plots.roc_curves(curves, out_dir / "roc_curves.png")
    if timelines:
        images["score_timelines.png"] = plots.score_timeline(timelines, None, out_dir / "score_timelines.png")
    return images


def _spans(rows: pd.DataFrame) -> list[tuple[int, int, str]]:
    """Runs of consecutive abnormal windows as (first end frame, last end frame, action)."""
    spans, start = [], None
    ends, labels, actions = rows["end_frame"].to_numpy(), rows["label"].to_numpy(), rows["action"].to_numpy()
    for i in range(len(rows) + 1):
        inside = i < len(rows) and labels[i] == 1 and (start is None or actions[i] == actions[start])
        if start is not None and not inside:
            spans.append((int(ends[start]), int(ends[i - 1]), str(actions[start])))
            start = None
        if start is None and i < len(rows) and labels[i] == 1:
            start = i
    return spans


def embed_2d(latents: np.ndarray, method: str, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """2-D points of (an evenly spaced subset of) latents by t-SNE or PCA, and the indices kept."""
    keep = np.unique(np.linspace(0, len(latents) - 1, min(max_points, len(latents))).astype(int))
    data = latents[keep]
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=0).fit_transform(data), keep
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(data) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(data), keep
