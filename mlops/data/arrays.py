"""Prepared dataset format: one folder per split holding named .npy arrays (no pickle, byte-stable)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
#: Splits nothing may be chosen on: the test split and gas_leak's held-out field footage.
SEALED = ("test", "field")
#: Who opened the sealed splits in this context (None: sealed). Only evaluation opens them.
_OPENED_BY: ContextVar[str | None] = ContextVar("sealed_splits_opened_by", default=None)


class SealedSplitError(PermissionError):
    """A sealed split was read outside evaluation: a sweep, fit, calibration or selection would have seen it."""


@contextmanager
def open_sealed_splits(reader: str) -> Iterator[None]:
    """Let ``reader`` (the evaluate stage, a release gate re-evaluating a champion, a repeat's final scoring)
    read the test and field splits inside this block. Sweeps, training, calibration and the choice of an arm
    never run inside one, so they cannot select anything on the test split."""
    token = _OPENED_BY.set(reader)
    try:
        yield
    finally:
        _OPENED_BY.reset(token)


def save_split(out_dir: Path, split: str, **arrays: np.ndarray) -> None:
    folder = out_dir / split
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype == object:  # pandas string columns: store as fixed-width unicode, not pickles
            array = array.astype(str)
        np.save(folder / f"{name}.npy", array, allow_pickle=False)


def load_array(prepared_dir: Path, split: str, name: str) -> np.ndarray:
    """One prepared array; the sealed splits only inside :func:`open_sealed_splits`."""
    if split in SEALED and _OPENED_BY.get() is None:
        raise SealedSplitError(
            f"the {split!r} split of {prepared_dir} is sealed: only evaluation reads it (`mlops evaluate`). "
            "Choose hyperparameters, arms, epochs and thresholds on 'val'."
        )
    path = Path(prepared_dir) / split / f"{name}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the prepare stage (`dvc repro` or `mlops data prepare`)")
    return np.load(path, allow_pickle=False)


def write_meta(out_dir: Path, meta: dict) -> None:
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_meta(prepared_dir: Path) -> dict:
    path = Path(prepared_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the prepare stage first")
    return json.loads(path.read_text())


def image_dataset(prepared_dir: Path, split: str):
    """``(images (N, 1, H, W) float32 in [0, 1], targets)`` from a split's uint8 ``x`` and its ``y``: the dataset of
    every task that stores grayscale images as uint8 (fume_hood, fracture)."""
    import torch
    from torch.utils.data import TensorDataset

    x = torch.from_numpy(load_array(prepared_dir, split, "x").astype(np.float32) / 255.0)[:, None]
    return TensorDataset(x, torch.from_numpy(load_array(prepared_dir, split, "y")))
