"""Reading the real-data layouts tasks share: a labels table beside a folder of image files."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_labels_table(
    raw_dir: Path, columns: tuple[str, ...], task: str, dtypes: dict[str, type], name: str = "labels.csv"
) -> pd.DataFrame:
    """``raw_dir/<name>`` (a CSV table of the layout) with ``columns`` first (validation names failing samples by
    the first column).

    ValueError naming the file and what is missing when the table or a column is absent.
    """
    path = raw_dir / name
    if not path.is_file():
        raise ValueError(f"{path} is missing: the {task} layout needs {name} with {columns}")
    table = pd.read_csv(path, dtype=dtypes)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; expected {columns}")
    return table[[*columns, *(c for c in table.columns if c not in columns)]]


def write_labels_table(raw_dir: Path, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """``raw_dir/labels.csv`` with the header ``columns`` and one line per row (what ``read_labels_table`` reads)."""
    with (raw_dir / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(columns))
        writer.writerows(rows)


def find_image(raw_dir: Path, sample_id: str) -> Path | None:
    """The image of ``sample_id`` under ``raw_dir/images/`` (any accepted suffix), or None."""
    for suffix in IMAGE_SUFFIXES:
        path = raw_dir / "images" / f"{sample_id}{suffix}"
        if path.is_file():
            return path
    return None


def image_stats(path: Path | None) -> dict[str, Any]:
    """Per-image facts for validation; a missing or undecodable file is a finding, never an exception."""
    stats: dict[str, Any] = {"file": str(path) if path else None, "exists": path is not None, "decodes": False}
    if path is None:
        return stats
    stats["content_hash"] = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        with Image.open(path) as img:
            img.load()
            gray = np.asarray(img.convert("L"), dtype=np.float32)
            stats.update(width=img.width, height=img.height, mode=img.mode)
    except Exception:  # any decoder failure is reported by validation, sample by sample
        return stats
    stats.update(decodes=True, mean_intensity=float(gray.mean()), intensity_std=float(gray.std()))
    stats.update(min_intensity=float(gray.min()), max_intensity=float(gray.max()))
    return stats
