"""gas_leak's test evaluation: errors on the test and field splits, each split by whether the source is hidden."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from mlops.data.arrays import load_array
from mlops.tasks.base import Evaluation
from mlops.tasks.gas_leak import plots
from mlops.tasks.gas_leak.inference import explain_batch
from mlops.tasks.gas_leak.metrics import error_table, errors
from mlops.tasks.gas_leak.model import N_ANSWER
from mlops.tasks.gas_leak.params import GasLeakParams
from mlops.tasks.gas_leak.prepare import dataset


def evaluate(model: nn.Module, prepared_dir: Path, params: GasLeakParams, out_dir: Path) -> Evaluation:
    """Errors per split (test, field) and per subset (visible, occluded), the predictions, Table 1 and overlays."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    metrics: dict[str, float] = {}
    tables, images, frames_by_split = [], {}, {}
    head = "numeric"
    for split in ("test", "field"):
        data = dataset(prepared_dir, split)
        x, targets = data.tensors
        occluded = load_array(prepared_dir, split, "occluded").astype(bool)
        ids = load_array(prepared_dir, split, "ids")
        answers, heat, kind = explain_batch(model, x)
        head = kind
        true = targets[:, :N_ANSWER].numpy()
        for name, value in errors(answers, true).items():
            metrics[f"{split}_{name}"] = value
        for subset, mask in (("visible", ~occluded), ("occluded", occluded)):
            for name, value in errors(answers[mask], true[mask]).items():
                metrics[f"{split}_{subset}_{name}"] = value
            metrics[f"{split}_{subset}_n"] = float(mask.sum())
        tables.append(
            pd.DataFrame(
                {
                    "split": split,
                    "seq_id": ids,
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
    for split, (last, heat, true, answers, occluded, ids) in frames_by_split.items():
        if len(ids):
            images[f"heatmap_overlays_{split}.png"] = plots.overlay_grid(
                last, heat, true, answers, occluded, ids, params.evaluate.overlay_samples, split, head, out_dir
            )
    return Evaluation(
        metrics=metrics,
        images=images,
        tables={"predictions": pd.concat(tables, ignore_index=True), "error_table": error_table(metrics, head)},
    )
