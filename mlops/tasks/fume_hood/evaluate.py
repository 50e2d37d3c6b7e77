"""fume_hood's test-split evaluation: metrics, the pointing game of Grad-CAM against the cause masks, figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

from mlops.data.arrays import load_array
from mlops.inference.gradcam import grad_cam
from mlops.tasks.base import Evaluation
from mlops.tasks.fume_hood import plots
from mlops.tasks.fume_hood.layout import N_LEVELS
from mlops.tasks.fume_hood.metrics import macro_f1, pointing_game, val_metrics
from mlops.tasks.fume_hood.model import lowering_evidence
from mlops.tasks.fume_hood.params import FumeHoodParams
from mlops.tasks.fume_hood.prepare import dataset


def evaluate(model: nn.Module, prepared_dir: Path, params: FumeHoodParams, out_dir: Path) -> Evaluation:
    out_dir.mkdir(parents=True, exist_ok=True)
    test = dataset(prepared_dir, "test")
    x, y = test.tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    predicted = logits.argmax(dim=1)
    metrics = {f"test_{k}": v for k, v in val_metrics(logits, y).items()}
    metrics["test_macro_f1"] = macro_f1(y.numpy(), predicted.numpy())

    masks = load_array(prepared_dir, "test", "masks").astype(bool)
    heat = grad_cam(model, x, lowering_evidence, model.cam_layer).numpy()
    hits, chance = pointing_game(heat, masks, params.evaluate.pointing_tolerance_px)
    metrics["pointing_game_hit_rate"] = hits
    metrics["pointing_game_chance"] = chance

    ids = load_array(prepared_dir, "test", "ids")
    images = {
        "confusion_matrix.png": plots.confusion_matrix(y.numpy(), predicted.numpy(), N_LEVELS, out_dir),
        "gradcam_overlays.png": plots.gradcam_grid(
            x[:, 0].numpy(),
            heat,
            masks,
            y.numpy() + 1,
            predicted.numpy() + 1,
            ids,
            params.evaluate.gradcam_samples,
            out_dir,
        ),
    }
    predictions = pd.DataFrame({"photo_id": ids, "actual": y.numpy() + 1, "predicted": predicted.numpy() + 1})
    return Evaluation(metrics=metrics, images=images, tables={"predictions": predictions})
