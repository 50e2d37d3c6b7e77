"""ttubule's preparation: the split (whole volumes or slabs), the normalisation onto the training peaks,
augmented training tiles, and the prepared arrays the dataset reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import TensorDataset

from mlops.data.arrays import load_array, save_split, write_meta
from mlops.data.split import split_groups
from mlops.tasks.ttubule.instances import boundary_map, class_instances
from mlops.tasks.ttubule.layout import MITO, N_CLASSES, TTUBULE, read_volume, volume_dirs
from mlops.tasks.ttubule.normalize import mean_peaks, normalize_stack
from mlops.tasks.ttubule.params import AugmentParams, TTubuleParams
from mlops.tasks.ttubule.preprocess import model_input, peak_settings

#: val/test slices are centre-cropped to a common size that is a multiple of this (U-Nets up to depth 4)
SIZE_MULTIPLE = 16


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


def centre_crop(array: np.ndarray, h: int, w: int) -> np.ndarray:
    top, left = (array.shape[-2] - h) // 2, (array.shape[-1] - w) // 2
    return array[..., top : top + h, left : left + w]


# --- preparation ------------------------------------------------------------------------------------


def prepare(raw_dir: Path, out_dir: Path, params: TTubuleParams, seed: int) -> dict[str, int]:
    """Split by volume (or slab), normalise every slice onto the training split's mean peaks, cut augmented
    training tiles, keep whole (centre-cropped) validation and test slices; write the arrays and meta.json.

    meta.json carries what every model of this data is built and served with: the peaks and the input section's
    tile sizes, upload limit, U-Net depth and loss constants, and the median voxel size.
    """
    volumes = [read_volume(folder) for folder in volume_dirs(raw_dir)]
    peaks = peak_settings(params.input.model_dump())
    names, slabs, zs = [], [], []
    for vol in volumes:
        for z in range(vol.image.shape[0]):
            names.append(vol.name)
            zs.append(z)
            slabs.append(vol.name if params.split.group == "volume" else f"{vol.name}/{z // params.split.slab_slices}")
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
            x=np.stack([centre_crop(normalised[vi][z], h, w) for vi, z in pick]),
            y=np.stack([centre_crop(targets[vi][z], h, w) for vi, z in pick]),
            ids=np.asarray([f"{names[i]}:{zs[i]:04d}" for i in rows]),
            groups=np.asarray([slabs[i] for i in rows]),
            z=np.asarray([zs[i] for i in rows], dtype=np.int64),
            instances=np.stack([centre_crop(m, h, w) if m is not None else np.zeros((h, w)) for m in inst]).astype(
                np.int32
            ),
            voxel_size_nm=np.asarray([volumes[vi].voxel_size_nm for vi, _ in pick], dtype=np.float64),
        )
    sizes = {"train": len(train_x), "val": len(idx["val"]), "test": len(idx["test"])}
    train_labels = np.stack(train_y)[:, 0]
    write_meta(
        out_dir,
        {
            "task": "ttubule",
            "P1": P1,
            "P2": P2,
            "peak_smoothing": peaks.smoothing,
            "peak_min_separation": peaks.min_separation,
            "tile": params.input.tile,
            "infer_tile": params.input.infer_tile,
            "max_upload_voxels": params.input.max_upload_voxels,
            "depth": params.input.depth,
            "focal_gamma": params.input.focal_gamma,
            "tversky_alpha": params.input.tversky_alpha,
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


def dataset(prepared_dir: Path, split: str) -> TensorDataset:
    """(x, y): normalised slices or tiles (N, 1, H, W) in [0, 1], targets (N, 2, H, W): label and boundary."""
    x = model_input(load_array(prepared_dir, split, "x"))
    return TensorDataset(x, torch.from_numpy(load_array(prepared_dir, split, "y")))
