"""ttubule's data checks: the per-slice manifest of the raw volumes and the Great Expectations suite over it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.tasks.ttubule.layout import (
    IMAGE_FILE,
    LABELS_FILE,
    N_CLASSES,
    SCORED,
    read_stack,
    read_voxel_size,
    volume_dirs,
)
from mlops.tasks.ttubule.normalize import PeakError, PeakSettings, histogram_peaks
from mlops.tasks.ttubule.params import TTubuleParams


def _volume_rows(folder: Path, peaks: PeakSettings) -> list[dict[str, Any]]:
    """Manifest rows (one per image slice) of one volume folder; never raises on bad files."""
    base: dict[str, Any] = {"volume": folder.name, "readable": False, "shapes_match": False}
    try:
        base.update(zip(("voxel_z_nm", "voxel_y_nm", "voxel_x_nm"), read_voxel_size(folder), strict=True))
    except (ValueError, TypeError, json.JSONDecodeError):
        base.update(voxel_z_nm=None, voxel_y_nm=None, voxel_x_nm=None)
    try:
        image = read_stack(folder / IMAGE_FILE)
        labels = read_stack(folder / LABELS_FILE)
    except Exception:  # missing or undecodable TIFF: a data finding for the suite
        return [{"slice_id": f"{folder.name}:all", **base}]
    match = image.shape == labels.shape and image.ndim == 3
    base.update(
        readable=True,
        shapes_match=match,
        image_dtype=str(image.dtype),
        labels_dtype=str(labels.dtype),
        image_shape="x".join(map(str, image.shape)),
        labels_shape="x".join(map(str, labels.shape)),
        vol_slices=int(image.shape[0]),
        vol_height=int(image.shape[-2]) if image.ndim >= 2 else None,
        vol_width=int(image.shape[-1]) if image.ndim >= 2 else None,
    )
    if match:
        counts = np.bincount(labels.ravel().astype(np.int64), minlength=N_CLASSES) / labels.size
        base.update({f"{name}_fraction": float(counts[c]) for c, name in SCORED.items()})
    rows = []
    for z in range(image.shape[0]):
        plane = image[z].astype(np.float32)
        row = {"slice_id": f"{folder.name}:{z:04d}", **base, "z": z}
        row.update(slice_mean=float(plane.mean()), slice_std=float(plane.std()))
        row["content_hash"] = hashlib.sha256(np.ascontiguousarray(image[z]).tobytes()).hexdigest()
        try:  # the study's peaks: reported per slice, absent when the histogram has one
            row["peak_low"], row["peak_high"] = histogram_peaks(image[z], peaks)
            row["peaks_found"] = True
        except PeakError:
            row["peaks_found"] = False
        if match:
            row.update(min_label=int(labels[z].min()), max_label=int(labels[z].max()))
        rows.append(row)
    return rows


def manifest(raw_dir: Path, peaks: PeakSettings) -> pd.DataFrame:
    """One row per slice (volume-level facts repeated on each), so failures name slices; each slice's histogram
    peaks found with ``peaks``, the settings prepare normalises with (params.yaml ttubule.input)."""
    from mlops.validation.columns import Columns, declare

    table = pd.DataFrame([row for folder in volume_dirs(raw_dir) for row in _volume_rows(folder, peaks)])
    for column in ("content_hash", "slice_mean", "peaks_found"):
        if column not in table:  # no volume could be read: still a table the suite can judge
            table[column] = np.nan
    shares = tuple(f"{name}_fraction" for name in SCORED.values())
    columns = Columns(sample="slice_id", label_fractions=shares, intensity="slice_mean", group="volume")
    return declare(table, columns)


def expectations(params: TTubuleParams) -> list[Any]:
    import great_expectations as gx

    from mlops.validation.columns import Columns, leakage_and_duplicates

    v, e = params.validation, gx.expectations
    bounds = {
        "mitochondria": (v.min_mito_fraction, v.max_mito_fraction),
        "myofibril": (v.min_myofibril_fraction, v.max_myofibril_fraction),
        "ttubule": (v.min_ttubule_fraction, v.max_ttubule_fraction),
    }
    fractions = [
        e.ExpectColumnValuesToBeBetween(column=f"{name}_fraction", min_value=low, max_value=high)
        for name, (low, high) in bounds.items()
    ]
    return [
        e.ExpectColumnValuesToBeUnique(column="slice_id"),
        e.ExpectColumnUniqueValueCountToBeBetween(column="volume", min_value=v.min_volumes),
        e.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="shapes_match", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="image_dtype", value_set=["uint8"]),
        e.ExpectColumnValuesToBeInSet(column="labels_dtype", value_set=["uint8", "uint16"]),
        e.ExpectColumnValuesToBeBetween(column="min_label", min_value=0, max_value=N_CLASSES - 1),
        e.ExpectColumnValuesToBeBetween(column="max_label", min_value=0, max_value=N_CLASSES - 1),
        *(e.ExpectColumnValuesToNotBeNull(column=f"voxel_{axis}_nm") for axis in "zyx"),
        *(e.ExpectColumnValuesToBeBetween(column=f"voxel_{axis}_nm", min_value=0.1) for axis in "zyx"),
        e.ExpectColumnValuesToBeBetween(column="vol_slices", min_value=v.min_slices),
        e.ExpectColumnValuesToBeBetween(column="vol_height", min_value=v.min_height),
        e.ExpectColumnValuesToBeBetween(column="vol_width", min_value=v.min_width),
        e.ExpectColumnValuesToBeBetween(column="slice_std", min_value=v.min_slice_std),
        *fractions,
        # the normalisation maps two histogram peaks (mitochondria, myofibrils): each slice must show both
        e.ExpectColumnValuesToBeInSet(column="peaks_found", value_set=[True]),
        *leakage_and_duplicates(Columns(sample="slice_id", group="volume")),
    ]
