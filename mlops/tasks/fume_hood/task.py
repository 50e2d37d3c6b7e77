"""fume_hood as a platform Task: photos + labels table -> 5-level rating with Grad-CAM evidence."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import nn
from torch.utils.data import TensorDataset

from mlops.config import Gates, Strict
from mlops.data.arrays import load_array, read_meta, save_split, write_meta
from mlops.data.augment import augment_image
from mlops.data.layout import find_image, image_stats, read_labels_table
from mlops.data.split import split_groups
from mlops.inference.gradcam import grad_cam
from mlops.inference.images import to_gray_input
from mlops.tasks import register_task, upload_cases
from mlops.tasks.base import Evaluation, ModelSpec, Task
from mlops.tasks.fume_hood import plots
from mlops.tasks.fume_hood.model import MODELS, N_LEVELS, lowering_evidence
from mlops.tasks.fume_hood.simulate import simulate_photos
from mlops.validation.columns import Columns, class_balance, declare, leakage_and_duplicates
from mlops.validation.drift import DriftParams

LABEL_COLUMNS = ("photo_id", "lab_id", "rating")


class SimulateParams(Strict):
    n_photos: int
    n_labs: int
    width: int
    height: int
    rater_noise: float


class ValidationParams(Strict):
    min_photos_per_rating: int
    min_width: int
    min_height: int
    min_mean_intensity: float
    max_mean_intensity: float
    min_intensity_std: float
    #: no rating may hold more than this share of the photos (class balance)
    max_rating_fraction: float
    drift: DriftParams


COLUMNS = Columns(sample="photo_id", label="rating", intensity="mean_intensity", group="lab_id")


class SplitParams(Strict):
    val_fraction: float
    test_fraction: float


class ImageParams(Strict):
    width: int
    height: int


class AugmentParams(Strict):
    copies: int
    max_rotation_deg: float
    max_shift_frac: float
    brightness_low: float
    brightness_high: float


class TrainParams(Strict):
    epochs: int
    patience: int


class EvaluateParams(Strict):
    gradcam_samples: int
    pointing_tolerance_px: int


class FumeHoodParams(Strict):
    simulate: SimulateParams
    validation: ValidationParams
    split: SplitParams
    input: ImageParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
    gates: Gates


def read_labels(raw_dir: Path) -> pd.DataFrame:
    return read_labels_table(raw_dir, LABEL_COLUMNS, "fume_hood", {"photo_id": str, "lab_id": str})


@register_task
class FumeHoodTask(Task):
    name = "fume_hood"
    Params = FumeHoodParams
    inference_module = "mlops.tasks.fume_hood.inference"
    models = MODELS

    # --- data ---------------------------------------------------------------------------------
    def simulate(self, out_dir: Path, params: FumeHoodParams, seed: int, progress: Callable[[int], None]) -> int:
        p = params.simulate
        return simulate_photos(out_dir, p.n_photos, p.n_labs, p.width, p.height, p.rater_noise, seed, progress)

    def simulated_samples(self, params: FumeHoodParams) -> int:
        return params.simulate.n_photos

    def ingest(self, src_dir: Path, out_dir: Path) -> int:
        labels = read_labels(src_dir)
        missing = [pid for pid in labels["photo_id"] if find_image(src_dir, pid) is None]
        if missing:
            raise ValueError(f"{len(missing)} photo(s) in labels.csv have no image under images/: {missing[:5]}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("images", "masks"):
            if (src_dir / sub).is_dir():
                shutil.copytree(src_dir / sub, out_dir / sub, dirs_exist_ok=True)
        shutil.copy2(src_dir / "labels.csv", out_dir / "labels.csv")
        return len(labels)

    def manifest(self, raw_dir: Path) -> pd.DataFrame:
        labels = read_labels(raw_dir)
        rows = [{**row, **image_stats(find_image(raw_dir, str(row["photo_id"])))} for row in labels.to_dict("records")]
        table = pd.DataFrame(rows)
        table["rating_count"] = table.groupby("rating")["photo_id"].transform("count")
        return declare(table, COLUMNS)

    def expectations(self, params: FumeHoodParams) -> list[Any]:
        import great_expectations as gx

        v = params.validation
        e = gx.expectations
        return [
            e.ExpectColumnValuesToBeUnique(column="photo_id"),
            e.ExpectColumnValuesToNotBeNull(column="lab_id"),
            e.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]),
            e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
            e.ExpectColumnValuesToBeInSet(column="rating", value_set=list(range(1, N_LEVELS + 1))),
            e.ExpectColumnValuesToBeBetween(column="rating_count", min_value=v.min_photos_per_rating),
            e.ExpectColumnDistinctValuesToEqualSet(column="rating", value_set=list(range(1, N_LEVELS + 1))),
            e.ExpectColumnValuesToBeBetween(column="width", min_value=v.min_width),
            e.ExpectColumnValuesToBeBetween(column="height", min_value=v.min_height),
            e.ExpectColumnValuesToBeInSet(column="mode", value_set=["RGB", "L"]),
            e.ExpectColumnValuesToBeBetween(
                column="mean_intensity", min_value=v.min_mean_intensity, max_value=v.max_mean_intensity
            ),
            e.ExpectColumnValuesToBeBetween(column="intensity_std", min_value=v.min_intensity_std),
            class_balance(0.0, v.max_rating_fraction),
            *leakage_and_duplicates(COLUMNS),
        ]

    def prepare(self, raw_dir: Path, out_dir: Path, params: FumeHoodParams, seed: int) -> dict[str, int]:
        labels = read_labels(raw_dir)
        w, h = params.input.width, params.input.height
        images, masks = [], []
        for pid in labels["photo_id"]:
            with Image.open(find_image(raw_dir, pid)) as img:
                images.append(np.rint(to_gray_input(img, w, h) * 255).astype(np.uint8))
            mask_path = raw_dir / "masks" / f"{pid}.png"
            if mask_path.is_file():
                with Image.open(mask_path) as m:
                    masks.append(np.asarray(m.convert("L").resize((w, h), Image.Resampling.NEAREST)) > 0)
            else:
                masks.append(np.zeros((h, w), dtype=bool))
        x, cause = np.stack(images), np.stack(masks).astype(np.uint8)
        y = labels["rating"].to_numpy(dtype=np.int64) - 1
        groups = labels["lab_id"].astype(str).to_numpy()
        ids = labels["photo_id"].astype(str).to_numpy()
        idx = split_groups(groups, params.split.val_fraction, params.split.test_fraction, seed)

        a, rng = params.augment, np.random.default_rng(seed)
        train_x, train_rows = [], []
        for i in idx["train"]:
            for copy in range(a.copies):
                if copy == 0:
                    train_x.append(x[i])
                else:
                    train_x.append(
                        augment_image(
                            x[i],
                            rng,
                            a.max_rotation_deg,
                            a.max_shift_frac,
                            (a.brightness_low, a.brightness_high),
                        )
                    )
                train_rows.append(i)
        rows = np.asarray(train_rows, dtype=np.int64)
        save_split(out_dir, "train", x=np.stack(train_x), y=y[rows], groups=groups[rows], ids=ids[rows])
        for split in ("val", "test"):
            j = idx[split]
            save_split(out_dir, split, x=x[j], y=y[j], groups=groups[j], ids=ids[j], masks=cause[j])
        sizes = {"train": len(rows), "val": len(idx["val"]), "test": len(idx["test"])}
        write_meta(out_dir, {"task": self.name, "input_width": w, "input_height": h, "sizes": sizes})
        return sizes

    def dataset(self, prepared_dir: Path, split: str) -> TensorDataset:
        x = torch.from_numpy(load_array(prepared_dir, split, "x").astype(np.float32) / 255.0)[:, None]
        y = torch.from_numpy(load_array(prepared_dir, split, "y"))
        return TensorDataset(x, y)

    # --- model --------------------------------------------------------------------------------
    def build_model(self, hparams: dict[str, Any], prepared_dir: Path) -> tuple[nn.Module, ModelSpec]:
        kwargs = {"width": int(hparams["width"]), "dropout": float(hparams["dropout"])}
        meta = read_meta(prepared_dir)
        spec = ModelSpec(
            task=self.name,
            model=str(hparams["model"]),
            model_kwargs=kwargs,
            inference_module=self.inference_module,
            extra={"input_width": meta["input_width"], "input_height": meta["input_height"]},
        )
        return self.models.build(spec.model, **kwargs), spec

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def val_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        predicted = outputs.argmax(dim=1)
        return {
            "loss": float(F.cross_entropy(outputs, targets)),
            "accuracy": float((predicted == targets).float().mean()),
            "within_one_accuracy": float(((predicted - targets).abs() <= 1).float().mean()),
        }

    def example_input(self, prepared_dir: Path) -> np.ndarray:
        return self.dataset(prepared_dir, "val").tensors[0][:2].numpy()

    # PNG/JPEG uploads: the shared example and bad cases of image tasks (mlops/tasks/upload_cases.py)
    example_upload = staticmethod(upload_cases.first_image_upload)
    bad_uploads = staticmethod(upload_cases.bad_image_uploads)

    def evaluate(self, model: nn.Module, prepared_dir: Path, params: FumeHoodParams, out_dir: Path) -> Evaluation:
        from sklearn.metrics import f1_score

        out_dir.mkdir(parents=True, exist_ok=True)
        test = self.dataset(prepared_dir, "test")
        x, y = test.tensors
        model.eval()
        with torch.no_grad():
            logits = model(x)
        predicted = logits.argmax(dim=1)
        metrics = {f"test_{k}": v for k, v in self.val_metrics(logits, y).items()}
        metrics["test_macro_f1"] = float(f1_score(y.numpy(), predicted.numpy(), average="macro"))

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


def pointing_game(heat: np.ndarray, masks: np.ndarray, tolerance_px: int) -> tuple[float, float]:
    """Share of photos with causes whose Grad-CAM peak falls on a cause (within a tolerance).

    Returns (hit rate, chance rate): chance is the mean area share of the tolerant masks, the hit rate
    a peak placed uniformly at random would get. NaN when no test photo has a cause.
    """
    has_cause = masks.reshape(len(masks), -1).any(axis=1)
    if not has_cause.any():
        return float("nan"), float("nan")
    structure = np.ones((2 * tolerance_px + 1,) * 2, dtype=bool)
    hits, areas = [], []
    for h, m in zip(heat[has_cause], masks[has_cause], strict=True):
        tolerant = ndimage.binary_dilation(m, structure=structure) if tolerance_px else m
        r, c = np.unravel_index(np.argmax(h), h.shape)
        hits.append(bool(tolerant[r, c]))
        areas.append(tolerant.mean())
    return float(np.mean(hits)), float(np.mean(areas))
