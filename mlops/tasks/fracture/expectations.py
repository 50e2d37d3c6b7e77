"""fracture's data checks: the per-image manifest and the Great Expectations suite over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mlops.data.layout import image_stats
from mlops.tasks.fracture.layout import CLASSES, image_path, read_labels
from mlops.tasks.fracture.params import FractureParams
from mlops.validation.columns import Columns, class_balance, declare, leakage_and_duplicates

COLUMNS = Columns(sample="image_id", label="class", intensity="mean_intensity", group="source")


def manifest(raw_dir: Path) -> pd.DataFrame:
    """One row per labelled image with its image statistics (a missing or corrupt file is a row, not an error)."""
    labels = read_labels(raw_dir)
    rows = [{**row, **image_stats(image_path(raw_dir, str(row["image_id"])))} for row in labels.to_dict("records")]
    table = pd.DataFrame(rows)
    table["class_count"] = table.groupby("class", dropna=False)["image_id"].transform("count")
    return declare(table, COLUMNS)


def expectations(params: FractureParams) -> list[Any]:
    import great_expectations as gx

    v = params.validation
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeUnique(column="image_id"),
        e.ExpectColumnValuesToNotBeNull(column="source"),
        e.ExpectColumnUniqueValueCountToBeBetween(column="source", min_value=v.min_sources),
        e.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="class", value_set=list(CLASSES)),
        e.ExpectColumnDistinctValuesToEqualSet(column="class", value_set=list(CLASSES)),
        e.ExpectColumnValuesToBeBetween(column="class_count", min_value=v.min_images_per_class),
        e.ExpectColumnValuesToBeBetween(column="magnification", min_value=1, max_value=1_000_000),
        e.ExpectColumnValuesToBeBetween(column="width", min_value=v.min_width),
        e.ExpectColumnValuesToBeBetween(column="height", min_value=v.min_height),
        e.ExpectColumnValuesToBeInSet(column="mode", value_set=["L", "RGB"]),
        e.ExpectColumnValuesToBeBetween(
            column="mean_intensity", min_value=v.min_mean_intensity, max_value=v.max_mean_intensity
        ),
        e.ExpectColumnValuesToBeBetween(column="intensity_std", min_value=v.min_intensity_std),
        class_balance(0.0, v.max_class_fraction),
        *leakage_and_duplicates(COLUMNS),
    ]
