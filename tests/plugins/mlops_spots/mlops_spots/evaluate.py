"""Test accuracy, predictions and Grad-CAM maps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

from mlops.data.arrays import load_array
from mlops.inference.gradcam import grad_cam
from mlops.tasks.base import Evaluation
from mlops_spots import plots
from mlops_spots.metrics import val_metrics
from mlops_spots.params import SpotsParams
from mlops_spots.prepare import dataset


def evaluate(model: nn.Module, prepared_dir: Path, params: SpotsParams, out_dir: Path) -> Evaluation:
    out_dir.mkdir(parents=True, exist_ok=True)
    x, y = dataset(prepared_dir, "test").tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    metrics = {f"test_{k}": v for k, v in val_metrics(logits, y).items()}
    shown = x[: params.evaluate.gradcam_samples]
    heat = grad_cam(model, shown, lambda out: out.max(dim=1).values, model.cam_layer).numpy()
    image = plots.gradcam_grid(shown[:, 0].numpy(), heat, out_dir)
    ids = load_array(prepared_dir, "test", "ids")
    table = pd.DataFrame({"image_id": ids, "actual": y.numpy(), "predicted": logits.argmax(1).numpy()})
    return Evaluation(metrics=metrics, images={"gradcam.png": image}, tables={"predictions": table})
