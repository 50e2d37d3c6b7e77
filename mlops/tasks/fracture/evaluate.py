"""fracture's test-split evaluation: the cases (test fractographs and the out-of-domain probe, natural photos the
model must not be sure about) and the metrics scored from them (accuracy, calibration, the "unknown" answer's cost),
Grad-CAM figures and the tables behind them; and the calibration of the served "unknown" threshold on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mlops.data.arrays import load_array, read_meta
from mlops.inference.gradcam import grad_cam
from mlops.tasks.base import CASE, GROUP, STRATUM, Evaluation, ModelSpec
from mlops.tasks.fracture import plots
from mlops.tasks.fracture.layout import CLASSES
from mlops.tasks.fracture.metrics import (
    ACTUAL,
    ANSWERED,
    CONFIDENCE,
    CORRECT,
    CROSS_ENTROPY,
    IN_DOMAIN,
    PREDICTED,
    PROBE,
    expected_calibration_error,
    score,
    unknown_threshold,
)
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


def ood_inputs(size: int, crops: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Model inputs (N, size, size) from the probe photos: each whole, plus up to 4 corner crops; their names and
    the photo each comes from (a photo and its crops are one group: they are not independent)."""
    images, names, photos = [], [], []
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
        photos += [path.stem] * (len(names) - len(photos))
    if not images:
        return np.zeros((0, size, size), dtype=np.float32), [], []
    return np.stack(images).astype(np.float32), names, photos


def probabilities(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Class probabilities (N, classes) of model inputs (N, 1, size, size)."""
    if not len(x):
        return np.zeros((0, N_CLASSES), dtype=np.float32)
    with torch.no_grad():
        return model.eval()(x).softmax(dim=1).numpy()


def val_confidence(model: nn.Module, prepared_dir: Path) -> np.ndarray:
    """The top class probability of each validation fractograph."""
    x, _ = dataset(prepared_dir, "val").tensors
    return probabilities(model, x).max(axis=1)


def calibrated_threshold(model: nn.Module, prepared_dir: Path, params: FractureParams) -> float:
    """The "unknown" threshold of ``model``: withholds ``input.unknown_val_share`` of the validation fractographs.
    Calibration and evaluation both call this, so the evaluated threshold is the served one."""
    return unknown_threshold(val_confidence(model, prepared_dir), params.input.unknown_val_share)


def calibrate(model: nn.Module, spec: ModelSpec, prepared_dir: Path, params: FractureParams) -> ModelSpec:
    """The spec with the served "unknown" threshold in ``extra`` (called after training, before saving)."""
    threshold = calibrated_threshold(model, prepared_dir, params)
    extra = {**spec.extra, "unknown_threshold": threshold, "unknown_val_share": params.input.unknown_val_share}
    return ModelSpec(spec.task, spec.model, spec.model_kwargs, spec.inference_module, extra)


def fractograph_cases(
    ids: np.ndarray, specimens: np.ndarray, actual: np.ndarray, logits: torch.Tensor, threshold: float
) -> pd.DataFrame:
    """One row per test fractograph; its specimen (or member) is the independent unit."""
    probs = logits.softmax(dim=1).numpy()
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1).astype(np.float64)
    ce = F.cross_entropy(logits, torch.from_numpy(actual), reduction="none").numpy().astype(np.float64)
    return pd.DataFrame(
        {
            CASE: ids,
            GROUP: specimens,
            STRATUM: IN_DOMAIN,
            ACTUAL: actual,
            PREDICTED: predicted,
            CONFIDENCE: confidence,
            CORRECT: predicted == actual,
            ANSWERED: confidence >= threshold,
            CROSS_ENTROPY: ce,
        }
    )


def probe_cases(names: list[str], photos: list[str], probs: np.ndarray, threshold: float) -> pd.DataFrame:
    """One row per probe input (a natural photo or one of its crops): no class, so never correct; the photo is the
    group."""
    confidence = probs.max(axis=1).astype(np.float64)
    return pd.DataFrame(
        {
            CASE: [f"{PROBE}:{name}" for name in names],
            GROUP: [f"{PROBE}:{photo}" for photo in photos],
            STRATUM: PROBE,
            ACTUAL: np.full(len(names), -1, dtype=np.int64),
            PREDICTED: probs.argmax(axis=1).astype(np.int64),
            CONFIDENCE: confidence,
            CORRECT: np.zeros(len(names), dtype=bool),
            ANSWERED: confidence >= threshold,
            CROSS_ENTROPY: np.full(len(names), np.nan),
        }
    )


def threshold_tradeoff(
    val_confidence: np.ndarray, test_confidence: np.ndarray, ood_confidence: np.ndarray
) -> pd.DataFrame:
    """What other settings of ``input.unknown_val_share`` would withhold in domain and catch out of domain (each
    threshold calibrated on validation, as the served one is)."""
    shares = np.asarray([0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3])
    thresholds = [unknown_threshold(val_confidence, s) for s in shares]
    nan = float("nan")
    return pd.DataFrame(
        {
            "unknown_val_share": shares,
            "threshold": thresholds,
            "test_unknown_share": [float((test_confidence < t).mean()) for t in thresholds],
            "ood_unknown_share": [
                float((ood_confidence < t).mean()) if len(ood_confidence) else nan for t in thresholds
            ],
        }
    )


def evaluate(model: nn.Module, prepared_dir: Path, params: FractureParams, out_dir: Path) -> Evaluation:
    out_dir.mkdir(parents=True, exist_ok=True)
    e = params.evaluate
    meta = read_meta(prepared_dir)
    threshold = calibrated_threshold(model, prepared_dir, params)

    x, y = dataset(prepared_dir, "test").tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    ids = load_array(prepared_dir, "test", "ids")
    test = fractograph_cases(ids, load_array(prepared_dir, "test", "groups"), y.numpy(), logits, threshold)
    ood_x, ood_names, ood_photos = ood_inputs(meta["input_size"], e.ood_crops)
    ood_probs = probabilities(model, torch.from_numpy(ood_x)[:, None])
    probe = probe_cases(ood_names, ood_photos, ood_probs, threshold)
    cases = pd.concat([test, probe], ignore_index=True)
    metrics = score(cases, e.calibration_bins)
    metrics["ood_images"] = float(len(probe))
    metrics["unknown_threshold"] = threshold

    actual, predicted = test[ACTUAL].to_numpy(), test[PREDICTED].to_numpy()
    confidence, answered = test[CONFIDENCE].to_numpy(), test[ANSWERED].to_numpy()
    probs = logits.softmax(dim=1).numpy()
    _, reliability = expected_calibration_error(probs, test[CORRECT].to_numpy(), e.calibration_bins)
    heat = grad_cam(model, x, predicted_class_logit, model.cam_layer).numpy()
    ood_confidence = probe[CONFIDENCE].to_numpy()
    images = {
        "confusion_matrix.png": plots.confusion_matrix(actual, predicted, CLASSES, out_dir),
        "reliability_diagram.png": plots.reliability_diagram(reliability, metrics["test_ece"], out_dir),
        "gradcam_overlays.png": plots.gradcam_grid(
            x[:, 0].numpy(), heat, actual, predicted, confidence, ids, CLASSES, e.gradcam_samples, out_dir
        ),
        "out_of_domain.png": plots.out_of_domain(
            confidence, ood_x, ood_confidence, ood_probs, CLASSES, threshold, out_dir
        ),
    }
    predictions = pd.DataFrame(
        {
            "image_id": ids,
            "actual": [CLASSES[a] for a in actual],
            "predicted": [CLASSES[p] for p in predicted],
            "answer": [CLASSES[p] if a else UNKNOWN for p, a in zip(predicted, answered, strict=True)],
            "confidence": confidence,
        }
    )
    out_of_domain = pd.DataFrame(
        {
            "image": ood_names,
            "most_likely": [CLASSES[int(i)] for i in probe[PREDICTED]],
            "confidence": ood_confidence,
            "answer": [
                CLASSES[int(i)] if a else UNKNOWN for i, a in zip(probe[PREDICTED], probe[ANSWERED], strict=True)
            ],
        }
    )
    tables = {
        "predictions": predictions,
        "reliability": reliability,
        "out_of_domain": out_of_domain,
        "unknown_threshold_tradeoff": threshold_tradeoff(
            val_confidence(model, prepared_dir), confidence, ood_confidence
        ),
    }
    return Evaluation(metrics=metrics, images=images, tables=tables, cases=cases)
