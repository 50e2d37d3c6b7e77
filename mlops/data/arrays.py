"""Prepared dataset format: one folder per split holding named .npy arrays (no pickle, byte-stable)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


def save_split(out_dir: Path, split: str, **arrays: np.ndarray) -> None:
    folder = out_dir / split
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype == object:  # pandas string columns: store as fixed-width unicode, not pickles
            array = array.astype(str)
        np.save(folder / f"{name}.npy", array, allow_pickle=False)


def load_array(prepared_dir: Path, split: str, name: str) -> np.ndarray:
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
