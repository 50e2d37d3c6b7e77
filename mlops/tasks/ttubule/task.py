"""ttubule as a platform Task: SBEM stacks + voxel labels -> per-voxel classes, boundaries and 3-D instances."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn
from torch.utils.data import TensorDataset

from mlops.config import Gates, Strict
from mlops.data.arrays import load_array, read_meta, save_split, write_meta
from mlops.data.split import split_groups
from mlops.tasks import register_task
from mlops.tasks.base import Evaluation, ModelSpec, Task
from mlops.tasks.ttubule import plots, uploads
from mlops.tasks.ttubule.instances import (
    InstanceSettings,
    boundary_map,
    class_instances,
    instance_stats,
    split_instances,
)
from mlops.tasks.ttubule.model import MODELS, N_CLASSES, TTUBULE, probabilities, segmentation_loss, sliding_window
from mlops.tasks.ttubule.normalize import PeakError, PeakSettings, histogram_peaks, mean_peaks, normalize_stack
from mlops.tasks.ttubule.simulate import (
    CLASS_NAMES,
    IMAGE_FILE,
    INSTANCES_FILE,
    LABELS_FILE,
    META_FILE,
    MITO,
    MYOFIBRIL,
    SimSettings,
    simulate_volumes,
)
from mlops.validation.drift import DriftParams

#: val/test slices are centre-cropped to a common size that is a multiple of this (U-Nets up to depth 4)
SIZE_MULTIPLE = 16
#: classes scored in the evaluation (background is what is left)
SCORED = {MITO: "mitochondria", MYOFIBRIL: "myofibril", TTUBULE: "ttubule"}


class ValidationParams(Strict):
    min_volumes: int
    min_slices: int
    min_height: int
    min_width: int
    min_slice_std: float
    min_mito_fraction: float
    max_mito_fraction: float
    min_myofibril_fraction: float
    max_myofibril_fraction: float
    min_ttubule_fraction: float
    max_ttubule_fraction: float
    drift: DriftParams


class SplitParams(Strict):
    #: volume: whole volumes per split; slab: contiguous slabs of ``slab_slices`` (few volumes)
    group: Literal["volume", "slab"]
    slab_slices: int
    val_fraction: float
    test_fraction: float


class InputParams(Strict):
    tile: int
    infer_tile: int
    peak_smoothing: float
    peak_min_separation: int
    max_upload_voxels: int


class AugmentParams(Strict):
    tiles_per_slice: int
    ttubule_tile_share: float
    flips: bool
    rotations: bool
    elastic_alpha_px: float
    elastic_sigma_px: float
    gain_low: float
    gain_high: float
    offset_max: float
    gamma_low: float
    gamma_high: float
    noise_std: float


class TrainParams(Strict):
    epochs: int
    patience: int


class EvaluateParams(Strict):
    marker_threshold: float
    blur_sigma_z: float
    blur_sigma_xy: float
    min_marker_voxels: int
    min_instance_voxels: int
    overlay_slices: int


class TTubuleParams(Strict):
    simulate: SimSettings
    validation: ValidationParams
    split: SplitParams
    input: InputParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
    gates: Gates


# --- real-data layout ---------------------------------------------------------------------------------


@dataclass
class Volume:
    name: str
    image: np.ndarray  # (Z, Y, X)
    labels: np.ndarray
    instances: np.ndarray | None
    voxel_size_nm: tuple[float, float, float]


def volume_dirs(raw_dir: Path) -> list[Path]:
    """Sub-folders holding at least one of the layout's files, sorted by name."""
    if not raw_dir.is_dir():
        raise ValueError(f"{raw_dir} is not a folder: the ttubule layout is <volume>/{IMAGE_FILE}, {LABELS_FILE}, ...")
    found = [
        p
        for p in sorted(raw_dir.iterdir())
        if p.is_dir() and any((p / f).exists() for f in (IMAGE_FILE, LABELS_FILE, META_FILE))
    ]
    if not found:
        raise ValueError(f"{raw_dir} holds no volume folder with {IMAGE_FILE} (+ {LABELS_FILE}, {META_FILE})")
    return found


def read_stack(path: Path) -> np.ndarray:
    """A (Z, Y, X) array from a (multi-page) TIFF; one page reads as one slice."""
    import tifffile

    array = tifffile.imread(path)
    return array[None] if array.ndim == 2 else array


def read_voxel_size(folder: Path) -> tuple[float, float, float]:
    """(z, y, x) voxel size in nm from ``meta.json``; ValueError naming what is missing."""
    path = folder / META_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing: it must give voxel_size_nm {{z, y, x}}")
    size = json.loads(path.read_text()).get("voxel_size_nm")
    if not isinstance(size, dict) or any(k not in size for k in "zyx"):
        raise ValueError(f"{path} lacks voxel_size_nm with keys z, y, x")
    return float(size["z"]), float(size["y"]), float(size["x"])


def read_volume(folder: Path) -> Volume:
    """One volume folder of the layout; ValueError when its stacks disagree in shape or meta.json is incomplete."""
    image, labels = read_stack(folder / IMAGE_FILE), read_stack(folder / LABELS_FILE)
    if image.shape != labels.shape:
        raise ValueError(f"{folder.name}: image {image.shape} and labels {labels.shape} differ in shape")
    instances = read_stack(folder / INSTANCES_FILE) if (folder / INSTANCES_FILE).is_file() else None
    if instances is not None and instances.shape != image.shape:
        raise ValueError(f"{folder.name}: instances {instances.shape} and image {image.shape} differ in shape")
    return Volume(folder.name, image, labels, instances, read_voxel_size(folder))


def _volume_rows(folder: Path) -> list[dict[str, Any]]:
    """Manifest rows (one per image slice) of one volume folder; never raises on bad files."""
    base: dict[str, Any] = {"volume": folder.name, "readable": False, "shapes_match": False}
    try:
        base.update(zip(("voxel_z_nm", "voxel_y_nm", "voxel_x_nm"), read_voxel_size(folder), strict=True))
    except (ValueError, TypeError, json.JSONDecodeError):
        base.update(voxel_z_nm=None, voxel_y_nm=None, voxel_x_nm=None)
    try:
        image = read_stack(folder / IMAGE_FILE)
        labels = read_stack(folder / LABELS_FILE)
    except Exception:  # missing or undecodable TIFF: a data finding for the suite
        return [{"slice_id": f"{folder.name}:all", **base}]
    match = image.shape == labels.shape and image.ndim == 3
    base.update(
        readable=True,
        shapes_match=match,
        image_dtype=str(image.dtype),
        labels_dtype=str(labels.dtype),
        image_shape="x".join(map(str, image.shape)),
        labels_shape="x".join(map(str, labels.shape)),
        vol_slices=int(image.shape[0]),
        vol_height=int(image.shape[-2]) if image.ndim >= 2 else None,
        vol_width=int(image.shape[-1]) if image.ndim >= 2 else None,
    )
    if match:
        counts = np.bincount(labels.ravel().astype(np.int64), minlength=N_CLASSES) / labels.size
        base.update({f"{name}_fraction": float(counts[c]) for c, name in SCORED.items()})
    rows = []
    for z in range(image.shape[0]):
        plane = image[z].astype(np.float32)
        row = {"slice_id": f"{folder.name}:{z:04d}", **base, "z": z}
        row.update(slice_mean=float(plane.mean()), slice_std=float(plane.std()))
        row["content_hash"] = hashlib.sha256(np.ascontiguousarray(image[z]).tobytes()).hexdigest()
        try:  # the study's peaks (default settings): reported per slice, absent when the histogram has one
            row["peak_low"], row["peak_high"] = histogram_peaks(image[z])
            row["peaks_found"] = True
        except PeakError:
            row["peaks_found"] = False
        if match:
            row.update(min_label=int(labels[z].min()), max_label=int(labels[z].max()))
        rows.append(row)
    return rows


# --- augmentation -------------------------------------------------------------------------------------


def elastic_field(rng: np.random.Generator, shape: tuple[int, int], alpha: float, sigma: float) -> np.ndarray:
    """A smooth displacement field (2, H, W) whose largest displacement is ``alpha`` pixels."""
    field = np.stack([ndimage.gaussian_filter(rng.uniform(-1, 1, shape), sigma, mode="reflect") for _ in range(2)])
    peak = np.abs(field).max()
    return field * (alpha / peak) if peak > 0 else field


def augment_pair(
    image: np.ndarray, target: np.ndarray, rng: np.random.Generator, a: AugmentParams
) -> tuple[np.ndarray, np.ndarray]:
    """The same geometric transform on an image (H, W) and its targets (K, H, W); photometric jitter on the image.

    Elastic deformation (bilinear for the image, nearest for label and boundary maps, so they stay
    integral), then a random flip and quarter turn, then gain, offset, gamma and noise on the image only.
    """
    img = image.astype(np.float32)
    tgt = target
    if a.elastic_alpha_px > 0:
        dy, dx = elastic_field(rng, img.shape, a.elastic_alpha_px, a.elastic_sigma_px)
        gy, gx = np.meshgrid(np.arange(img.shape[0]), np.arange(img.shape[1]), indexing="ij")
        coords = np.stack([gy + dy, gx + dx])
        img = ndimage.map_coordinates(img, coords, order=1, mode="reflect")
        tgt = np.stack([ndimage.map_coordinates(t, coords, order=0, mode="reflect") for t in tgt])
    if a.flips and rng.random() < 0.5:
        img, tgt = img[:, ::-1], tgt[:, :, ::-1]
    if a.rotations:
        k = int(rng.integers(4))
        img, tgt = np.rot90(img, k), np.rot90(tgt, k, axes=(1, 2))
    gamma = rng.uniform(a.gamma_low, a.gamma_high)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** gamma
    img = img * rng.uniform(a.gain_low, a.gain_high) + rng.uniform(-a.offset_max, a.offset_max)
    if a.noise_std > 0:
        img = img + rng.normal(0, a.noise_std, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), np.ascontiguousarray(tgt).astype(np.uint8)


def training_tiles(
    image: np.ndarray, target: np.ndarray, rng: np.random.Generator, a: AugmentParams, tile: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``a.tiles_per_slice`` augmented tiles of one slice (a share centred on T-tubule pixels, if any).

    A larger window around each tile is deformed and cut back, so the elastic warp never pulls in padding.
    """
    pad = int(np.ceil(a.elastic_alpha_px)) + 2
    window = tile + 2 * pad
    padded_img = np.pad(image, window, mode="reflect")
    padded_tgt = np.pad(target, ((0, 0), (window, window), (window, window)), mode="reflect")
    tubes = np.argwhere(target[0] == TTUBULE)
    xs, ys = [], []
    h, w = image.shape
    for _ in range(a.tiles_per_slice):
        if len(tubes) and rng.random() < a.ttubule_tile_share:
            cy, cx = tubes[rng.integers(len(tubes))]
            cy, cx = cy + rng.integers(-tile // 4, tile // 4 + 1), cx + rng.integers(-tile // 4, tile // 4 + 1)
        else:
            cy, cx = (
                rng.integers(tile // 2, max(h - tile // 2, tile // 2 + 1)),
                rng.integers(tile // 2, max(w - tile // 2, tile // 2 + 1)),
            )
        y0, x0 = int(cy) - window // 2 + window, int(cx) - window // 2 + window
        img, tgt = augment_pair(
            padded_img[y0 : y0 + window, x0 : x0 + window], padded_tgt[:, y0 : y0 + window, x0 : x0 + window], rng, a
        )
        xs.append(img[pad : pad + tile, pad : pad + tile])
        ys.append(tgt[:, pad : pad + tile, pad : pad + tile])
    return xs, ys


def _centre_crop(array: np.ndarray, h: int, w: int) -> np.ndarray:
    top, left = (array.shape[-2] - h) // 2, (array.shape[-1] - w) // 2
    return array[..., top : top + h, left : left + w]


# --- metrics ------------------------------------------------------------------------------------------


def threshold_counts(prob: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TP, FP, FN) for every threshold t = 0..255 of ``round(255 * prob) > t``."""
    q = np.clip(np.rint(np.asarray(prob, dtype=np.float64) * 255), 0, 255).astype(np.int64).ravel()
    pos = np.asarray(positive, dtype=bool).ravel()
    hist_pos = np.bincount(q[pos], minlength=256)
    hist_neg = np.bincount(q[~pos], minlength=256)
    tp = pos.sum() - np.cumsum(hist_pos)
    fp = (~pos).sum() - np.cumsum(hist_neg)
    return tp.astype(np.float64), fp.astype(np.float64), pos.sum() - tp.astype(np.float64)


def scores(tp, fp, fn) -> dict[str, np.ndarray]:
    """Precision, recall, F and IoU from counts (arrays or scalars); precision is 1 with no predictions."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 0.0)
    return {"precision": precision, "recall": recall, "f": f, "iou": iou}


def class_channels(label_mode: str) -> dict[int, int]:
    """Scored class -> channel of ``probabilities()``: all three multi-label, only T-tubules single-label."""
    return {c: c for c in SCORED} if label_mode == "multi" else {TTUBULE: 0}


def swept_class_metrics(
    prob: np.ndarray, labels: np.ndarray, cls: int
) -> tuple[dict[str, float], pd.DataFrame, list[int]]:
    """The study's protocol for one class over (N, H, W) slices.

    The threshold (0-255) maximising F is found per slice that contains the class; the mean of those is
    the threshold for the reported pooled precision, recall, F and IoU. Returns those metrics, the pooled
    curves (precision, recall, F per threshold) and the per-slice best thresholds.
    """
    best = []
    for p, lab in zip(prob, labels, strict=True):
        positive = lab == cls
        if positive.any():
            best.append(int(np.argmax(scores(*threshold_counts(p, positive))["f"])))
    pooled = threshold_counts(prob, labels == cls)
    curves = scores(*pooled)
    threshold = int(round(float(np.mean(best)))) if best else 127
    metrics = {k: float(v[threshold]) for k, v in curves.items()}
    metrics["threshold"] = float(threshold)
    metrics["best_f"] = float(curves["f"].max())
    table = pd.DataFrame({"threshold": np.arange(256), **{k: v for k, v in curves.items() if k != "iou"}})
    return metrics, table, best


def instance_matches(pred: np.ndarray, truth: np.ndarray, min_iou: float = 0.5) -> tuple[int, int, int]:
    """(matched, predicted, true) instance counts; a match is a pair with IoU >= ``min_iou`` (unique then)."""
    n_pred, n_true = int(pred.max()), int(truth.max())
    if n_pred == 0 or n_true == 0:
        return 0, len(np.unique(pred[pred > 0])), len(np.unique(truth[truth > 0]))
    both = (pred > 0) | (truth > 0)
    pairs = np.bincount(pred[both].astype(np.int64) * (n_true + 1) + truth[both], minlength=(n_pred + 1) * (n_true + 1))
    inter = pairs.reshape(n_pred + 1, n_true + 1)
    size_p, size_t = np.bincount(pred.ravel(), minlength=n_pred + 1), np.bincount(truth.ravel(), minlength=n_true + 1)
    iou = inter / np.maximum(size_p[:, None] + size_t[None, :] - inter, 1)
    matched = int((iou[1:, 1:] >= min_iou).sum())
    return matched, len(np.unique(pred[pred > 0])), len(np.unique(truth[truth > 0]))


@register_task
class TTubuleTask(Task):
    name = "ttubule"
    Params = TTubuleParams
    inference_module = "mlops.tasks.ttubule.inference"
    models = MODELS

    # --- data ---------------------------------------------------------------------------------
    def simulate(self, out_dir: Path, params: TTubuleParams, seed: int, progress: Callable[[int], None]) -> int:
        return simulate_volumes(out_dir, params.simulate, seed, progress)

    def simulated_samples(self, params: TTubuleParams) -> int:
        return params.simulate.n_volumes

    def ingest(self, src_dir: Path, out_dir: Path) -> int:
        folders = volume_dirs(src_dir)
        problems = []
        for folder in folders:
            missing = [f for f in (IMAGE_FILE, LABELS_FILE, META_FILE) if not (folder / f).is_file()]
            if missing:
                problems.append(f"{folder.name}: missing {missing}")
        if problems:
            raise ValueError("incomplete volume folder(s): " + "; ".join(problems[:5]))
        out_dir.mkdir(parents=True, exist_ok=True)
        for folder in folders:
            shutil.copytree(folder, out_dir / folder.name, dirs_exist_ok=True)
        return len(folders)

    def manifest(self, raw_dir: Path) -> pd.DataFrame:
        """One row per slice (volume-level facts repeated on each), so failures name slices."""
        from mlops.validation.columns import Columns, declare

        table = pd.DataFrame([row for folder in volume_dirs(raw_dir) for row in _volume_rows(folder)])
        for column in ("content_hash", "slice_mean", "peaks_found"):
            if column not in table:  # no volume could be read: still a table the suite can judge
                table[column] = np.nan
        shares = tuple(f"{name}_fraction" for name in SCORED.values())
        columns = Columns(sample="slice_id", label_fractions=shares, intensity="slice_mean", group="volume")
        return declare(table, columns)

    def expectations(self, params: TTubuleParams) -> list[Any]:
        import great_expectations as gx

        from mlops.validation.columns import Columns, leakage_and_duplicates

        v, e = params.validation, gx.expectations
        bounds = {
            "mitochondria": (v.min_mito_fraction, v.max_mito_fraction),
            "myofibril": (v.min_myofibril_fraction, v.max_myofibril_fraction),
            "ttubule": (v.min_ttubule_fraction, v.max_ttubule_fraction),
        }
        fractions = [
            e.ExpectColumnValuesToBeBetween(column=f"{name}_fraction", min_value=low, max_value=high)
            for name, (low, high) in bounds.items()
        ]
        return [
            e.ExpectColumnValuesToBeUnique(column="slice_id"),
            e.ExpectColumnUniqueValueCountToBeBetween(column="volume", min_value=v.min_volumes),
            e.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
            e.ExpectColumnValuesToBeInSet(column="shapes_match", value_set=[True]),
            e.ExpectColumnValuesToBeInSet(column="image_dtype", value_set=["uint8"]),
            e.ExpectColumnValuesToBeInSet(column="labels_dtype", value_set=["uint8", "uint16"]),
            e.ExpectColumnValuesToBeBetween(column="min_label", min_value=0, max_value=N_CLASSES - 1),
            e.ExpectColumnValuesToBeBetween(column="max_label", min_value=0, max_value=N_CLASSES - 1),
            *(e.ExpectColumnValuesToNotBeNull(column=f"voxel_{axis}_nm") for axis in "zyx"),
            *(e.ExpectColumnValuesToBeBetween(column=f"voxel_{axis}_nm", min_value=0.1) for axis in "zyx"),
            e.ExpectColumnValuesToBeBetween(column="vol_slices", min_value=v.min_slices),
            e.ExpectColumnValuesToBeBetween(column="vol_height", min_value=v.min_height),
            e.ExpectColumnValuesToBeBetween(column="vol_width", min_value=v.min_width),
            e.ExpectColumnValuesToBeBetween(column="slice_std", min_value=v.min_slice_std),
            *fractions,
            # the normalisation maps two histogram peaks (mitochondria, myofibrils): each slice must show both
            e.ExpectColumnValuesToBeInSet(column="peaks_found", value_set=[True]),
            *leakage_and_duplicates(Columns(sample="slice_id", group="volume")),
        ]

    def prepare(self, raw_dir: Path, out_dir: Path, params: TTubuleParams, seed: int) -> dict[str, int]:
        volumes = [read_volume(folder) for folder in volume_dirs(raw_dir)]
        peaks = PeakSettings(params.input.peak_smoothing, params.input.peak_min_separation)
        names, slabs, zs = [], [], []
        for vol in volumes:
            for z in range(vol.image.shape[0]):
                names.append(vol.name)
                zs.append(z)
                slabs.append(
                    vol.name if params.split.group == "volume" else f"{vol.name}/{z // params.split.slab_slices}"
                )
        idx = split_groups(np.asarray(slabs), params.split.val_fraction, params.split.test_fraction, seed)
        index = [(vi, z) for vi, vol in enumerate(volumes) for z in range(vol.image.shape[0])]

        # The study's reference peaks: the mean over the training slices, before any normalisation.
        P1, P2 = mean_peaks([volumes[index[i][0]].image[index[i][1]][None] for i in idx["train"]], peaks)  # noqa: N806
        normalised, targets = [], []
        for vol in volumes:
            image, _ = normalize_stack(vol.image, P1, P2, peaks)
            ids = vol.instances
            if ids is None:  # no instance file: connected components of the instance classes
                ids = class_instances(vol.labels, MITO)
                tubes = class_instances(vol.labels, TTUBULE)
                ids = np.where(tubes > 0, tubes + ids.max(), ids)
            ids = np.where(np.isin(vol.labels, (MITO, TTUBULE)), ids, 0)
            normalised.append(image)
            targets.append(np.stack([vol.labels.astype(np.uint8), boundary_map(ids)], axis=1))  # (Z, 2, Y, X)

        a, rng = params.augment, np.random.default_rng(seed)
        train_x, train_y, train_ids = [], [], []
        for i in idx["train"]:
            vi, z = index[i]
            xs, ys = training_tiles(normalised[vi][z], targets[vi][z], rng, a, params.input.tile)
            train_x += xs
            train_y += ys
            train_ids += [f"{volumes[vi].name}:{z:04d}"] * len(xs)
        save_split(out_dir, "train", x=np.stack(train_x), y=np.stack(train_y), ids=np.asarray(train_ids))

        h = min(v.image.shape[1] for v in volumes) // SIZE_MULTIPLE * SIZE_MULTIPLE
        w = min(v.image.shape[2] for v in volumes) // SIZE_MULTIPLE * SIZE_MULTIPLE
        for split in ("val", "test"):
            rows = idx[split]
            pick = [index[i] for i in rows]
            inst = [volumes[vi].instances[z] if volumes[vi].instances is not None else None for vi, z in pick]
            save_split(
                out_dir,
                split,
                x=np.stack([_centre_crop(normalised[vi][z], h, w) for vi, z in pick]),
                y=np.stack([_centre_crop(targets[vi][z], h, w) for vi, z in pick]),
                ids=np.asarray([f"{names[i]}:{zs[i]:04d}" for i in rows]),
                groups=np.asarray([slabs[i] for i in rows]),
                z=np.asarray([zs[i] for i in rows], dtype=np.int64),
                instances=np.stack([_centre_crop(m, h, w) if m is not None else np.zeros((h, w)) for m in inst]).astype(
                    np.int32
                ),
                voxel_size_nm=np.asarray([volumes[vi].voxel_size_nm for vi, _ in pick], dtype=np.float64),
            )
        sizes = {"train": len(train_x), "val": len(idx["val"]), "test": len(idx["test"])}
        train_labels = np.stack(train_y)[:, 0]
        write_meta(
            out_dir,
            {
                "task": self.name,
                "P1": P1,
                "P2": P2,
                "peak_smoothing": peaks.smoothing,
                "peak_min_separation": peaks.min_separation,
                "tile": params.input.tile,
                "infer_tile": params.input.infer_tile,
                "max_upload_voxels": params.input.max_upload_voxels,
                "slice_height": h,
                "slice_width": w,
                "voxel_size_nm": [float(np.median([v.voxel_size_nm[k] for v in volumes])) for k in range(3)],
                "train_class_fractions": (np.bincount(train_labels.ravel(), minlength=N_CLASSES) / train_labels.size)
                .round(5)
                .tolist(),
                "sizes": sizes,
                "split_groups": {s: sorted({slabs[i] for i in idx[s]}) for s in ("train", "val", "test")},
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
            "label_mode": str(hparams.get("label_mode", "multi")),
            "width": int(hparams["width"]),
            "depth": int(hparams.get("depth", 3)),
            "dropout": float(hparams.get("dropout", 0.0)),
            "loss": str(hparams.get("loss", "ce")),
            "rare_weight": float(hparams.get("rare_weight", 10.0)),
            "boundary_weight": float(hparams.get("boundary_weight", 0.5)),
        }
        meta = read_meta(prepared_dir)
        extra = {
            k: meta[k] for k in ("P1", "P2", "peak_smoothing", "peak_min_separation", "infer_tile", "max_upload_voxels")
        }
        extra["voxel_size_nm"] = meta["voxel_size_nm"]
        extra["class_names"] = {str(c): n for c, n in CLASS_NAMES.items()}
        spec = ModelSpec(
            task=self.name,
            model=str(hparams.get("model", "unet")),
            model_kwargs=kwargs,
            inference_module=self.inference_module,
            extra=extra,
        )
        return self.models.build(spec.model, **kwargs), spec

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The default loss (plain cross-entropy + boundary term); training uses ``criterion(model)``."""
        return segmentation_loss(outputs, targets)

    def criterion(self, model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss the model was built with (its tuned ``loss``, ``rare_weight``, ``boundary_weight``)."""
        return partial(segmentation_loss, cfg=model.loss_config)

    def val_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Plain loss and, per scored class, the best F over thresholds 0-255 on the pooled split."""
        with torch.no_grad():
            metrics = {"loss": float(segmentation_loss(outputs, targets))}
            probs = probabilities(outputs).numpy()
        labels = targets[:, 0].numpy()
        label_mode = "multi" if outputs.shape[1] == N_CLASSES + 1 else "single"
        for cls, channel in class_channels(label_mode).items():
            curves = scores(*threshold_counts(probs[:, channel], labels == cls))
            best = int(np.argmax(curves["f"]))
            metrics[f"{SCORED[cls]}_f"] = float(curves["f"][best])
            metrics[f"{SCORED[cls]}_iou"] = float(curves["iou"][best])
        return metrics

    def calibrate(self, model: nn.Module, spec: ModelSpec, prepared_dir: Path, params: TTubuleParams) -> ModelSpec:
        """Store the study's threshold per scored class (the mean of the per-slice best thresholds, 0-255) on
        the validation slices, and the instance post-processing, so the served predictor decides as evaluated."""
        x = load_array(prepared_dir, "val", "x")
        labels = load_array(prepared_dir, "val", "y")[:, 0]
        probs = self.predict_probabilities(model, x, int(read_meta(prepared_dir)["infer_tile"]))
        thresholds = {
            SCORED[cls]: int(swept_class_metrics(probs[:, channel], labels, cls)[0]["threshold"])
            for cls, channel in class_channels(model.label_mode).items()
        }
        instances = params.evaluate.model_dump(exclude={"overlay_slices"})
        extra = spec.extra | {"thresholds": thresholds, "threshold_split": "val", "instances": instances}
        return replace(spec, extra=extra)

    def compare(self, tables: dict[str, dict[str, pd.DataFrame]], out_dir: Path) -> dict[str, Path]:
        """The arms' T-tubule curves (F, precision, recall against the threshold) in one figure."""
        curves = {arm: t["threshold_curves"] for arm, t in tables.items() if "threshold_curves" in t}
        return {"ttubule_arms.png": plots.compare_arms(curves, out_dir)} if curves else {}

    def example_input(self, prepared_dir: Path) -> np.ndarray:
        return self.dataset(prepared_dir, "val").tensors[0][:2].numpy()

    # What its service answers and refuses (mlops/tasks/ttubule/uploads.py)
    example_upload = staticmethod(uploads.example_upload)
    bad_uploads = staticmethod(uploads.bad_uploads)

    def predict_probabilities(self, model: nn.Module, x: np.ndarray, tile: int) -> np.ndarray:
        """(N, n_classes + 1, H, W) probabilities of uint8 slices (N, H, W) by sliding window."""
        out = []
        for start in range(0, len(x), 8):
            batch = torch.from_numpy(x[start : start + 8].astype(np.float32) / 255.0)[:, None]
            out.append(probabilities(sliding_window(model, batch, tile)).numpy())
        return np.concatenate(out)

    def evaluate(self, model: nn.Module, prepared_dir: Path, params: TTubuleParams, out_dir: Path) -> Evaluation:
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = read_meta(prepared_dir)
        x = load_array(prepared_dir, "test", "x")
        y = load_array(prepared_dir, "test", "y")
        labels, stacks = y[:, 0], load_array(prepared_dir, "test", "groups")
        z_index, truth_ids = load_array(prepared_dir, "test", "z"), load_array(prepared_dir, "test", "instances")
        voxel = load_array(prepared_dir, "test", "voxel_size_nm")
        probs = self.predict_probabilities(model, x, int(meta["infer_tile"]))
        label_mode = model.label_mode
        channels = class_channels(label_mode)

        metrics: dict[str, float] = {}
        rows, curves, thresholds, per_slice = [], [], {}, []
        for cls, channel in channels.items():
            name = SCORED[cls]
            m, table, best = swept_class_metrics(probs[:, channel], labels, cls)
            thresholds[cls] = m["threshold"]
            metrics |= {f"test_{name}_{k}": v for k, v in m.items()}
            rows.append({"class": name, **m})
            curves.append(table.assign(**{"class": name}))
            per_slice += [{"class": name, "slice": i, "best_threshold": b} for i, b in enumerate(best)]

        s = params.evaluate
        inst_rows = []
        predicted_maps: dict[int, np.ndarray] = {}
        for cls in (c for c in (TTUBULE, MITO) if c in channels):
            name = SCORED[cls]
            settings = InstanceSettings(
                mask_threshold=thresholds[cls] / 255.0,
                marker_threshold=s.marker_threshold,
                blur_sigma_z=s.blur_sigma_z,
                blur_sigma_xy=s.blur_sigma_xy,
                min_marker_voxels=s.min_marker_voxels,
                min_instance_voxels=s.min_instance_voxels,
            )
            pred_map = np.zeros(labels.shape, dtype=np.int32)
            totals = dict.fromkeys(("count", "true_count", "matched", "volume", "true_volume", "vox", "true_vox"), 0.0)
            n_voxels = 0
            for stack in np.unique(stacks):
                rows_s = np.flatnonzero(stacks == stack)
                rows_s = rows_s[np.argsort(z_index[rows_s])]
                size = tuple(float(v) for v in voxel[rows_s[0]])
                pred = split_instances(probs[rows_s, channels[cls]], probs[rows_s, -1], settings)
                truth = class_instances(labels[rows_s], cls, truth_ids[rows_s] if truth_ids[rows_s].any() else None)
                pred_map[rows_s] = pred
                ps, ts = instance_stats(pred, size), instance_stats(truth, size)
                matched, _, _ = instance_matches(pred, truth)
                inst_rows.append(
                    {
                        "stack": str(stack),
                        "class": name,
                        "count": ps.count,
                        "true_count": ts.count,
                        "matched": matched,
                        "volume_um3": ps.volume_um3,
                        "true_volume_um3": ts.volume_um3,
                        "volume_fraction": ps.volume_fraction,
                        "true_volume_fraction": ts.volume_fraction,
                    }
                )
                for key, value in (
                    ("count", ps.count),
                    ("true_count", ts.count),
                    ("matched", matched),
                    ("volume", ps.volume_um3),
                    ("true_volume", ts.volume_um3),
                    ("vox", (pred > 0).sum()),
                    ("true_vox", (truth > 0).sum()),
                ):
                    totals[key] += float(value)
                n_voxels += pred.size
            predicted_maps[cls] = pred_map
            metrics |= {
                f"test_{name}_instances": totals["count"],
                f"test_{name}_instances_true": totals["true_count"],
                f"test_{name}_instances_matched": totals["matched"],
                f"test_{name}_volume_um3": totals["volume"],
                f"test_{name}_volume_um3_true": totals["true_volume"],
                f"test_{name}_volume_fraction": totals["vox"] / max(n_voxels, 1),
                f"test_{name}_volume_fraction_true": totals["true_vox"] / max(n_voxels, 1),
            }

        curve_table = pd.concat(curves, ignore_index=True)
        ids = load_array(prepared_dir, "test", "ids")
        images = {
            "threshold_curves.png": plots.threshold_curves(curve_table, thresholds, label_mode, out_dir),
            "overlays.png": plots.overlays(x, labels, probs, thresholds, label_mode, ids, s.overlay_slices, out_dir),
        }
        if TTUBULE in predicted_maps:
            images["ttubule_instances.png"] = plots.instance_slices(
                x, labels, predicted_maps[TTUBULE], truth_ids, ids, s.overlay_slices, out_dir
            )
        tables = {
            "class_metrics": pd.DataFrame(rows),
            "threshold_curves": curve_table,
            "slice_thresholds": pd.DataFrame(per_slice),
            "instances": pd.DataFrame(inst_rows),
        }
        return Evaluation(metrics=metrics, images=images, tables=tables)
