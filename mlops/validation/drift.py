"""Intensity bounds relative to the previous accepted version of the same task's data.

A static range catches a black or blown-out photo; a shift of the whole distribution (new camera,
different exposure, another microscope setting) passes it sample by sample. So each new version's
per-sample intensity must keep its mean within ``max_mean_shift`` baseline standard deviations of the
accepted version's mean, and its spread within a factor ``max_std_ratio`` of the accepted spread.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from mlops.config import Strict


class DriftParams(Strict):
    #: allowed shift of the mean per-sample intensity, in standard deviations of the accepted version
    max_mean_shift: Annotated[float, Field(gt=0)]
    #: allowed factor between the new and the accepted spread (std) of the per-sample intensity
    max_std_ratio: Annotated[float, Field(gt=1)]


def drift_expectations(baseline: dict[str, Any], version: str, params: DriftParams) -> list[Any]:
    """GX expectations bounding this version's intensity by the accepted one's (none without a baseline)."""
    import great_expectations as gx

    stats = baseline.get("intensity") or {}
    if not stats.get("n"):
        return []
    mean, std, column = stats["mean"], stats["std"], stats["column"]
    spread = max(std, 1e-9)
    note = f"relative to accepted version {version}"
    meta = {"note": f"{note}: mean {mean:.4g}, std {std:.4g}"}
    e = gx.expectations
    return [
        e.ExpectColumnMeanToBeBetween(
            column=column,
            min_value=mean - params.max_mean_shift * spread,
            max_value=mean + params.max_mean_shift * spread,
            meta=meta,
        ),
        e.ExpectColumnStdevToBeBetween(
            column=column, min_value=spread / params.max_std_ratio, max_value=spread * params.max_std_ratio, meta=meta
        ),
    ]
