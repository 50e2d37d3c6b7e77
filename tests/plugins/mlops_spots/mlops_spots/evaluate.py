"""Test accuracy, predictions and Grad-CAM maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mlops.data.arrays import load_array
from mlops.inference.gradcam import grad_cam
from mlops.tasks.base import CASE, GROUP, STRATUM, Evaluation
from mlops_spots import plots
from mlops_spots.metrics import score
from mlops_spots.params import SpotsParams
from mlops_spots.prepare import dataset


def evaluate(model: nn.Module, prepared_dir: Path, params: SpotsParams, out_dir: Path) -> Evaluation:
    out_dir.mkdir(parents=True, exist_ok=True)
    x, y = dataset(prepared_dir, "test").tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    ids = load_array(prepared_dir, "test", "ids")
    # One row per test image; its batch is the group (images taken together are not independent).
    cases = pd.DataFrame(
        {
            CASE: ids,
            GROUP: load_array(prepared_dir, "test", "groups"),
            STRATUM: "test",
            "actual": y.numpy(),
            "predicted": logits.argmax(1).numpy(),
            "cross_entropy": F.cross_entropy(logits, y, reduction="none").numpy().astype(np.float64),
        }
    )
    metrics = score(cases)
    shown = x[: params.evaluate.gradcam_samples]
    heat = grad_cam(model, shown, lambda out: out.max(dim=1).values, model.cam_layer).numpy()
    image = plots.gradcam_grid(shown[:, 0].numpy(), heat, out_dir)
    table = pd.DataFrame({"image_id": ids, "actual": y.numpy(), "predicted": logits.argmax(1).numpy()})
    return Evaluation(metrics=metrics, images={"gradcam.png": image}, tables={"predictions": table}, cases=cases)
