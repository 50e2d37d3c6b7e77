"""Scoring a model on the sealed test split: the task's evaluation, checked against its own scorer, with an interval
on every headline metric and paired differences between two models scored on the same cases.

Every place that scores a finished model on the test split goes through here (the evaluate stage, the release
gate re-scoring a champion, a repeat's final scoring), so each opens the sealed split the same way and each number
comes with the interval drawn the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from mlops.config import BootstrapParams
from mlops.data.arrays import open_sealed_splits
from mlops.stats import Interval, bootstrap, paired
from mlops.tasks.base import Evaluation, Task

CI_LOW, CI_HIGH = "_ci_low", "_ci_high"


def _same(a: float, b: float) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def evaluate_sealed(task: Task, model: nn.Module, prepared_dir: Path, section: Any, out_dir: Path, reader: str):
    """``task.evaluate`` with the test split opened for ``reader`` only; refuses an evaluation without cases or
    whose reported metrics its own scorer does not reproduce (an interval of another number would mislead)."""
    with open_sealed_splits(reader):
        evaluation: Evaluation = task.evaluate(model, prepared_dir, section, out_dir)
    if evaluation.cases is None or evaluation.cases.empty:
        raise ValueError(
            f"{task.name}: evaluate returned no cases table, so its metrics can carry no interval; return "
            "Evaluation(cases=...) (see mlops.tasks.base.Evaluation)"
        )
    rescored = task.score(evaluation.cases, section)
    differ = {
        name: (value, evaluation.metrics.get(name))
        for name, value in rescored.items()
        if name not in evaluation.metrics or not _same(value, evaluation.metrics[name])
    }
    if differ:
        raise ValueError(f"{task.name}: score(cases) differs from evaluate's metrics (scored, reported): {differ}")
    return evaluation


def with_intervals(
    task: Task, evaluation: Evaluation, section: Any, boot: BootstrapParams, seed: int
) -> dict[str, float | None]:
    """The evaluation's metrics plus ``<metric>_ci_low`` / ``<metric>_ci_high`` for every metric its scorer gives."""
    intervals = bootstrap(evaluation.cases, lambda c: task.score(c, section), boot.resamples, seed, boot.level)
    metrics: dict[str, float | None] = dict(evaluation.metrics)
    for name, interval in intervals.items():
        metrics[name + CI_LOW], metrics[name + CI_HIGH] = interval.low, interval.high
    return metrics


def differences(
    task: Task, first: pd.DataFrame, second: pd.DataFrame, section: Any, boot: BootstrapParams, seed: int
) -> dict[str, Interval]:
    """``first - second`` per scored metric, paired on the same test cases (resampling the same groups)."""
    return paired(first, second, lambda c: task.score(c, section), boot.resamples, seed, boot.level)


def interval_text(metrics: dict[str, Any], name: str, digits: int = 3) -> str:
    """``0.812 [0.75, 0.87]`` (or the bare value when it has no interval)."""
    value, low, high = metrics.get(name), metrics.get(name + CI_LOW), metrics.get(name + CI_HIGH)
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"
