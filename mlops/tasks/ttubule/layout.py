"""ttubule's raw-data layout: what the simulator writes, what a user's SBEM volumes must look like, and its readers.

    <raw_dir>/<volume_id>/
      image.tif      multi-page uint8 stack (Z, Y, X), one page per slice
      labels.tif     uint8 (or uint16) stack of the same shape: 0 background, 1 mitochondrion, 2 myofibril, 3 T-tubule
      meta.json      {"voxel_size_nm": {"z": .., "y": .., "x": ..}}
      instances.tif  optional instance ids of the same shape (one per mitochondrion and T-tubule, 0 elsewhere,
                     unique within a volume); without it, instances are the connected components of each class

Every volume folder is one group of the split (or, with ``split.group: slab``, each slab of it). README "Real data:
ttubule" shows the same layout to users.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_FILE, LABELS_FILE, INSTANCES_FILE, META_FILE = "image.tif", "labels.tif", "instances.tif", "meta.json"

BACKGROUND, MITO, MYOFIBRIL, TTUBULE = 0, 1, 2, 3
#: label values 0..N_CLASSES - 1
N_CLASSES = 4
CLASS_NAMES = {BACKGROUND: "background", MITO: "mitochondria", MYOFIBRIL: "myofibril", TTUBULE: "ttubule"}
#: the classes scored and served (background is what is left)
SCORED = {MITO: "mitochondria", MYOFIBRIL: "myofibril", TTUBULE: "ttubule"}


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


def write_volume(folder: Path, image: np.ndarray, labels: np.ndarray, voxel_size_nm, instances=None) -> None:
    """Write one volume in the layout (uncompressed TIFF stacks + meta.json)."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / IMAGE_FILE, image, photometric="minisblack")
    tifffile.imwrite(folder / LABELS_FILE, labels, photometric="minisblack")
    if instances is not None:
        tifffile.imwrite(folder / INSTANCES_FILE, instances, photometric="minisblack")
    z, y, x = (float(v) for v in voxel_size_nm)
    (folder / META_FILE).write_text(json.dumps({"voxel_size_nm": {"z": z, "y": y, "x": x}}, indent=2))


def ingest(src_dir: Path, out_dir: Path) -> int:
    """Copy a user's volume folders into ``out_dir``; ValueError naming the folders that lack a required file."""
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
