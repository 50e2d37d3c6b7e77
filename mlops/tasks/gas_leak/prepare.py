"""gas_leak's prepared data: a scene-aware split of the sim domain, label-correct augmentation, the arrays on disk.

Splits: ``train`` / ``val`` / ``test`` hold scenes of the sim domain (no scene crosses splits); ``field`` holds the
whole field domain, never trained on. Each split stores the centre crops of its recordings (float16) with their
(x, y, z) labels, occlusion flags, scene groups and sequence ids; ``train`` also the augmented copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import TensorDataset

from mlops.data.arrays import load_array, read_meta, save_split, write_meta
from mlops.data.split import split_groups
from mlops.tasks.gas_leak.layout import SCENE, read_labels, sequence_path
from mlops.tasks.gas_leak.params import AugmentParams, GasLeakParams
from mlops.tasks.gas_leak.preprocess import centre_crop, to_channels


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


def prepare(raw_dir: Path, out_dir: Path, params: GasLeakParams, seed: int) -> dict[str, int]:
    """Split, augment and write the prepared arrays and their meta; return the sample count per split."""
    labels = read_labels(raw_dir)
    n_frames = params.input.frames
    stacks = [np.load(sequence_path(raw_dir, sid), allow_pickle=False) for sid in labels["seq_id"]]
    y = labels[["x", "y", "z"]].to_numpy(dtype=np.float32)
    occluded = labels["occluded"].to_numpy(dtype=np.int64).astype(bool)
    ids = labels["seq_id"].astype(str).to_numpy()
    groups = labels[SCENE].astype(str).to_numpy()
    domain = labels["domain"].astype(str).to_numpy()
    height, width = stacks[0].shape[1:]

    def crops(rows: np.ndarray) -> np.ndarray:
        # float16 halves the prepared data DVC versions; its ~1e-3 step is far below the sensor noise.
        out = [centre_crop(stacks[i], n_frames).astype(np.float16) for i in rows]
        return np.stack(out) if out else np.zeros((0, n_frames, height, width), dtype=np.float16)

    sim_rows = np.flatnonzero(domain == "sim")
    idx = {k: sim_rows[v] for k, v in split_groups(groups[sim_rows], **params.split.model_dump(), seed=seed).items()}
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
            "task": "gas_leak",
            "frames": n_frames,
            "height": int(height),
            "width": int(width),
            "z_scale": z_scale,
            "heatmap_sigma": params.input.heatmap_sigma,
            "sizes": sizes,
        },
    )
    return sizes


def dataset(prepared_dir: Path, split: str) -> TensorDataset:
    """Inputs (N, 2, T, H, W); targets (N, 3 + H*W): x, y (px), z (pix/s), then the target map."""
    meta = read_meta(prepared_dir)
    x = to_channels(load_array(prepared_dir, split, "x").astype(np.float32))
    y = load_array(prepared_dir, split, "y").astype(np.float32)
    maps = gaussian_maps(y[:, :2], meta["height"], meta["width"], meta["heatmap_sigma"])
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(np.concatenate([y, maps], axis=1)))
