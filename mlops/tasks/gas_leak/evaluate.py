"""gas_leak's test evaluation: errors on the test and field splits, each split by whether the source is hidden,
and the cases table they are computed from (one row per sequence, grouped by scene)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from mlops.data.arrays import load_array
from mlops.tasks.base import CASE, GROUP, STRATUM, Evaluation
from mlops.tasks.gas_leak import plots
from mlops.tasks.gas_leak.inference import explain_batch
from mlops.tasks.gas_leak.metrics import STRATA, error_table, score
from mlops.tasks.gas_leak.model import N_ANSWER
from mlops.tasks.gas_leak.params import GasLeakParams
from mlops.tasks.gas_leak.prepare import dataset


def evaluate(model: nn.Module, prepared_dir: Path, params: GasLeakParams, out_dir: Path) -> Evaluation:
    """Errors per split (test, field) and per subset (visible, occluded), the predictions, Table 1 and overlays.

    Every error is ``metrics.score`` of the cases table (one row per test or field sequence), the numbers the
    bootstrap recomputes per resample of scenes; only the subset sizes are added here."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    parts, images, frames_by_split = [], {}, {}
    head = "numeric"
    for split in STRATA:
        data = dataset(prepared_dir, split)
        x, targets = data.tensors
        occluded = load_array(prepared_dir, split, "occluded").astype(bool)
        ids = load_array(prepared_dir, split, "ids")
        answers, heat, kind = explain_batch(model, x)
        head = kind
        # float64 cases: a metric recomputed from the table (the bootstrap, a reader's check) agrees with these
        true = targets[:, :N_ANSWER].numpy().astype(np.float64)
        answers = answers.astype(np.float64)
        parts.append(
            pd.DataFrame(
                {
                    CASE: ids.astype(str),
                    GROUP: load_array(prepared_dir, split, "groups").astype(str),
                    STRATUM: split,
                    "occluded": occluded.astype(int),
                    "x": true[:, 0],
                    "y": true[:, 1],
                    "z": true[:, 2],
                    "pred_x": answers[:, 0],
                    "pred_y": answers[:, 1],
                    "pred_z": answers[:, 2],
                }
            )
        )
        last = load_array(prepared_dir, split, "x")[:, -1].astype(np.float32) if len(ids) else np.zeros((0, 1, 1))
        frames_by_split[split] = (last, heat, true, answers, occluded, ids)
    cases = pd.concat(parts, ignore_index=True)
    metrics = score(cases)
    for split in STRATA:
        rows = cases[cases[STRATUM] == split]
        metrics[f"{split}_visible_n"] = float((rows["occluded"] == 0).sum())
        metrics[f"{split}_occluded_n"] = float((rows["occluded"] == 1).sum())
    for split, (last, heat, true, answers, occluded, ids) in frames_by_split.items():
        if len(ids):
            images[f"heatmap_overlays_{split}.png"] = plots.overlay_grid(
                last, heat, true, answers, occluded, ids, params.evaluate.overlay_samples, split, head, out_dir
            )
    # The predictions table keeps its columns (split, seq_id first) for the plots that read it.
    predictions = cases.drop(columns=[GROUP]).rename(columns={STRATUM: "split", CASE: "seq_id"})
    predictions = predictions[["split", "seq_id", *predictions.columns.drop(["split", "seq_id"])]]
    return Evaluation(
        metrics=metrics,
        images=images,
        tables={"predictions": predictions, "error_table": error_table(metrics, head)},
        cases=cases,
    )
