"""fume_hood's data checks: the per-photo manifest and the Great Expectations suite over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mlops.data.layout import image_stats
from mlops.tasks.fume_hood.layout import N_LEVELS, photo_path, read_labels
from mlops.tasks.fume_hood.params import FumeHoodParams
from mlops.validation.columns import Columns, class_balance, declare, leakage_and_duplicates

COLUMNS = Columns(sample="photo_id", label="rating", intensity="mean_intensity", group="lab_id")


def manifest(raw_dir: Path) -> pd.DataFrame:
    """One row per labelled photo with its image statistics (a missing or corrupt file is a row, not an error)."""
    labels = read_labels(raw_dir)
    rows = [{**row, **image_stats(photo_path(raw_dir, str(row["photo_id"])))} for row in labels.to_dict("records")]
    table = pd.DataFrame(rows)
    table["rating_count"] = table.groupby("rating")["photo_id"].transform("count")
    return declare(table, COLUMNS)


def expectations(params: FumeHoodParams) -> list[Any]:
    import great_expectations as gx

    v = params.validation
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeUnique(column="photo_id"),
        e.ExpectColumnValuesToNotBeNull(column="lab_id"),
        e.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="rating", value_set=list(range(1, N_LEVELS + 1))),
        e.ExpectColumnValuesToBeBetween(column="rating_count", min_value=v.min_photos_per_rating),
        e.ExpectColumnDistinctValuesToEqualSet(column="rating", value_set=list(range(1, N_LEVELS + 1))),
        e.ExpectColumnValuesToBeBetween(column="width", min_value=v.min_width),
        e.ExpectColumnValuesToBeBetween(column="height", min_value=v.min_height),
        e.ExpectColumnValuesToBeInSet(column="mode", value_set=["RGB", "L"]),
        e.ExpectColumnValuesToBeBetween(
            column="mean_intensity", min_value=v.min_mean_intensity, max_value=v.max_mean_intensity
        ),
        e.ExpectColumnValuesToBeBetween(column="intensity_std", min_value=v.min_intensity_std),
        class_balance(0.0, v.max_rating_fraction),
        *leakage_and_duplicates(COLUMNS),
    ]
