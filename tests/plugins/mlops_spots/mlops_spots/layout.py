"""The raw layout: ``labels.csv`` (image_id, side, batch) beside ``images/<image_id>.png``; side is left or right,
a batch is a group of images taken together (the split keeps a batch in one split)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from mlops.data.layout import find_image, read_labels_table

LABEL_COLUMNS = ("image_id", "side", "batch")
SIDES = ("left", "right")


def read_labels(raw_dir: Path) -> pd.DataFrame:
    return read_labels_table(raw_dir, LABEL_COLUMNS, "spots", {"image_id": str, "side": str, "batch": str})


def ingest(src_dir: Path, out_dir: Path) -> int:
    labels = read_labels(src_dir)
    missing = [i for i in labels["image_id"] if find_image(src_dir, i) is None]
    if missing:
        raise ValueError(f"{len(missing)} image(s) in labels.csv have no file under images/: {missing[:5]}")
    shutil.copytree(src_dir / "images", out_dir / "images", dirs_exist_ok=True)
    shutil.copy2(src_dir / "labels.csv", out_dir / "labels.csv")
    return len(labels)
