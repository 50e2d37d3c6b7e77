"""What a task's manifest tells the platform about its columns, and the columns derived from that.

Great Expectations sees one table; which column is the sample id, the label, the per-sample intensity,
the split group and the content hash differs per modality. A task's ``manifest()`` names them once with
``declare``; profiles (audit), drift bounds and leakage checks read the names from ``table.attrs``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

ATTR = "mlops.columns"
#: number of distinct split groups a sample's content appears in (>1: it would cross train/val/test)
GROUPS_SHARING_CONTENT = "groups_sharing_content"
#: share of all samples that carry this row's label (class balance)
LABEL_FRACTION = "label_fraction"


@dataclass(frozen=True)
class Columns:
    sample: str
    content_hash: str = "content_hash"
    label: str | None = None  # categorical label: the label distribution is its value counts
    label_fractions: tuple[str, ...] = ()  # or per-sample label shares (e.g. voxel classes of a slice)
    intensity: str | None = None  # one number per sample whose distribution must not drift
    group: str | None = None  # what the split keeps together (lab, specimen, video, volume)


def declare(table: pd.DataFrame, columns: Columns) -> pd.DataFrame:
    """Attach ``columns`` to ``table`` and add the derived leakage and class-balance columns."""
    if columns.group and columns.content_hash in table:
        hashed = table[columns.content_hash].notna()
        shared = table[hashed].groupby(columns.content_hash)[columns.group].transform("nunique")
        table[GROUPS_SHARING_CONTENT] = shared.reindex(table.index).fillna(1).astype(int)
    if columns.label and columns.label in table and len(table):
        counts = table.groupby(columns.label, dropna=False)[columns.sample].transform("count")
        table[LABEL_FRACTION] = counts / len(table)
    table.attrs[ATTR] = asdict(columns)
    return table


def declared(table: pd.DataFrame) -> Columns | None:
    raw: dict[str, Any] | None = table.attrs.get(ATTR)
    if raw is None:
        return None
    return Columns(**{**raw, "label_fractions": tuple(raw.get("label_fractions") or ())})


def leakage_and_duplicates(columns: Columns) -> list[Any]:
    """No sample twice (content hash unique) and no content in two split groups (leakage across splits)."""
    import great_expectations as gx

    e = gx.expectations
    found = [e.ExpectColumnValuesToBeUnique(column=columns.content_hash)]
    if columns.group:
        found.append(e.ExpectColumnValuesToBeBetween(column=GROUPS_SHARING_CONTENT, max_value=1))
    return found


def class_balance(min_fraction: float, max_fraction: float) -> Any:
    """Every label's share of the samples within bounds (works on the column ``declare`` adds)."""
    import great_expectations as gx

    return gx.expectations.ExpectColumnValuesToBeBetween(
        column=LABEL_FRACTION, min_value=min_fraction, max_value=max_fraction
    )
