"""Group split by batch, mirrored training copies (the label swaps), prepared arrays, the torch dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from mlops.data.arrays import load_array, save_split, write_meta
from mlops.data.layout import find_image
from mlops.data.split import split_groups
from mlops_spots.layout import SIDES, read_labels
from mlops_spots.params import SpotsParams
from mlops_spots.preprocess import image_input


def prepare(raw_dir: Path, out_dir: Path, params: SpotsParams, seed: int) -> dict[str, int]:
    labels = read_labels(raw_dir)
    size = params.input.size
    images = []
    for image_id in labels["image_id"]:
        with Image.open(find_image(raw_dir, image_id)) as img:
            images.append(image_input(img, size))
    x = np.stack(images).astype(np.float32)
    y = labels["side"].map(SIDES.index).to_numpy(dtype=np.int64)
    groups, ids = labels["batch"].to_numpy(str), labels["image_id"].to_numpy(str)
    idx = split_groups(groups, params.split.val_fraction, params.split.test_fraction, seed)
    train = idx["train"]
    tx, ty = x[train], y[train]
    if params.augment.mirror:
        tx, ty = np.concatenate([tx, tx[:, :, ::-1]]), np.concatenate([ty, 1 - ty])
    save_split(out_dir, "train", x=np.ascontiguousarray(tx), y=ty)
    for split in ("val", "test"):
        # groups: the batch of each image, the independent unit of the test metrics' intervals
        save_split(out_dir, split, x=x[idx[split]], y=y[idx[split]], ids=ids[idx[split]], groups=groups[idx[split]])
    sizes = {"train": len(ty), "val": len(idx["val"]), "test": len(idx["test"])}
    write_meta(out_dir, {"task": "spots", "size": size, "sizes": sizes})
    return sizes


def dataset(prepared_dir: Path, split: str) -> TensorDataset:
    x = torch.from_numpy(load_array(prepared_dir, split, "x"))[:, None]
    return TensorDataset(x, torch.from_numpy(load_array(prepared_dir, split, "y")))
