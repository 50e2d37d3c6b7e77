"""fracture's prepared data: the split by source (stratified by failure mode), augmented training copies, the
outlier-exposure images, the arrays and the torch dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from torch.utils.data import TensorDataset

from mlops.data.arrays import image_dataset, save_split, write_meta
from mlops.data.split import split_groups
from mlops.tasks.fracture.layout import CLASSES, image_path, read_labels
from mlops.tasks.fracture.params import AugmentParams, FractureParams
from mlops.tasks.fracture.preprocess import square_gray_input, stored
from mlops.tasks.fracture.simulate import outlier_image

#: Target of an outlier-exposure image in the training split: "no class" (a uniform prediction).
OUTLIER = -1


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


def prepare(raw_dir: Path, out_dir: Path, params: FractureParams, seed: int) -> dict[str, int]:
    """Split by source, stratified by each source's majority failure mode (with a few dozen specimens a plain
    group split can leave a class with one specimen in validation, which makes early stopping chase noise);
    ``augment.copies`` training copies per image (the first the original) plus the outlier images; returns the
    sizes per split."""
    labels = read_labels(raw_dir)
    unknown = sorted(set(labels["class"]) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown class(es) {unknown} in labels.csv; known: {list(CLASSES)}")
    size = params.input.size
    images = []
    for iid in labels["image_id"]:
        with Image.open(image_path(raw_dir, iid)) as img:
            images.append(stored(square_gray_input(img, size)))
    x = np.stack(images)
    y = labels["class"].map(CLASSES.index).to_numpy(dtype=np.int64)
    groups = labels["source"].astype(str).to_numpy()
    ids = labels["image_id"].astype(str).to_numpy()
    idx = split_groups(groups, params.split.val_fraction, params.split.test_fraction, seed, strata=y)

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
            "task": "fracture",
            "input_size": size,
            "classes": list(CLASSES),
            "sizes": sizes,
            "outliers": n_out,
        },
    )
    return sizes


def dataset(prepared_dir: Path, split: str) -> TensorDataset:
    """``(images (N, 1, size, size) in [0, 1], class index or OUTLIER)`` of one split."""
    return image_dataset(prepared_dir, split)


def example_input(prepared_dir: Path) -> np.ndarray:
    """Two validation images as the model takes them."""
    return dataset(prepared_dir, "val").tensors[0][:2].numpy()
