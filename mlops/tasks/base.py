"""The Task interface: the only place that knows a domain.

Platform code (validation, training, tuning, tracking, registry, serving) works through this interface
and never branches on a task's name. The interface is shaped for all five studies:

- 2-D photos with an ordinal label (fume_hood), 3-D frame stacks with coordinates (gas_leak),
  binary pose-map sequences scored without labels (skeleton), EM volumes with per-voxel classes
  (ttubule), SEM images with a class (fracture);
- so a "sample" is whatever ``dataset()`` yields as ``(inputs, targets)`` tensors, the loss and the
  validation metrics are the task's, and evaluation returns metrics plus image artifacts.

Invariants: methods are pure with respect to their arguments (paths in, files/values out), take
their params as the task's typed ``Params`` section, and do no work at import time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from mlops.inference.model_files import ModelRegistry, ModelSpec
from mlops.stats import CASE, GROUP, STRATUM  # the columns every Evaluation.cases table has

__all__ = [
    "CASE",
    "GROUP",
    "STRATUM",
    "BadUpload",
    "Claim",
    "Display",
    "Evaluation",
    "ModelRegistry",
    "ModelSpec",
    "Task",
    "Upload",
]


@dataclass
class Evaluation:
    """What a task's evaluation produced: scalar metrics, image artifacts, DVC plot tables, and the per-case table
    its headline metrics are computed from.

    ``cases`` has one row per scored unit: ``case`` (a stable id, so two models' rows pair up), ``group`` (the
    independent unit the bootstrap resamples: lab, scene, video, specimen, volume), ``stratum`` (groups are
    resampled within each: e.g. in-domain test vs field footage; one value when there is one population), and
    whatever the task's ``score`` reads. ``Task.score(cases, params)`` must give back, for the full table, the
    same values as ``metrics`` (the evaluate stage checks it), so every interval is an interval of the reported
    number.
    """

    metrics: dict[str, float]
    images: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    cases: pd.DataFrame | None = None


@dataclass(frozen=True)
class Claim:
    """The study's headline finding this task is asked to reproduce, in a form `mlops findings` can test: arm
    ``better`` beats arm ``than`` on ``metric`` (a test metric as ``evaluate`` reports it). A study without an
    arm comparison (``than`` None) is checked against ``chance``: ``better`` must beat it."""

    #: the study's claim in one sentence, with the study's own numbers
    text: str
    metric: str
    better: str
    than: str | None = None
    higher_is_better: bool = True
    #: the metric a model without skill reaches (for a claim without a second arm)
    chance: float | None = None
    #: what the simulator does and does not test of the claim (printed beside the verdict)
    simulator_note: str = ""


@dataclass(frozen=True)
class Upload:
    """One file as a client sends it to ``POST /v1/models/<task>/predict`` (multipart field ``file``)."""

    data: bytes
    content_type: str
    filename: str = "upload"


@dataclass(frozen=True)
class BadUpload:
    """An upload the service must refuse: HTTP ``status`` (4xx) and a JSON ``detail`` holding each of ``words``."""

    name: str
    data: bytes
    content_type: str
    status: int
    words: tuple[str, ...]
    filename: str = "upload"


#: How the members' web page can show an answer; each kind reads these fields of the predict route's JSON:
#: ``rating`` rating, probabilities, heatmap_png; ``class`` class, confidence, probabilities, heatmap_png;
#: ``position`` x, y, z, units, heatmap_png (the position drawn on the frame); ``timeline`` timeline_png, scores,
#: threshold, n_flagged, flagged_spans; ``masks`` overlay_png, classes (masks_png per slice), instances.
DISPLAY_KINDS = ("rating", "class", "position", "timeline", "masks")


@dataclass(frozen=True)
class Display:
    """How the members' web page (mlops/serving/static/index.html) shows this task's answer, and what it uploads.

    ``files``: the file suffixes the page's picker offers and the content type it sends each as (a browser knows
    no type for ``.npy``); ``labels``: words or colours for the answer's keys (a rating's levels, a mask's class).
    """

    kind: str
    #: what the page calls the answer ("Rating", "Failure type")
    title: str
    #: what to upload, in words
    upload: str
    files: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in DISPLAY_KINDS:
            raise ValueError(f"display kind {self.kind!r} is none of {DISPLAY_KINDS}")
        if not all(suffix.startswith(".") for suffix in self.files):
            raise ValueError(f"file suffixes start with a dot: {sorted(self.files)}")


class Task(ABC):
    """One study's domain: data schema, simulator, ingest, models, loss, metrics, explanation.

    What only some tasks can do (take members' contributions, calibrate a serving setting, draw figures across
    arms) is not here: a task opts in by also implementing a protocol of ``mlops.tasks.capabilities``.
    """

    name: ClassVar[str]
    #: pydantic model of this task's params.yaml section (strict).
    Params: ClassVar[type]
    #: Dotted module whose ``load(weights, spec)`` returns the serving-side predictor.
    inference_module: ClassVar[str]
    models: ClassVar[ModelRegistry]
    #: the study's finding (`mlops findings` retrains the arms over seeds and judges it); None: no claim
    claim: ClassVar[Claim | None] = None
    #: how the members' web page shows the answer; None: it lists the answer's fields
    display: ClassVar[Display | None] = None

    # --- data ---------------------------------------------------------------------------------
    @abstractmethod
    def simulate(self, out_dir: Path, params: Any, seed: int, progress: Callable[[int], None]) -> int:
        """Write a simulated dataset in the documented real-data layout; return the sample count."""

    def simulated_samples(self, params: Any) -> int | None:
        """How many samples ``simulate`` will write (for its progress bar); None if unknown."""
        return None

    @abstractmethod
    def ingest(self, src_dir: Path, out_dir: Path) -> int:
        """Copy a user's real data (documented layout) into ``out_dir``; return the sample count."""

    @abstractmethod
    def manifest(self, raw_dir: Path, params: Any) -> pd.DataFrame:
        """One row per sample with computed statistics, for validation (never raises on bad files).

        ``params`` is the task's section, for statistics computed as prepare computes them (ttubule's peaks)."""

    @abstractmethod
    def expectations(self, params: Any) -> Iterable[Any]:
        """Great Expectations expectations over ``manifest()`` (gx.expectations.* instances)."""

    @abstractmethod
    def prepare(self, raw_dir: Path, out_dir: Path, params: Any, seed: int) -> dict[str, int]:
        """Split (group-aware) and augment; write the prepared dataset; return sizes per split."""

    @abstractmethod
    def dataset(self, prepared_dir: Path, split: str) -> Dataset:
        """A torch Dataset of ``(inputs, targets)`` for one split of the prepared data."""

    # --- model --------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, hparams: dict[str, Any], prepared_dir: Path) -> tuple[nn.Module, ModelSpec]:
        """Build the model named by ``hparams['model']`` and the recipe to rebuild it."""

    @abstractmethod
    def criterion(self, model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The training loss of ``model``: what the training loop calls per batch as ``loss(outputs, targets)``.

        The task's one loss concept. A loss with tuned hyperparameters (a loss choice, class weights) gets them
        from the model, which ``build_model`` made from the hyperparameters, and returns a loss bound to them.
        """

    @abstractmethod
    def val_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Metrics over the concatenated outputs of a whole split (names without a split prefix)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, prepared_dir: Path, params: Any, out_dir: Path) -> Evaluation:
        """Test-split metrics, plots and explanation images."""

    @abstractmethod
    def score(self, cases: pd.DataFrame, params: Any) -> dict[str, float]:
        """The headline test metrics (names as ``evaluate`` reports them) from any subset of ``Evaluation.cases``:
        what the bootstrap recomputes per resample and the release gates compare in pairs. Metrics that are not
        functions of the cases (e.g. a Grad-CAM pointing game on a few samples) are not returned and carry no
        interval."""

    @abstractmethod
    def example_input(self, prepared_dir: Path) -> np.ndarray:
        """A small batch of model inputs, for the MLflow signature and serving warm-up."""

    # --- serving contract (tests/test_contract.py sends these to a real server for every task) ---------
    @abstractmethod
    def example_upload(self, raw_dir: Path) -> Upload:
        """A valid file for ``POST /v1/models/<task>/predict``, built from the data in ``raw_dir``."""

    @abstractmethod
    def bad_uploads(self, raw_dir: Path) -> list[BadUpload]:
        """Every kind of bad upload the task's service refuses, each with its 4xx status and the words of its message.

        Only files a client can really send over HTTP, judged by a service with the default limits
        (``Settings``): at least an empty upload (400), a foreign file or content type (415), an oversized
        one (413) and a corrupt or wrongly shaped one (422), plus the task's own kinds.
        ``mlops.tasks.upload_cases`` holds the shared ones.
        """
