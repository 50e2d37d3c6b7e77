"""Intervals over independent groups: percentile bootstrap of a metric and of a paired difference.

A test set's photos, frames or voxels are not independent: photos of one lab, windows of one video, slices of one
volume move together. So the bootstrap resamples *groups* (with replacement, within each stratum) and recomputes
the metric from all cases of the drawn groups. A paired difference draws the same groups for both models, so the
interval reflects how differently they do on the same test data, not how hard that data happens to be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

CASE, GROUP, STRATUM = "case", "group", "stratum"
Score = Callable[[pd.DataFrame], dict[str, float]]


@dataclass(frozen=True)
class Interval:
    value: float
    low: float | None
    high: float | None

    def straddles(self, point: float = 0.0) -> bool:
        return self.low is None or self.high is None or self.low <= point <= self.high


def _check(cases: pd.DataFrame) -> None:
    missing = [c for c in (CASE, GROUP, STRATUM) if c not in cases]
    if missing:
        raise ValueError(f"a cases table needs the columns {missing} (see mlops.tasks.base.Evaluation)")
    if cases[CASE].duplicated().any():
        raise ValueError(f"case ids repeat: {cases[CASE][cases[CASE].duplicated()].head(3).tolist()}")


def _draws(cases: pd.DataFrame, resamples: int, seed: int) -> list[np.ndarray]:
    """Row positions of each bootstrap resample (``cases`` indexed 0..n-1): per stratum, as many groups drawn with
    replacement as it has."""
    rng = np.random.default_rng(seed)
    strata = []
    for _, part in cases.groupby(STRATUM, sort=True):
        positions = part.index.to_numpy()
        strata.append([positions[rows] for _, rows in sorted(part.groupby(GROUP, sort=True).indices.items())])
    out = []
    for _ in range(resamples):
        picked = [groups[g] for groups in strata for g in rng.integers(0, len(groups), size=len(groups))]
        out.append(np.concatenate(picked))
    return out


def _percentiles(values: list[float], level: float) -> tuple[float | None, float | None]:
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    # An interval from fewer than 90 % of the resamples (a metric undefined on many, e.g. AUROC with one class)
    # would be narrower than the truth: none is given.
    if len(finite) < 0.9 * len(values) or len(finite) == 0:
        return None, None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap(cases: pd.DataFrame, score: Score, resamples: int, seed: int, level: float = 0.95) -> dict[str, Interval]:
    """Each metric of ``score(cases)`` with its percentile interval over group resamples."""
    _check(cases)
    cases = cases.reset_index(drop=True)
    point = score(cases)
    draws = [score(cases.iloc[rows]) for rows in _draws(cases, resamples, seed)]
    return {
        name: Interval(float(value), *_percentiles([d.get(name, np.nan) for d in draws], level))
        for name, value in point.items()
    }


def paired(
    first: pd.DataFrame, second: pd.DataFrame, score: Score, resamples: int, seed: int, level: float = 0.95
) -> dict[str, Interval]:
    """``score(first) - score(second)`` per metric, with the interval from resampling the same groups for both.

    The two tables must hold the same cases (the same test split scored by two models); anything else is not a
    paired comparison and is refused."""
    _check(first), _check(second)
    a = first.sort_values(CASE).reset_index(drop=True)
    b = second.sort_values(CASE).reset_index(drop=True)
    if len(a) != len(b) or not (a[CASE].astype(str).to_numpy() == b[CASE].astype(str).to_numpy()).all():
        only = sorted(set(a[CASE].astype(str)) ^ set(b[CASE].astype(str)))
        raise ValueError(
            f"not the same test cases ({len(a)} vs {len(b)}; e.g. {only[:3]} in one only): "
            "evaluate both models on the same prepared data"
        )
    if not (a[GROUP].astype(str).to_numpy() == b[GROUP].astype(str).to_numpy()).all():
        raise ValueError("the same case ids sit in different groups: the two tables come from different splits")
    point_a, point_b = score(a), score(b)
    # only what both models report (a single-label segmenter has no mitochondria metrics to compare)
    diffs: dict[str, list[float]] = {name: [] for name in point_a if name in point_b}
    for rows in _draws(a, resamples, seed):
        da, db = score(a.iloc[rows]), score(b.iloc[rows])
        for name in diffs:
            diffs[name].append(da.get(name, np.nan) - db.get(name, np.nan))
    return {
        name: Interval(float(point_a[name] - point_b[name]), *_percentiles(values, level))
        for name, values in diffs.items()
    }
