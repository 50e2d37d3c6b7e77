"""fume_hood's prepared data: the split by lab, augmented training copies, the arrays and the torch dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import TensorDataset

from mlops.data.arrays import image_dataset, save_split, write_meta
from mlops.data.augment import augment_image
from mlops.data.split import split_groups
from mlops.tasks.fume_hood.layout import mask_path, photo_path, read_labels
from mlops.tasks.fume_hood.params import FumeHoodParams
from mlops.tasks.fume_hood.preprocess import mask_input, photo_input, stored


def prepare(raw_dir: Path, out_dir: Path, params: FumeHoodParams, seed: int) -> dict[str, int]:
    """Split by lab (no lab crosses splits), ``augment.copies`` training copies per photo (the first the
    original), cause masks kept for validation and test; returns the sizes per split."""
    labels = read_labels(raw_dir)
    w, h = params.input.width, params.input.height
    images, masks = [], []
    for pid in labels["photo_id"]:
        with Image.open(photo_path(raw_dir, pid)) as img:
            images.append(stored(photo_input(img, w, h)))
        mask_file = mask_path(raw_dir, pid)
        if mask_file.is_file():
            with Image.open(mask_file) as m:
                masks.append(mask_input(m, w, h))
        else:
            masks.append(np.zeros((h, w), dtype=bool))
    x, cause = np.stack(images), np.stack(masks).astype(np.uint8)
    y = labels["rating"].to_numpy(dtype=np.int64) - 1
    groups = labels["lab_id"].astype(str).to_numpy()
    ids = labels["photo_id"].astype(str).to_numpy()
    idx = split_groups(groups, params.split.val_fraction, params.split.test_fraction, seed)

    a, rng = params.augment, np.random.default_rng(seed)
    brightness = (a.brightness_low, a.brightness_high)
    train_x, train_rows = [], []
    for i in idx["train"]:
        for copy in range(a.copies):
            train_x.append(
                x[i] if copy == 0 else augment_image(x[i], rng, a.max_rotation_deg, a.max_shift_frac, brightness)
            )
            train_rows.append(i)
    rows = np.asarray(train_rows, dtype=np.int64)
    save_split(out_dir, "train", x=np.stack(train_x), y=y[rows], groups=groups[rows], ids=ids[rows])
    for split in ("val", "test"):
        j = idx[split]
        save_split(out_dir, split, x=x[j], y=y[j], groups=groups[j], ids=ids[j], masks=cause[j])
    sizes = {"train": len(rows), "val": len(idx["val"]), "test": len(idx["test"])}
    write_meta(out_dir, {"task": "fume_hood", "input_width": w, "input_height": h, "sizes": sizes})
    return sizes


def dataset(prepared_dir: Path, split: str) -> TensorDataset:
    """``(photos (N, 1, H, W) in [0, 1], rating index 0..4)`` of one split."""
    return image_dataset(prepared_dir, split)


def example_input(prepared_dir: Path) -> np.ndarray:
    """Two validation photos as the model takes them."""
    return dataset(prepared_dir, "val").tensors[0][:2].numpy()
