"""What validation checks on gas_leak's raw data: per-sequence statistics and the Great Expectations suite."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.tasks.gas_leak.layout import DOMAINS, read_labels, sequence_path
from mlops.tasks.gas_leak.params import GasLeakParams
from mlops.validation.columns import Columns, declare, leakage_and_duplicates

# domain (sim | field) is the label whose balance the audit shows; scene_id is what the split keeps together
COLUMNS = Columns(sample="seq_id", label="domain", intensity="mean_intensity", group="scene_id")


def _sequence_stats(path: Path) -> dict[str, Any]:
    stats: dict[str, Any] = {"file": str(path), "exists": path.is_file(), "loads": False}
    if not stats["exists"]:
        return stats
    try:
        frames = np.load(path, allow_pickle=False)
    except Exception:  # any reader failure is a data finding, reported by validation
        return stats
    stats.update(loads=True, ndim=int(frames.ndim), dtype=str(frames.dtype))
    stats["content_hash"] = hashlib.sha256(
        f"{frames.shape}{frames.dtype}".encode() + np.ascontiguousarray(frames).tobytes()
    ).hexdigest()
    if frames.ndim != 3 or frames.dtype.kind != "f":
        return stats
    finite = np.isfinite(frames)
    stats.update(frames=frames.shape[0], height=frames.shape[1], width=frames.shape[2], finite=bool(finite.all()))
    values = frames[finite]
    if values.size:
        stats.update(
            min_intensity=float(values.min()),
            max_intensity=float(values.max()),
            intensity_std=float(values.std()),
            mean_intensity=float(values.mean()),
        )
    return stats


def manifest(raw_dir: Path) -> pd.DataFrame:
    """One row per labelled sequence: its labels and its file's statistics (never raises on a bad file)."""
    labels = read_labels(raw_dir)
    rows = [{**row, **_sequence_stats(sequence_path(raw_dir, str(row["seq_id"])))} for row in labels.to_dict("records")]
    table = pd.DataFrame(rows)
    computed = ("ndim", "dtype", "content_hash", "frames", "height", "width", "finite")
    for column in (*computed, "min_intensity", "max_intensity", "intensity_std", "mean_intensity"):
        if column not in table.columns:  # every file failed to load: still a table the suite can judge
            table[column] = np.nan
    # Labels inside each sequence's own frame (the pixel grid runs from 0 to size-1).
    table["label_in_frame"] = (
        table["x"].between(0, table["width"] - 1) & table["y"].between(0, table["height"] - 1)
    ).fillna(False)
    table["n_sequences"] = len(table)
    return declare(table, COLUMNS)


def expectations(params: GasLeakParams) -> list[Any]:
    import great_expectations as gx

    v = params.validation
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeUnique(column="seq_id"),
        e.ExpectColumnValuesToBeBetween(column="n_sequences", min_value=v.min_sequences),
        e.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="loads", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="ndim", value_set=[3]),
        e.ExpectColumnValuesToBeInSet(column="dtype", value_set=["float32", "float64", "float16"]),
        e.ExpectColumnValuesToBeBetween(column="frames", min_value=v.min_frames, max_value=v.max_frames),
        e.ExpectColumnValuesToBeInSet(column="height", value_set=[v.height]),
        e.ExpectColumnValuesToBeInSet(column="width", value_set=[v.width]),
        e.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
        e.ExpectColumnValuesToBeBetween(column="min_intensity", min_value=v.min_intensity, max_value=v.max_intensity),
        e.ExpectColumnValuesToBeBetween(column="max_intensity", min_value=v.min_intensity, max_value=v.max_intensity),
        e.ExpectColumnValuesToBeBetween(column="intensity_std", min_value=v.min_intensity_std),
        e.ExpectColumnValuesToNotBeNull(column="x"),
        e.ExpectColumnValuesToNotBeNull(column="y"),
        e.ExpectColumnValuesToNotBeNull(column="z"),
        e.ExpectColumnValuesToBeInSet(column="label_in_frame", value_set=[True]),
        e.ExpectColumnValuesToBeBetween(column="z", min_value=-v.z_abs_max, max_value=v.z_abs_max),
        e.ExpectColumnValuesToBeInSet(column="domain", value_set=list(DOMAINS)),
        e.ExpectColumnValuesToBeInSet(column="occluded", value_set=[0, 1]),
        *leakage_and_duplicates(COLUMNS),
    ]
