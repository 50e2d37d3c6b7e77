"""gas_leak as a platform Task: infrared frame stacks + labels table -> leak source (X, Y) and depth flow Z."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.data import TensorDataset

from mlops.config import Gates, Strict
from mlops.data.arrays import load_array, read_meta, save_split, write_meta
from mlops.data.layout import read_labels_table
from mlops.data.split import split_groups
from mlops.tasks import register_task
from mlops.tasks.base import Evaluation, ModelSpec, Task
from mlops.tasks.gas_leak import plots, uploads
from mlops.tasks.gas_leak.inference import explain_batch
from mlops.tasks.gas_leak.model import MODELS, N_ANSWER, centre_crop, to_channels
from mlops.tasks.gas_leak.simulate import (
    DOMAINS,
    LABEL_COLUMNS,
    DomainSettings,
    Geometry,
    simulate_sequences,
)
from mlops.validation.columns import Columns, declare, leakage_and_duplicates
from mlops.validation.drift import DriftParams

#: weight of the depth-velocity error (pix/s) against the position loss in both heads' training loss
Z_WEIGHT = 0.5


class SimulateParams(Strict):
    n_sim: int
    n_field: int
    geometry: Geometry
    sim: DomainSettings
    field: DomainSettings


class ValidationParams(Strict):
    min_sequences: int
    min_frames: int
    max_frames: int
    height: int
    width: int
    min_intensity: float
    max_intensity: float
    min_intensity_std: float
    z_abs_max: float
    drift: DriftParams


# domain (sim | field) is the label whose balance the audit shows; scene_id is what the split keeps together
COLUMNS = Columns(sample="seq_id", label="domain", intensity="mean_intensity", group="scene_id")


class SplitParams(Strict):
    val_fraction: float
    test_fraction: float


class InputParams(Strict):
    frames: int
    heatmap_sigma: float


class AugmentParams(Strict):
    copies: int
    flip_probability: float
    max_time_shift: int
    noise_std: float
    gain_low: float
    gain_high: float
    gain_tilt: float
    shake_px: float


class TrainParams(Strict):
    epochs: int
    patience: int


class EvaluateParams(Strict):
    overlay_samples: int


class GasLeakParams(Strict):
    simulate: SimulateParams
    validation: ValidationParams
    split: SplitParams
    input: InputParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
    gates: Gates


def read_labels(raw_dir: Path) -> pd.DataFrame:
    """The labels table of the real-data layout (+ optional scene_id); ValueError naming what is missing."""
    table = read_labels_table(raw_dir, LABEL_COLUMNS, "gas_leak", {"seq_id": str, "domain": str, "scene_id": str})
    if "scene_id" not in table.columns:  # no scene grouping given: every sequence is its own group
        table["scene_id"] = table["seq_id"]
    return table


def sequence_path(raw_dir: Path, seq_id: str) -> Path:
    return raw_dir / "sequences" / f"{seq_id}.npy"


def _sequence_stats(path: Path) -> dict[str, Any]:
    stats: dict[str, Any] = {"file": str(path), "exists": path.is_file(), "loads": False}
    if not stats["exists"]:
        return stats
    try:
        frames = np.load(path, allow_pickle=False)
    except Exception:  # any reader failure is a data finding, reported by validation
        return stats
    stats.update(loads=True, ndim=int(frames.ndim), dtype=str(frames.dtype))
    stats["content_hash"] = hashlib.sha256(
        f"{frames.shape}{frames.dtype}".encode() + np.ascontiguousarray(frames).tobytes()
    ).hexdigest()
    if frames.ndim != 3 or frames.dtype.kind != "f":
        return stats
    finite = np.isfinite(frames)
    stats.update(frames=frames.shape[0], height=frames.shape[1], width=frames.shape[2], finite=bool(finite.all()))
    values = frames[finite]
    if values.size:
        stats.update(
            min_intensity=float(values.min()),
            max_intensity=float(values.max()),
            intensity_std=float(values.std()),
            mean_intensity=float(values.mean()),
        )
    return stats


def gaussian_maps(xy: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    """(N, 2) source pixels -> (N, H*W) target probability maps (Gaussian around the source, sum 1)."""
    rows, cols = np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32)
    gy = np.exp(-((rows[None] - xy[:, 1:2]) ** 2) / (2 * sigma**2))
    gx = np.exp(-((cols[None] - xy[:, 0:1]) ** 2) / (2 * sigma**2))
    maps = gy[:, :, None] * gx[:, None, :]
    maps /= maps.sum(axis=(1, 2), keepdims=True)
    return maps.reshape(len(xy), -1).astype(np.float32)


def augment_sequence(
    frames: np.ndarray, label: np.ndarray, rng: np.random.Generator, n_frames: int, a: AugmentParams
) -> tuple[np.ndarray, np.ndarray]:
    """One label-correct augmented copy: (n_frames, H, W) frames and its (x, y, z) label.

    - horizontal flip mirrors X to W-1-X (Y and the depth velocity are unchanged);
    - a temporal crop at a shifted start keeps the labels: the source is fixed and the wind is stationary;
    - sensor noise and a gain ramp across the image (detector non-uniformity) leave the geometry alone;
    - camera shake (a random sub-pixel shift per frame) is zero-mean, so the source stays where it was.
    """
    label = label.copy()
    centre = (frames.shape[0] - n_frames) // 2
    shift = int(rng.integers(-a.max_time_shift, a.max_time_shift + 1))
    out = centre_crop(frames, n_frames, start=int(np.clip(centre + shift, 0, frames.shape[0] - n_frames)))
    out = out.astype(np.float32)
    width = frames.shape[2]
    if rng.random() < a.flip_probability:
        out = out[:, :, ::-1]
        label[0] = width - 1 - label[0]
    h, w = out.shape[1:]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * np.linspace(-1, 1, w)[None, :] + np.sin(angle) * np.linspace(-1, 1, h)[:, None]
    gain = rng.uniform(a.gain_low, a.gain_high) * (1 + a.gain_tilt * ramp)
    if a.shake_px > 0:
        offsets = rng.normal(0, a.shake_px, (len(out), 2))
        out = np.stack([ndimage.shift(f, o, order=1, mode="nearest") for f, o in zip(out, offsets, strict=True)])
    out = out * gain[None] + rng.normal(0, a.noise_std, out.shape)
    return np.ascontiguousarray(out, dtype=np.float32), label


def _errors(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    if not len(true):
        nan = float("nan")
        return {"x_mae": nan, "y_mae": nan, "z_mae": nan, "xy_error": nan}
    err = np.abs(pred - true)
    return {
        "x_mae": float(err[:, 0].mean()),
        "y_mae": float(err[:, 1].mean()),
        "z_mae": float(err[:, 2].mean()),
        "xy_error": float(np.hypot(err[:, 0], err[:, 1]).mean()),
    }


@register_task
class GasLeakTask(Task):
    name = "gas_leak"
    Params = GasLeakParams
    inference_module = "mlops.tasks.gas_leak.inference"
    models = MODELS

    # --- data ---------------------------------------------------------------------------------
    def simulate(self, out_dir: Path, params: GasLeakParams, seed: int, progress: Callable[[int], None]) -> int:
        p = params.simulate
        geom = p.geometry
        domains = {
            "sim": (p.sim, p.n_sim),
            "field": (p.field, p.n_field),
        }
        return simulate_sequences(out_dir, geom, domains, seed, progress)

    def simulated_samples(self, params: GasLeakParams) -> int:
        return params.simulate.n_sim + params.simulate.n_field

    def ingest(self, src_dir: Path, out_dir: Path) -> int:
        labels = read_labels(src_dir)
        missing = [sid for sid in labels["seq_id"] if not sequence_path(src_dir, sid).is_file()]
        if missing:
            raise ValueError(f"{len(missing)} sequence(s) in labels.csv have no sequences/<seq_id>.npy: {missing[:5]}")
        unknown = sorted(set(labels["domain"].astype(str)) - set(DOMAINS))
        if unknown:
            raise ValueError(f"labels.csv has unknown domain(s) {unknown}; use {list(DOMAINS)}")
        (out_dir / "sequences").mkdir(parents=True, exist_ok=True)
        for sid in labels["seq_id"]:
            shutil.copy2(sequence_path(src_dir, sid), sequence_path(out_dir, sid))
        shutil.copy2(src_dir / "labels.csv", out_dir / "labels.csv")
        return len(labels)

    def manifest(self, raw_dir: Path) -> pd.DataFrame:
        labels = read_labels(raw_dir)
        rows = [
            {**row, **_sequence_stats(sequence_path(raw_dir, str(row["seq_id"])))} for row in labels.to_dict("records")
        ]
        table = pd.DataFrame(rows)
        computed = ("ndim", "dtype", "content_hash", "frames", "height", "width", "finite")
        for column in (*computed, "min_intensity", "max_intensity", "intensity_std", "mean_intensity"):
            if column not in table.columns:  # every file failed to load: still a table the suite can judge
                table[column] = np.nan
        # Labels inside each sequence's own frame (the pixel grid runs from 0 to size-1).
        table["label_in_frame"] = (
            table["x"].between(0, table["width"] - 1) & table["y"].between(0, table["height"] - 1)
        ).fillna(False)
        table["n_sequences"] = len(table)
        return declare(table, COLUMNS)

    def expectations(self, params: GasLeakParams) -> list[Any]:
        import great_expectations as gx

        v = params.validation
        e = gx.expectations
        return [
            e.ExpectColumnValuesToBeUnique(column="seq_id"),
            e.ExpectColumnValuesToBeBetween(column="n_sequences", min_value=v.min_sequences),
            e.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]),
            e.ExpectColumnValuesToBeInSet(column="loads", value_set=[True]),
            e.ExpectColumnValuesToBeInSet(column="ndim", value_set=[3]),
            e.ExpectColumnValuesToBeInSet(column="dtype", value_set=["float32", "float64", "float16"]),
            e.ExpectColumnValuesToBeBetween(column="frames", min_value=v.min_frames, max_value=v.max_frames),
            e.ExpectColumnValuesToBeInSet(column="height", value_set=[v.height]),
            e.ExpectColumnValuesToBeInSet(column="width", value_set=[v.width]),
            e.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
            e.ExpectColumnValuesToBeBetween(
                column="min_intensity", min_value=v.min_intensity, max_value=v.max_intensity
            ),
            e.ExpectColumnValuesToBeBetween(
                column="max_intensity", min_value=v.min_intensity, max_value=v.max_intensity
            ),
            e.ExpectColumnValuesToBeBetween(column="intensity_std", min_value=v.min_intensity_std),
            e.ExpectColumnValuesToNotBeNull(column="x"),
            e.ExpectColumnValuesToNotBeNull(column="y"),
            e.ExpectColumnValuesToNotBeNull(column="z"),
            e.ExpectColumnValuesToBeInSet(column="label_in_frame", value_set=[True]),
            e.ExpectColumnValuesToBeBetween(column="z", min_value=-v.z_abs_max, max_value=v.z_abs_max),
            e.ExpectColumnValuesToBeInSet(column="domain", value_set=list(DOMAINS)),
            e.ExpectColumnValuesToBeInSet(column="occluded", value_set=[0, 1]),
            *leakage_and_duplicates(COLUMNS),
        ]

    def prepare(self, raw_dir: Path, out_dir: Path, params: GasLeakParams, seed: int) -> dict[str, int]:
        labels = read_labels(raw_dir)
        n_frames = params.input.frames
        stacks = [np.load(sequence_path(raw_dir, sid), allow_pickle=False) for sid in labels["seq_id"]]
        y = labels[["x", "y", "z"]].to_numpy(dtype=np.float32)
        occluded = labels["occluded"].to_numpy(dtype=np.int64).astype(bool)
        ids = labels["seq_id"].astype(str).to_numpy()
        groups = labels["scene_id"].astype(str).to_numpy()
        domain = labels["domain"].astype(str).to_numpy()
        height, width = stacks[0].shape[1:]

        def crops(rows: np.ndarray) -> np.ndarray:
            # float16 halves the prepared data DVC versions; its ~1e-3 step is far below the sensor noise.
            out = [centre_crop(stacks[i], n_frames).astype(np.float16) for i in rows]
            return np.stack(out) if out else np.zeros((0, n_frames, height, width), dtype=np.float16)

        sim_rows = np.flatnonzero(domain == "sim")
        idx = {
            k: sim_rows[v] for k, v in split_groups(groups[sim_rows], **params.split.model_dump(), seed=seed).items()
        }
        idx["field"] = np.flatnonzero(domain == "field")

        rng = np.random.default_rng(seed)
        train_x, train_y, train_rows = [], [], []
        for i in idx["train"]:
            for copy in range(params.augment.copies):
                if copy == 0:
                    train_x.append(centre_crop(stacks[i], n_frames).astype(np.float16))
                    train_y.append(y[i])
                else:
                    frames, label = augment_sequence(stacks[i], y[i], rng, n_frames, params.augment)
                    train_x.append(frames.astype(np.float16))
                    train_y.append(label)
                train_rows.append(i)
        rows = np.asarray(train_rows, dtype=np.int64)
        save_split(
            out_dir,
            "train",
            x=np.stack(train_x),
            y=np.stack(train_y),
            occluded=occluded[rows],
            groups=groups[rows],
            ids=ids[rows],
        )
        for split in ("val", "test", "field"):
            j = idx[split]
            save_split(out_dir, split, x=crops(j), y=y[j], occluded=occluded[j], groups=groups[j], ids=ids[j])
        sizes = {"train": len(rows), **{s: len(idx[s]) for s in ("val", "test", "field")}}
        # Z's spread on the training set scales the models' Z output, so both heads start at unit scale.
        z_scale = float(max(np.std(y[idx["train"], 2]), 1e-3)) if len(idx["train"]) else 1.0
        write_meta(
            out_dir,
            {
                "task": self.name,
                "frames": n_frames,
                "height": int(height),
                "width": int(width),
                "z_scale": z_scale,
                "heatmap_sigma": params.input.heatmap_sigma,
                "sizes": sizes,
            },
        )
        return sizes

    def dataset(self, prepared_dir: Path, split: str) -> TensorDataset:
        """Inputs (N, 2, T, H, W); targets (N, 3 + H*W): x, y (px), z (pix/s), then the target map."""
        meta = read_meta(prepared_dir)
        x = to_channels(load_array(prepared_dir, split, "x").astype(np.float32))
        y = load_array(prepared_dir, split, "y").astype(np.float32)
        maps = gaussian_maps(y[:, :2], meta["height"], meta["width"], meta["heatmap_sigma"])
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(np.concatenate([y, maps], axis=1)))

    # --- model --------------------------------------------------------------------------------
    def build_model(self, hparams: dict[str, Any], prepared_dir: Path) -> tuple[nn.Module, ModelSpec]:
        meta = read_meta(prepared_dir)
        kwargs = {
            "frame_height": int(meta["height"]),
            "frame_width": int(meta["width"]),
            "z_scale": float(meta["z_scale"]),
            "width": int(hparams["width"]),
            "dropout": float(hparams["dropout"]),
        }
        spec = ModelSpec(
            task=self.name,
            model=str(hparams["model"]),
            model_kwargs=kwargs,
            inference_module=self.inference_module,
            extra={"frames": int(meta["frames"]), "height": int(meta["height"]), "width": int(meta["width"])},
        )
        return self.models.build(spec.model, **kwargs), spec

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Numeric head: Huber on (X, Y, Z). Heat-map head: cross-entropy of the map against the
        Gaussian target + Huber on Z. The head is told apart by its output width (3 vs 3 + H*W)."""
        z_loss = F.smooth_l1_loss(outputs[:, 2], targets[:, 2])
        if outputs.shape[1] == N_ANSWER:
            return F.smooth_l1_loss(outputs[:, :2], targets[:, :2]) + Z_WEIGHT * z_loss
        if outputs.shape[1] != targets.shape[1]:
            raise ValueError(f"heat-map outputs have {outputs.shape[1]} columns, targets {targets.shape[1]}")
        log_probs = outputs[:, N_ANSWER:].log_softmax(dim=1)
        cross_entropy = -(targets[:, N_ANSWER:] * log_probs).sum(dim=1).mean()
        return cross_entropy + Z_WEIGHT * z_loss

    def val_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        errors = _errors(outputs[:, :N_ANSWER].numpy(), targets[:, :N_ANSWER].numpy())
        return {"loss": float(self.loss(outputs, targets)), **errors}

    def example_input(self, prepared_dir: Path) -> np.ndarray:
        return self.dataset(prepared_dir, "val").tensors[0][:2].numpy()

    # What its service answers and refuses (mlops/tasks/gas_leak/uploads.py)
    example_upload = staticmethod(uploads.example_upload)
    bad_uploads = staticmethod(uploads.bad_uploads)

    def evaluate(self, model: nn.Module, prepared_dir: Path, params: GasLeakParams, out_dir: Path) -> Evaluation:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.eval()
        metrics: dict[str, float] = {}
        tables, images, frames_by_split = [], {}, {}
        head = "numeric"
        for split in ("test", "field"):
            data = self.dataset(prepared_dir, split)
            x, targets = data.tensors
            occluded = load_array(prepared_dir, split, "occluded").astype(bool)
            ids = load_array(prepared_dir, split, "ids")
            answers, heat, kind = explain_batch(model, x)
            head = kind
            true = targets[:, :N_ANSWER].numpy()
            for name, value in _errors(answers, true).items():
                metrics[f"{split}_{name}"] = value
            for subset, mask in (("visible", ~occluded), ("occluded", occluded)):
                for name, value in _errors(answers[mask], true[mask]).items():
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


def error_table(metrics: dict[str, float], head: str) -> pd.DataFrame:
    """The study's Table 1 layout for one head: mean error of X, Y (px) and Z (pix/s) per data subset."""
    columns = ["test", "test_visible", "test_occluded", "field", "field_visible", "field_occluded"]
    rows = []
    for quantity, unit in (("x", "px"), ("y", "px"), ("z", "pix/s")):
        row = {"head": head, "quantity": f"{quantity.upper()} mean error", "unit": unit}
        row.update({c: metrics.get(f"{c}_{quantity}_mae", float("nan")) for c in columns})
        rows.append(row)
    return pd.DataFrame(rows)
