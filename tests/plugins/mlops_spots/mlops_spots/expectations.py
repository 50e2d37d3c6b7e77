"""The manifest (one row per image) and the Great Expectations suite over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mlops.data.layout import find_image, image_stats
from mlops.validation.columns import Columns, declare, leakage_and_duplicates
from mlops_spots.layout import SIDES, read_labels
from mlops_spots.params import SpotsParams

COLUMNS = Columns(sample="image_id", label="side", intensity="mean_intensity", group="batch")


def manifest(raw_dir: Path) -> pd.DataFrame:
    labels = read_labels(raw_dir)
    rows = [{**row, **image_stats(find_image(raw_dir, row["image_id"]))} for row in labels.to_dict("records")]
    return declare(pd.DataFrame(rows), COLUMNS)


def expectations(params: SpotsParams) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=params.validation.min_images),
        e.ExpectColumnValuesToBeUnique(column="image_id"),
        e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="side", value_set=list(SIDES)),
        *leakage_and_duplicates(COLUMNS),
    ]
