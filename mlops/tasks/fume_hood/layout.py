"""fume_hood's raw-data layout: ``simulate`` writes it, ``ingest`` accepts it, everything else reads it through here::

    images/<photo_id>.jpg | .jpeg | .png   front view of the hood's work surface (RGB or grayscale), any size
                                            >= the validation floor
    labels.csv                              photo_id, lab_id, rating
    masks/<photo_id>.png                    optional: binary mask of what lowered the rating (the simulator writes
                                            one per photo; the pointing game scores Grad-CAM against them)

``rating`` is the expert's 1 (bad) .. 5 (good); ``lab_id`` names the lab the photo comes from and is the split
group (a lab's photos are correlated by its habits).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mlops.data.layout import find_image, read_labels_table, write_labels_table

LABEL_COLUMNS = ("photo_id", "lab_id", "rating")
N_LEVELS = 5  # ratings 1..5
IMAGES, MASKS, LABELS = "images", "masks", "labels.csv"


def read_labels(raw_dir: Path) -> pd.DataFrame:
    return read_labels_table(raw_dir, LABEL_COLUMNS, "fume_hood", {"photo_id": str, "lab_id": str})


def photo_path(raw_dir: Path, photo_id: str) -> Path | None:
    """The photo of ``photo_id`` (any accepted suffix), or None."""
    return find_image(raw_dir, photo_id)


def mask_path(raw_dir: Path, photo_id: str) -> Path:
    """Where the cause mask of ``photo_id`` is, if the data has one."""
    return raw_dir / MASKS / f"{photo_id}.png"


def write_labels(out_dir: Path, rows: Iterable[tuple[str, str, int]]) -> None:
    """labels.csv from (photo_id, lab_id, rating) rows."""
    write_labels_table(out_dir, LABEL_COLUMNS, rows)


def ingest(src_dir: Path, out_dir: Path) -> int:
    """Copy a real dataset in this layout into ``out_dir``; ValueError when a labelled photo is missing."""
    labels = read_labels(src_dir)
    missing = [pid for pid in labels["photo_id"] if photo_path(src_dir, pid) is None]
    if missing:
        raise ValueError(f"{len(missing)} photo(s) in labels.csv have no image under images/: {missing[:5]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in (IMAGES, MASKS):
        if (src_dir / sub).is_dir():
            shutil.copytree(src_dir / sub, out_dir / sub, dirs_exist_ok=True)
    shutil.copy2(src_dir / LABELS, out_dir / LABELS)
    return len(labels)
