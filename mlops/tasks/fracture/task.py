"""fracture as a platform Task: SEM images + labels table -> failure mode, with Grad-CAM and "unknown".

Real-data layout (what ``simulate`` writes and ``ingest`` accepts)::

    images/<image_id>.png | .jpg | .jpeg   8-bit grayscale (or RGB) SEM images, any size >= the floor
    labels.csv                              image_id, class, source, magnification

``class`` is one of fatigue, ductile_overload, brittle_cleavage, intergranular; ``source`` names
what images are correlated by (the specimen, or the member company that sent it) and is the split
group; ``magnification`` is the nominal SEM magnification (metadata, not a model input).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field
from scipy import ndimage
from torch import nn
from torch.utils.data import TensorDataset

from mlops.config import Gates, Strict
from mlops.data.arrays import load_array, read_meta, save_split, write_meta
from mlops.data.layout import find_image, image_stats, read_labels_table
from mlops.data.split import split_groups
from mlops.inference.gradcam import grad_cam
from mlops.tasks import register_task, upload_cases
from mlops.tasks.base import Evaluation, ModelSpec, Task
from mlops.tasks.fracture import plots
from mlops.tasks.fracture.inference import UNKNOWN, square_gray_input
from mlops.tasks.fracture.model import MODELS, N_CLASSES, predicted_class_logit
from mlops.tasks.fracture.simulate import CLASSES, outlier_image, simulate_fractographs
from mlops.validation.columns import Columns, class_balance, declare, leakage_and_duplicates
from mlops.validation.drift import DriftParams

LABEL_COLUMNS = ("image_id", "class", "source", "magnification")
#: Target of an outlier-exposure image in the training split: "no class" (a uniform prediction).
OUTLIER = -1
#: Weight of an outlier image's loss relative to a fractograph's (Hendrycks et al. 2019 use 0.5).
OUTLIER_WEIGHT = 0.5


class SimulateParams(Strict):
    n_specimens: Annotated[int, Field(ge=3)]
    images_per_specimen: Annotated[int, Field(ge=1)]
    min_size: Annotated[int, Field(ge=16)]
    max_size: Annotated[int, Field(ge=16)]
    mean_low: float
    mean_high: float
    contrast_low: float
    contrast_high: float
    noise_std_max: float
    blur_sigma_max: float


class ValidationParams(Strict):
    min_images_per_class: int
    min_sources: int
    min_width: int
    min_height: int
    min_mean_intensity: float
    max_mean_intensity: float
    min_intensity_std: float
    #: no class may hold more than this share of the images (class balance)
    max_class_fraction: float
    drift: DriftParams


COLUMNS = Columns(sample="image_id", label="class", intensity="mean_intensity", group="source")


class SplitParams(Strict):
    val_fraction: float
    test_fraction: float


class InputParams(Strict):
    size: Annotated[int, Field(ge=16)]
    unknown_threshold: Annotated[float, Field(ge=0, le=1)]


class AugmentParams(Strict):
    copies: Annotated[int, Field(ge=1)]
    max_rotation_deg: Annotated[float, Field(ge=0, le=180)]
    brightness_low: float
    brightness_high: float
    contrast_low: float
    contrast_high: float
    outlier_share: Annotated[float, Field(ge=0, lt=1)]


class TrainParams(Strict):
    epochs: int
    patience: int


class EvaluateParams(Strict):
    gradcam_samples: int
    calibration_bins: Annotated[int, Field(ge=2)]
    ood_crops: Annotated[int, Field(ge=0, le=4)]


class FractureParams(Strict):
    simulate: SimulateParams
    validation: ValidationParams
    split: SplitParams
    input: InputParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
    gates: Gates


def read_labels(raw_dir: Path) -> pd.DataFrame:
    return read_labels_table(raw_dir, LABEL_COLUMNS, "fracture", {"image_id": str, "class": str, "source": str})


def stratified_group_split(
    groups: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Group split (no source crosses splits) done per majority class of the sources.

    With a few dozen specimens a plain group split can leave a class with one specimen in validation,
    which makes early stopping chase noise. Each source goes with its majority class; when a class has
    fewer than 3 sources, the plain group split is used.
    """
    table = pd.DataFrame({"group": groups, "y": y})
    majority = table.groupby("group")["y"].agg(lambda s: s.value_counts().index[0])
    if majority.value_counts().min() < 3 or majority.nunique() < 2:
        return split_groups(groups, val_fraction, test_fraction, seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for stratum, sources in majority.groupby(majority):
        names = sources.index.to_numpy()
        member = np.isin(groups, names)
        inner = split_groups(groups[member], val_fraction, test_fraction, seed + int(stratum))
        for split, rows in inner.items():
            parts[split].append(np.flatnonzero(member)[rows])
    return {split: np.sort(np.concatenate(rows)) for split, rows in parts.items()}


def augment_texture(image: np.ndarray, rng: np.random.Generator, p: AugmentParams) -> np.ndarray:
    """A label-preserving variant of a uint8 square texture.

    A fracture surface has no "up": any rotation and mirror keeps the failure mode. Right angles and
    flips are exact; a further free rotation uses reflected borders so no blank corners appear.
    Brightness and contrast mimic the SEM's knobs.
    """
    out = np.rot90(image, k=int(rng.integers(4))).astype(np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if p.max_rotation_deg > 0:
        angle = rng.uniform(-p.max_rotation_deg, p.max_rotation_deg)
        out = ndimage.rotate(out, angle, reshape=False, order=1, mode="reflect")
    mean = out.mean()
    out = (out - mean) * rng.uniform(p.contrast_low, p.contrast_high) + mean * rng.uniform(
        p.brightness_low, p.brightness_high
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


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


def expected_calibration_error(probs: np.ndarray, correct: np.ndarray, bins: int) -> tuple[float, pd.DataFrame]:
    """ECE over equal-width confidence bins, and the per-bin table of the reliability diagram."""
    confidence = probs.max(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        in_bin = which == b
        count = int(in_bin.sum())
        conf = float(confidence[in_bin].mean()) if count else float("nan")
        acc = float(correct[in_bin].mean()) if count else float("nan")
        if count:
            ece += count / len(confidence) * abs(acc - conf)
        rows.append(
            {"bin_low": edges[b], "bin_high": edges[b + 1], "count": count, "confidence": conf, "accuracy": acc}
        )
    return float(ece), pd.DataFrame(rows)


def confidence_auroc(in_domain: np.ndarray, out_of_domain: np.ndarray) -> float:
    """Probability that an in-domain image gets a higher confidence than an out-of-domain one (ties: half)."""
    if not len(in_domain) or not len(out_of_domain):
        return float("nan")
    diff = in_domain[:, None] - out_of_domain[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def macro_f1(predicted: np.ndarray, actual: np.ndarray, n_classes: int) -> float:
    """Macro-averaged F1 over the classes present in ``actual`` or ``predicted``."""
    scores = []
    for c in range(n_classes):
        tp = np.sum((predicted == c) & (actual == c))
        fp = np.sum((predicted == c) & (actual != c))
        fn = np.sum((predicted != c) & (actual == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


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


@register_task
class FractureTask(Task):
    name = "fracture"
    Params = FractureParams
    inference_module = "mlops.tasks.fracture.inference"
    models = MODELS

    # --- data ---------------------------------------------------------------------------------
    def simulate(self, out_dir: Path, params: FractureParams, seed: int, progress: Callable[[int], None]) -> int:
        p = params.simulate
        return simulate_fractographs(
            out_dir,
            p.n_specimens,
            p.images_per_specimen,
            p.min_size,
            p.max_size,
            (p.mean_low, p.mean_high),
            (p.contrast_low, p.contrast_high),
            p.noise_std_max,
            p.blur_sigma_max,
            seed,
            progress,
        )

    contribution_labels = CLASSES
    contribution_fields = ("magnification",)

    def add_contribution(
        self, raw_dir: Path, sample_id: str, data: bytes, suffix: str, label: str, source: str, meta: dict[str, str]
    ) -> Path:
        """Image under ``images/`` plus one labels.csv row; ``source`` (the member) becomes its split group."""
        if label not in CLASSES:
            raise ValueError(f"unknown failure mode {label!r}; known: {list(CLASSES)}")
        if find_image(raw_dir, sample_id) is not None:
            raise ValueError(f"{raw_dir} already holds an image {sample_id}; nothing was written")
        labels_path = raw_dir / "labels.csv"
        if not labels_path.is_file():
            raise ValueError(f"{labels_path} is missing: contributions join an existing fracture dataset")
        image = raw_dir / "images" / f"{sample_id}{suffix}"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(data)
        if not labels_path.read_bytes().endswith(b"\n"):  # a hand-edited table may lack the final newline
            with labels_path.open("a") as fh:
                fh.write("\n")
        row = pd.DataFrame([{"image_id": sample_id, "class": label, "source": source, **meta}])
        row.to_csv(labels_path, mode="a", header=False, index=False, columns=list(LABEL_COLUMNS))
        return image

    def simulated_samples(self, params: FractureParams) -> int:
        return params.simulate.n_specimens * params.simulate.images_per_specimen

    def ingest(self, src_dir: Path, out_dir: Path) -> int:
        labels = read_labels(src_dir)
        files = {iid: find_image(src_dir, iid) for iid in labels["image_id"]}
        missing = [iid for iid, path in files.items() if path is None]
        if missing:
            raise ValueError(f"{len(missing)} image(s) in labels.csv have no file under images/: {missing[:5]}")
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        for path in files.values():
            shutil.copy2(path, out_dir / "images" / path.name)
        shutil.copy2(src_dir / "labels.csv", out_dir / "labels.csv")
        return len(labels)

    def manifest(self, raw_dir: Path) -> pd.DataFrame:
        labels = read_labels(raw_dir)
        rows = [{**row, **image_stats(find_image(raw_dir, str(row["image_id"])))} for row in labels.to_dict("records")]
        table = pd.DataFrame(rows)
        table["class_count"] = table.groupby("class", dropna=False)["image_id"].transform("count")
        return declare(table, COLUMNS)

    def expectations(self, params: FractureParams) -> list[Any]:
        import great_expectations as gx

        v = params.validation
        e = gx.expectations
        return [
            e.ExpectColumnValuesToBeUnique(column="image_id"),
            e.ExpectColumnValuesToNotBeNull(column="source"),
            e.ExpectColumnUniqueValueCountToBeBetween(column="source", min_value=v.min_sources),
            e.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]),
            e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
            e.ExpectColumnValuesToBeInSet(column="class", value_set=list(CLASSES)),
            e.ExpectColumnDistinctValuesToEqualSet(column="class", value_set=list(CLASSES)),
            e.ExpectColumnValuesToBeBetween(column="class_count", min_value=v.min_images_per_class),
            e.ExpectColumnValuesToBeBetween(column="magnification", min_value=1, max_value=1_000_000),
            e.ExpectColumnValuesToBeBetween(column="width", min_value=v.min_width),
            e.ExpectColumnValuesToBeBetween(column="height", min_value=v.min_height),
            e.ExpectColumnValuesToBeInSet(column="mode", value_set=["L", "RGB"]),
            e.ExpectColumnValuesToBeBetween(
                column="mean_intensity", min_value=v.min_mean_intensity, max_value=v.max_mean_intensity
            ),
            e.ExpectColumnValuesToBeBetween(column="intensity_std", min_value=v.min_intensity_std),
            class_balance(0.0, v.max_class_fraction),
            *leakage_and_duplicates(COLUMNS),
        ]

    def prepare(self, raw_dir: Path, out_dir: Path, params: FractureParams, seed: int) -> dict[str, int]:
        labels = read_labels(raw_dir)
        unknown = sorted(set(labels["class"]) - set(CLASSES))
        if unknown:
            raise ValueError(f"unknown class(es) {unknown} in labels.csv; known: {list(CLASSES)}")
        size = params.input.size
        images = []
        for iid in labels["image_id"]:
            with Image.open(find_image(raw_dir, iid)) as img:
                images.append(np.rint(square_gray_input(img, size) * 255).astype(np.uint8))
        x = np.stack(images)
        y = labels["class"].map(CLASSES.index).to_numpy(dtype=np.int64)
        groups = labels["source"].astype(str).to_numpy()
        ids = labels["image_id"].astype(str).to_numpy()
        idx = stratified_group_split(groups, y, params.split.val_fraction, params.split.test_fraction, seed)

        a, rng = params.augment, np.random.default_rng(seed)
        train_x, train_rows = [], []
        for i in idx["train"]:
            for copy in range(a.copies):
                train_x.append(x[i] if copy == 0 else augment_texture(x[i], rng, a))
                train_rows.append(i)
        rows = np.asarray(train_rows, dtype=np.int64)
        train_y, train_groups, train_ids = y[rows], groups[rows], ids[rows]
        # Outlier exposure: procedural non-fractographs trained towards a uniform prediction, so that
        # images unlike any failure mode get low confidence (and an "unknown" answer when served).
        n_out = round(a.outlier_share / (1 - a.outlier_share) * len(rows))
        if n_out:
            train_x += [outlier_image(rng, size) for _ in range(n_out)]
            train_y = np.concatenate([train_y, np.full(n_out, OUTLIER, dtype=np.int64)])
            train_groups = np.concatenate([train_groups, np.full(n_out, "outlier")])
            train_ids = np.concatenate([train_ids, [f"outlier{k:05d}" for k in range(n_out)]])
        save_split(out_dir, "train", x=np.stack(train_x), y=train_y, groups=train_groups, ids=train_ids)
        for split in ("val", "test"):
            j = idx[split]
            save_split(out_dir, split, x=x[j], y=y[j], groups=groups[j], ids=ids[j])
        sizes = {"train": len(train_y), "val": len(idx["val"]), "test": len(idx["test"])}
        write_meta(
            out_dir,
            {
                "task": self.name,
                "input_size": size,
                "unknown_threshold": params.input.unknown_threshold,
                "classes": list(CLASSES),
                "sizes": sizes,
                "outliers": n_out,
            },
        )
        return sizes

    def dataset(self, prepared_dir: Path, split: str) -> TensorDataset:
        x = torch.from_numpy(load_array(prepared_dir, split, "x").astype(np.float32) / 255.0)[:, None]
        y = torch.from_numpy(load_array(prepared_dir, split, "y"))
        return TensorDataset(x, y)

    # --- model --------------------------------------------------------------------------------
    def build_model(self, hparams: dict[str, Any], prepared_dir: Path) -> tuple[nn.Module, ModelSpec]:
        kwargs = {
            "width": int(hparams["width"]),
            "depth": int(hparams["depth"]),
            "dropout": float(hparams["dropout"]),
        }
        meta = read_meta(prepared_dir)
        spec = ModelSpec(
            task=self.name,
            model=str(hparams["model"]),
            model_kwargs=kwargs,
            inference_module=self.inference_module,
            # The serving threshold travels with the weights (prepare copies it from params.input).
            extra={
                "input_size": meta["input_size"],
                "unknown_threshold": meta["unknown_threshold"],
                "classes": list(CLASSES),
            },
        )
        return self.models.build(spec.model, **kwargs), spec

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on fractographs; for outlier images, cross-entropy to the uniform distribution."""
        known = targets != OUTLIER
        if bool(known.all()):
            return F.cross_entropy(outputs, targets)
        total = outputs.new_zeros(())
        if bool(known.any()):
            total = total + F.cross_entropy(outputs[known], targets[known], reduction="sum")
        total = total - OUTLIER_WEIGHT * outputs[~known].log_softmax(dim=1).mean(dim=1).sum()
        return total / len(targets)

    def val_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        known = targets != OUTLIER
        outputs, targets = outputs[known], targets[known]
        predicted = outputs.argmax(dim=1)
        return {
            "loss": float(F.cross_entropy(outputs, targets)),
            "accuracy": float((predicted == targets).float().mean()),
            "macro_f1": macro_f1(predicted.numpy(), targets.numpy(), N_CLASSES),
        }

    def example_input(self, prepared_dir: Path) -> np.ndarray:
        return self.dataset(prepared_dir, "val").tensors[0][:2].numpy()

    # PNG/JPEG uploads: the shared example and bad cases of image tasks (mlops/tasks/upload_cases.py)
    example_upload = staticmethod(upload_cases.first_image_upload)
    bad_uploads = staticmethod(upload_cases.bad_image_uploads)

    def evaluate(self, model: nn.Module, prepared_dir: Path, params: FractureParams, out_dir: Path) -> Evaluation:
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = read_meta(prepared_dir)
        threshold = float(meta["unknown_threshold"])
        x, y = self.dataset(prepared_dir, "test").tensors
        model.eval()
        with torch.no_grad():
            logits = model(x)
        probs = logits.softmax(dim=1).numpy()
        predicted, actual = probs.argmax(axis=1), y.numpy()
        metrics = {f"test_{k}": v for k, v in self.val_metrics(logits, y).items()}
        for c, name in enumerate(CLASSES):
            in_class = actual == c
            metrics[f"test_recall_{name}"] = (
                float((predicted[in_class] == c).mean()) if in_class.any() else float("nan")
            )
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
