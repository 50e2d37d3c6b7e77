"""What only some tasks can do, as small protocols a task opts into by implementing them.

The platform asks ``isinstance(task, Calibrates)`` (and so on) instead of calling a member every task must carry:
the core ``Task`` contract stays what all five studies share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import pandas as pd
from torch import nn

from mlops.tasks.base import ModelSpec


@runtime_checkable
class TakesContributions(Protocol):
    """Members may upload samples that a steward accepts into the raw data (the review queue)."""

    #: labels a member may claim
    contribution_labels: ClassVar[tuple[str, ...]]
    #: metadata the real-data layout needs besides the label (asked of the member with each upload)
    contribution_fields: ClassVar[tuple[str, ...]]

    def add_contribution(
        self, raw_dir: Path, sample_id: str, data: bytes, suffix: str, label: str, source: str, meta: dict[str, str]
    ) -> Path:
        """Write one accepted contribution into ``raw_dir`` in the real-data layout; return its file."""


@runtime_checkable
class Calibrates(Protocol):
    """Serving-time settings derived from held-out data after training (e.g. an alarm threshold)."""

    def calibrate(self, model: nn.Module, spec: ModelSpec, prepared_dir: Path, params: Any) -> ModelSpec:
        """``spec`` with the calibrated settings; called after training, before the model is saved."""


@runtime_checkable
class ComparesArms(Protocol):
    """Figures across arms from each arm's evaluation tables (e.g. every arm's ROC curve in one plot)."""

    def compare(self, tables: dict[str, dict[str, pd.DataFrame]], out_dir: Path) -> dict[str, Path]:
        """``tables`` maps arm -> that arm's ``Evaluation.tables``; returns figure name -> file."""


def calibrate(task: object, model: nn.Module, spec: ModelSpec, prepared_dir: Path, params: Any) -> ModelSpec:
    """The task's calibrated spec, or ``spec`` unchanged for a task that does not calibrate."""
    return task.calibrate(model, spec, prepared_dir, params) if isinstance(task, Calibrates) else spec


def compare(task: object, tables: dict[str, dict[str, pd.DataFrame]], out_dir: Path) -> dict[str, Path]:
    """The task's cross-arm figures, or none for a task that draws none."""
    return task.compare(tables, out_dir) if isinstance(task, ComparesArms) else {}
