"""The envelope every task's params.yaml section shares, and the sections most tasks can take as they are.

A task's ``Params`` subclasses ``TaskParams`` and narrows the sections that are its own (``simulate``,
``validation``, ``input``, ``augment``, ``evaluate``, and ``split`` where it needs more). The envelope is what
``dvc.yaml`` relies on: every stage names ``${key}.<section>`` of these, so a task without one is a config error
that names the section, not a DVC error about a missing parameter.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mlops.config import Gates, Strict
from mlops.validation.drift import DriftParams

Fraction = Annotated[float, Field(ge=0, lt=1)]


class SplitParams(Strict):
    """Group-aware split (``mlops.data.split.split_groups``): shares of the groups held out for validation and test."""

    val_fraction: Fraction
    test_fraction: Fraction


class TrainParams(Strict):
    epochs: Annotated[int, Field(ge=1)]
    #: epochs without a better validation objective before training stops
    patience: Annotated[int, Field(ge=1)]


class ValidationParams(Strict):
    """A task's data checks; every task bounds its intensity drift against the last accepted version."""

    drift: DriftParams


class TaskParams(Strict):
    """One task's section of params.yaml."""

    simulate: Strict
    validation: ValidationParams
    split: Strict
    input: Strict
    augment: Strict
    train: TrainParams
    evaluate: Strict
    gates: Gates


#: the sections of every task's params, in the order params.yaml writes them
SECTIONS = tuple(TaskParams.model_fields)
