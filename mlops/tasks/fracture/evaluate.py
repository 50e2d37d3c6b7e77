"""fracture's test-split evaluation: metrics, calibration, the "unknown" answer's cost, the out-of-domain probe
(natural photos the model must not be sure about), Grad-CAM figures and the tables behind them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from mlops.data.arrays import load_array, read_meta
from mlops.inference.gradcam import grad_cam
from mlops.tasks.base import Evaluation
from mlops.tasks.fracture import plots
from mlops.tasks.fracture.layout import CLASSES
from mlops.tasks.fracture.metrics import confidence_auroc, expected_calibration_error, val_metrics
from mlops.tasks.fracture.model import N_CLASSES, UNKNOWN, predicted_class_logit
from mlops.tasks.fracture.params import FractureParams
from mlops.tasks.fracture.prepare import dataset
from mlops.tasks.fracture.preprocess import square_gray_input


def ood_photo_paths() -> list[Path]:
    """Natural photos shipped inside installed wheels (never fractographs): the out-of-domain probe."""
    import matplotlib
    import sklearn

    candidates = [
        Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
        Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg",
    ]
    try:  # scikit-image is optional; its sample photos widen the probe when it is installed
        import skimage

        data = Path(skimage.__file__).parent / "data"
        candidates += [data / name for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")]
    except ImportError:
        pass
    return [p for p in candidates if p.is_file()]


def ood_inputs(size: int, crops: int) -> tuple[np.ndarray, list[str]]:
    """Model inputs (N, size, size) from the probe photos: each whole, plus up to 4 corner crops."""
    images, names = [], []
    for path in ood_photo_paths():
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        images.append(square_gray_input(rgb, size))
        names.append(path.stem)
        half = min(rgb.width, rgb.height) // 2
        corners = [(0, 0), (rgb.width - half, 0), (0, rgb.height - half), (rgb.width - half, rgb.height - half)]
        for k, (left, top) in enumerate(corners[:crops]):
            images.append(square_gray_input(rgb.crop((left, top, left + half, top + half)), size))
            names.append(f"{path.stem}-crop{k}")
    if not images:
        return np.zeros((0, size, size), dtype=np.float32), []
    return np.stack(images).astype(np.float32), names


@dataclass
class OutOfDomain:
    """The model's answers on the natural probe photos."""

    inputs: np.ndarray
    probs: np.ndarray
    confidence: np.ndarray
    metrics: dict[str, float]
    table: pd.DataFrame
    tradeoff: pd.DataFrame


def out_of_domain_check(
    model: nn.Module, size: int, crops: int, threshold: float, test_confidence: np.ndarray
) -> OutOfDomain:
    """Confidence on natural photos vs test fractographs: metrics, per-photo answers, threshold trade-off."""
    x, names = ood_inputs(size, crops)
    if len(x):
        with torch.no_grad():
            probs = model.eval()(torch.from_numpy(x)[:, None]).softmax(dim=1).numpy()
    else:
        probs = np.zeros((0, N_CLASSES), dtype=np.float32)
    conf, best = probs.max(axis=1, initial=0.0), probs.argmax(axis=1)
    nan = float("nan")
    metrics = {
        "ood_images": float(len(x)),
        # NaN, not a misleading number, when no probe photo is installed.
        "ood_mean_max_probability": float(conf.mean()) if len(x) else nan,
        "ood_unknown_share": float((conf < threshold).mean()) if len(x) else nan,
        # Threshold-free: how well confidence separates test fractographs from photos (0.5 = not at all).
        "ood_auroc": confidence_auroc(test_confidence, conf),
    }
    table = pd.DataFrame(
        {
            "image": names,
            "most_likely": [CLASSES[int(i)] for i in best],
            "confidence": conf,
            "answer": [UNKNOWN if c < threshold else CLASSES[int(i)] for c, i in zip(conf, best, strict=True)],
        }
    )
    # What other thresholds would withhold in domain and catch out of domain (to choose input.unknown_threshold).
    grid = np.round(np.arange(0.3, 0.96, 0.05), 2)
    tradeoff = pd.DataFrame(
        {
            "threshold": grid,
            "test_unknown_share": [float((test_confidence < t).mean()) for t in grid],
            "ood_unknown_share": [float((conf < t).mean()) if len(x) else nan for t in grid],
        }
    )
    return OutOfDomain(x, probs, conf, metrics, table, tradeoff)


def evaluate(model: nn.Module, prepared_dir: Path, params: FractureParams, out_dir: Path) -> Evaluation:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = read_meta(prepared_dir)
    threshold = float(meta["unknown_threshold"])
    x, y = dataset(prepared_dir, "test").tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    probs = logits.softmax(dim=1).numpy()
    predicted, actual = probs.argmax(axis=1), y.numpy()
    metrics = {f"test_{k}": v for k, v in val_metrics(logits, y).items()}
    for c, name in enumerate(CLASSES):
        in_class = actual == c
        metrics[f"test_recall_{name}"] = float((predicted[in_class] == c).mean()) if in_class.any() else float("nan")
    correct = predicted == actual
    ece, reliability = expected_calibration_error(probs, correct, params.evaluate.calibration_bins)
    metrics["test_ece"] = ece
    confidence = probs.max(axis=1)
    answered = confidence >= threshold
    # In-domain cost of the "unknown" answer: how often a real fractograph is withheld, and the
    # accuracy on those that are answered.
    metrics["test_unknown_share"] = float((~answered).mean())
    metrics["test_answered_accuracy"] = float(correct[answered].mean()) if answered.any() else float("nan")

    ood = out_of_domain_check(model, meta["input_size"], params.evaluate.ood_crops, threshold, confidence)
    metrics |= ood.metrics

    heat = grad_cam(model, x, predicted_class_logit, model.cam_layer).numpy()
    ids = load_array(prepared_dir, "test", "ids")
    images = {
        "confusion_matrix.png": plots.confusion_matrix(actual, predicted, CLASSES, out_dir),
        "reliability_diagram.png": plots.reliability_diagram(reliability, ece, out_dir),
        "gradcam_overlays.png": plots.gradcam_grid(
            x[:, 0].numpy(),
            heat,
            actual,
            predicted,
            confidence,
            ids,
            CLASSES,
            params.evaluate.gradcam_samples,
            out_dir,
        ),
        "out_of_domain.png": plots.out_of_domain(
            confidence, ood.inputs, ood.confidence, ood.probs, CLASSES, threshold, out_dir
        ),
    }
    answers = [CLASSES[p] if a else UNKNOWN for p, a in zip(predicted, answered, strict=True)]
    predictions = pd.DataFrame(
        {
            "image_id": ids,
            "actual": [CLASSES[a] for a in actual],
            "predicted": [CLASSES[p] for p in predicted],
            "answer": answers,
            "confidence": confidence,
        }
    )
    tables = {
        "predictions": predictions,
        "reliability": reliability,
        "out_of_domain": ood.table,
        "unknown_threshold_tradeoff": ood.tradeoff,
    }
    return Evaluation(metrics=metrics, images=images, tables=tables)
