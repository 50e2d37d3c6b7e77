"""ttubule's calibration of the per-class thresholds on the validation slices, and its test evaluation at them.

Nothing is chosen on the test split: the thresholds come from the validation slices (the study's rule, the mean
of the per-slice best thresholds), the same for the served predictor (``calibrate``), the test scores and the
3-D instances.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from mlops.data.arrays import load_array, read_meta
from mlops.tasks.base import CASE, GROUP, STRATUM, Evaluation, ModelSpec
from mlops.tasks.ttubule import plots
from mlops.tasks.ttubule.instances import InstanceSettings, class_instances, instance_stats, split_instances
from mlops.tasks.ttubule.layout import MITO, SCORED, TTUBULE
from mlops.tasks.ttubule.metrics import (
    best_thresholds,
    class_channels,
    instance_matches,
    mean_best_threshold,
    pooled_curves,
    score_cases,
    slice_counts,
)
from mlops.tasks.ttubule.model import predict_probabilities
from mlops.tasks.ttubule.params import TTubuleParams


def val_thresholds(model: nn.Module, prepared_dir: Path) -> tuple[dict[int, int], pd.DataFrame]:
    """The study's threshold per scored class (0-255) on the validation slices: the mean of the per-slice best
    thresholds of the slices holding the class; and those per-slice bests as a table."""
    x = load_array(prepared_dir, "val", "x")
    labels = load_array(prepared_dir, "val", "y")[:, 0]
    ids = load_array(prepared_dir, "val", "ids")
    probs = predict_probabilities(model, x, int(read_meta(prepared_dir)["infer_tile"]))
    thresholds, rows = {}, []
    for cls, channel in class_channels(model.label_mode).items():
        best = best_thresholds(probs[:, channel], labels, cls)
        thresholds[cls] = mean_best_threshold(best)
        holding = [str(i) for i, lab in zip(ids, labels, strict=True) if (lab == cls).any()]
        rows += [{"class": SCORED[cls], "slice": i, "best_threshold": b} for i, b in zip(holding, best, strict=True)]
    return thresholds, pd.DataFrame(rows, columns=["class", "slice", "best_threshold"])


def calibrate(model: nn.Module, spec: ModelSpec, prepared_dir: Path, params: TTubuleParams) -> ModelSpec:
    """Store the validation thresholds (``val_thresholds``) and the instance post-processing in the spec, so the
    served predictor decides as evaluated."""
    thresholds, _ = val_thresholds(model, prepared_dir)
    instances = params.evaluate.model_dump(exclude={"overlay_slices"})
    named = {SCORED[cls]: t for cls, t in thresholds.items()}
    extra = spec.extra | {"thresholds": named, "threshold_split": "val", "instances": instances}
    return replace(spec, extra=extra)


def slice_cases(
    ids: np.ndarray, probs: np.ndarray, labels: np.ndarray, label_mode: str, thresholds: dict[int, int]
) -> pd.DataFrame:
    """One row per test slice: ``case`` its id (``<volume>:<z>``), ``group`` its volume (slices of one volume are
    not independent), ``stratum`` "test", and per scored class its TP/FP/FN voxels at the validation threshold."""
    cases = pd.DataFrame({CASE: [str(i) for i in ids], GROUP: [str(i).rsplit(":", 1)[0] for i in ids], STRATUM: "test"})
    for cls, channel in class_channels(label_mode).items():
        counts = slice_counts(probs[:, channel], labels, cls, thresholds[cls])
        for column, values in zip(("tp", "fp", "fn"), counts, strict=True):
            cases[f"{SCORED[cls]}_{column}"] = values
    return cases


def evaluate(model: nn.Module, prepared_dir: Path, params: TTubuleParams, out_dir: Path) -> Evaluation:
    """The study's protocol on the test slices at the validation thresholds: per scored class precision, recall,
    F and IoU per slice averaged over the slices holding the class (``metrics.score_cases``, from the cases
    table), then 3-D instances per stack (boundary-aware watershed) against the true ones."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = read_meta(prepared_dir)
    label_mode = model.label_mode
    channels = class_channels(label_mode)
    thresholds, val_table = val_thresholds(model, prepared_dir)

    x = load_array(prepared_dir, "test", "x")
    y = load_array(prepared_dir, "test", "y")
    labels, stacks = y[:, 0], load_array(prepared_dir, "test", "groups")
    z_index, truth_ids = load_array(prepared_dir, "test", "z"), load_array(prepared_dir, "test", "instances")
    voxel = load_array(prepared_dir, "test", "voxel_size_nm")
    ids = load_array(prepared_dir, "test", "ids")
    probs = predict_probabilities(model, x, int(meta["infer_tile"]))

    cases = slice_cases(ids, probs, labels, label_mode, thresholds)
    metrics = score_cases(cases)
    metrics |= {f"val_{SCORED[cls]}_threshold": float(t) for cls, t in thresholds.items()}
    rows, curves = [], []
    for cls, channel in channels.items():
        name = SCORED[cls]
        holding = int((cases[f"{name}_tp"] + cases[f"{name}_fn"] > 0).sum())
        scored = {k: metrics[f"test_{name}_{k}"] for k in ("precision", "recall", "f", "iou", "pooled_f", "pooled_iou")}
        rows.append({"class": name, "val_threshold": thresholds[cls], "slices_with_class": holding, **scored})
        # Pooled test curves over every threshold: a descriptive figure only, nothing is chosen on them.
        curves.append(pooled_curves(probs[:, channel], labels, cls).assign(**{"class": name}))

    s = params.evaluate
    inst_rows = []
    predicted_maps: dict[int, np.ndarray] = {}
    for cls in (c for c in (TTUBULE, MITO) if c in channels):
        name = SCORED[cls]
        settings = InstanceSettings(
            mask_threshold=thresholds[cls] / 255.0,
            marker_threshold=s.marker_threshold,
            blur_sigma_z=s.blur_sigma_z,
            blur_sigma_xy=s.blur_sigma_xy,
            min_marker_voxels=s.min_marker_voxels,
            min_instance_voxels=s.min_instance_voxels,
        )
        pred_map = np.zeros(labels.shape, dtype=np.int32)
        totals = dict.fromkeys(("count", "true_count", "matched", "volume", "true_volume", "vox", "true_vox"), 0.0)
        n_voxels = 0
        for stack in np.unique(stacks):
            rows_s = np.flatnonzero(stacks == stack)
            rows_s = rows_s[np.argsort(z_index[rows_s])]
            size = tuple(float(v) for v in voxel[rows_s[0]])
            pred = split_instances(probs[rows_s, channels[cls]], probs[rows_s, -1], settings)
            truth = class_instances(labels[rows_s], cls, truth_ids[rows_s] if truth_ids[rows_s].any() else None)
            pred_map[rows_s] = pred
            ps, ts = instance_stats(pred, size), instance_stats(truth, size)
            matched, _, _ = instance_matches(pred, truth)
            inst_rows.append(
                {
                    "stack": str(stack),
                    "class": name,
                    "count": ps.count,
                    "true_count": ts.count,
                    "matched": matched,
                    "volume_um3": ps.volume_um3,
                    "true_volume_um3": ts.volume_um3,
                    "volume_fraction": ps.volume_fraction,
                    "true_volume_fraction": ts.volume_fraction,
                }
            )
            for key, value in (
                ("count", ps.count),
                ("true_count", ts.count),
                ("matched", matched),
                ("volume", ps.volume_um3),
                ("true_volume", ts.volume_um3),
                ("vox", (pred > 0).sum()),
                ("true_vox", (truth > 0).sum()),
            ):
                totals[key] += float(value)
            n_voxels += pred.size
        predicted_maps[cls] = pred_map
        metrics |= {
            f"test_{name}_instances": totals["count"],
            f"test_{name}_instances_true": totals["true_count"],
            f"test_{name}_instances_matched": totals["matched"],
            f"test_{name}_volume_um3": totals["volume"],
            f"test_{name}_volume_um3_true": totals["true_volume"],
            f"test_{name}_volume_fraction": totals["vox"] / max(n_voxels, 1),
            f"test_{name}_volume_fraction_true": totals["true_vox"] / max(n_voxels, 1),
        }

    curve_table = pd.concat(curves, ignore_index=True)
    images = {
        "threshold_curves.png": plots.threshold_curves(curve_table, thresholds, label_mode, out_dir),
        "overlays.png": plots.overlays(x, labels, probs, thresholds, label_mode, ids, s.overlay_slices, out_dir),
    }
    if TTUBULE in predicted_maps:
        images["ttubule_instances.png"] = plots.instance_slices(
            x, labels, predicted_maps[TTUBULE], truth_ids, ids, s.overlay_slices, out_dir
        )
    tables = {
        "class_metrics": pd.DataFrame(rows),
        "threshold_curves": curve_table,
        "val_slice_thresholds": val_table,
        "instances": pd.DataFrame(inst_rows),
    }
    return Evaluation(metrics=metrics, images=images, tables=tables, cases=cases)
