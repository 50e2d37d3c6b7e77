"""fume_hood's test-split evaluation: the per-photo cases and the metrics scored from them, the pointing game of
Grad-CAM against the cause masks (beside a model-free pointer's), figures."""

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
from mlops.tasks.fume_hood import plots
from mlops.tasks.fume_hood.layout import N_LEVELS
from mlops.tasks.fume_hood.metrics import ACTUAL, CROSS_ENTROPY, PREDICTED, model_free_heat, pointing_game, score
from mlops.tasks.fume_hood.model import lowering_evidence
from mlops.tasks.fume_hood.params import FumeHoodParams
from mlops.tasks.fume_hood.prepare import dataset


def photo_cases(ids: np.ndarray, labs: np.ndarray, logits: torch.Tensor, y: torch.Tensor) -> pd.DataFrame:
    """One row per test photo: its lab (the independent unit: a lab's photos share its habits), the expert's and
    the model's rating (1..5) and the photo's cross-entropy."""
    return pd.DataFrame(
        {
            CASE: ids,
            GROUP: labs,
            STRATUM: "test",
            ACTUAL: y.numpy() + 1,
            PREDICTED: logits.argmax(dim=1).numpy() + 1,
            CROSS_ENTROPY: F.cross_entropy(logits, y, reduction="none").numpy().astype(np.float64),
        }
    )


def evaluate(model: nn.Module, prepared_dir: Path, params: FumeHoodParams, out_dir: Path) -> Evaluation:
    out_dir.mkdir(parents=True, exist_ok=True)
    x, y = dataset(prepared_dir, "test").tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    ids = load_array(prepared_dir, "test", "ids")
    cases = photo_cases(ids, load_array(prepared_dir, "test", "groups"), logits, y)
    metrics = score(cases)

    # The pointing game is over the few photos with causes and not a function of the cases: no interval.
    e = params.evaluate
    masks = load_array(prepared_dir, "test", "masks").astype(bool)
    heat = grad_cam(model, x, lowering_evidence, model.cam_layer).numpy()
    hits, chance = pointing_game(heat, masks, e.pointing_tolerance_px)
    metrics["pointing_game_hit_rate"] = hits
    metrics["pointing_game_chance"] = chance
    free = model_free_heat(x[:, 0].numpy(), e.model_free_blur_px)
    metrics["pointing_game_model_free"] = pointing_game(free, masks, e.pointing_tolerance_px)[0]

    actual, predicted = cases[ACTUAL].to_numpy(), cases[PREDICTED].to_numpy()
    images = {
        "confusion_matrix.png": plots.confusion_matrix(actual - 1, predicted - 1, N_LEVELS, out_dir),
        "gradcam_overlays.png": plots.gradcam_grid(
            x[:, 0].numpy(), heat, masks, actual, predicted, ids, e.gradcam_samples, out_dir
        ),
    }
    predictions = pd.DataFrame({"photo_id": ids, "actual": actual, "predicted": predicted})
    return Evaluation(metrics=metrics, images=images, tables={"predictions": predictions}, cases=cases)
