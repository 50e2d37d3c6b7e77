"""fracture as a platform Task: SEM images + labels table -> failure mode, with Grad-CAM and "unknown".

Wiring only: each method delegates to the module that holds its responsibility (layout, simulate, expectations,
prepare, model, metrics, evaluate; serving is ``inference``). Members may contribute images
(``mlops.tasks.capabilities.TakesContributions``); the real-data layout is documented in ``layout.py``. The served
"unknown" threshold is calibrated on validation after training (``Calibrates``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mlops.tasks import upload_cases
from mlops.tasks.base import Claim, Display, Evaluation, ModelSpec, Task
from mlops.tasks.fracture import evaluate, expectations, layout, metrics, prepare, simulate
from mlops.tasks.fracture.model import MODELS, build
from mlops.tasks.fracture.params import FractureParams


class FractureTask(Task):
    name = "fracture"
    Params = FractureParams
    inference_module = "mlops.tasks.fracture.inference"
    models = MODELS
    claim = Claim(
        text=(
            "The consortium's web service answers the failure mode (fatigue, ductile overload, brittle cleavage, "
            "intergranular) of a member's SEM fractograph with a CNN trained on members' images; the source reports "
            "no accuracy (only latency: ~60 s on its own server, ~30 s from the cloud endpoint), so the claim is the "
            "classifier's skill over chance on the four failure modes."
        ),
        metric="test_macro_f1",
        better="cnn",
        than=None,
        # Four balanced classes: a classifier without skill has an expected macro-F1 of at most 1/4.
        chance=0.25,
        simulator_note=(
            "Each failure mode is one procedural texture family (striations with beach marks, dimples, facets with "
            "river lines, polyhedral grains) whose gray level, contrast and image size are drawn independently of the "
            "class (a test checks neither separates the classes), one imaging setting per specimen. So it tests that "
            "a CNN learns these textures across specimens and is not fooled by brightness, not that it handles real "
            "SEM variety (mixed-mode surfaces, oxidation, magnification, members' microscopes), where the study's "
            "task is harder. The out-of-domain probe is the few natural photos shipped in installed wheels (and "
            "their corner crops), not what members would really upload; outlier exposure trains on procedural "
            "images, never on the probe. The served unknown threshold is calibrated on validation fractographs."
        ),
    )

    # --- data ---------------------------------------------------------------------------------
    def simulate(self, out_dir: Path, params: FractureParams, seed: int, progress: Callable[[int], None]) -> int:
        return simulate.simulate(out_dir, params.simulate, seed, progress)

    def simulated_samples(self, params: FractureParams) -> int:
        return params.simulate.n_specimens * params.simulate.images_per_specimen

    def ingest(self, src_dir: Path, out_dir: Path) -> int:
        return layout.ingest(src_dir, out_dir)

    # --- contributions (TakesContributions) ----------------------------------------------------
    contribution_labels = layout.CLASSES
    contribution_fields = layout.CONTRIBUTION_FIELDS

    def add_contribution(
        self, raw_dir: Path, sample_id: str, data: bytes, suffix: str, label: str, source: str, meta: dict[str, str]
    ) -> Path:
        """Image under ``images/`` plus one labels.csv row; ``source`` (the member) becomes its split group."""
        return layout.add_contribution(raw_dir, sample_id, data, suffix, label, source, meta)

    def manifest(self, raw_dir: Path, params: Any) -> pd.DataFrame:
        return expectations.manifest(raw_dir)

    def expectations(self, params: FractureParams) -> list[Any]:
        return expectations.expectations(params)

    def prepare(self, raw_dir: Path, out_dir: Path, params: FractureParams, seed: int) -> dict[str, int]:
        return prepare.prepare(raw_dir, out_dir, params, seed)

    def dataset(self, prepared_dir: Path, split: str) -> TensorDataset:
        return prepare.dataset(prepared_dir, split)

    # --- model --------------------------------------------------------------------------------
    def build_model(self, hparams: dict[str, Any], prepared_dir: Path) -> tuple[nn.Module, ModelSpec]:
        return build(hparams, prepared_dir, self.inference_module)

    def criterion(self, model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Cross-entropy with outlier exposure (outlier images pulled towards a uniform prediction)."""
        return metrics.loss

    def val_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return metrics.val_metrics(outputs, targets)

    def evaluate(self, model: nn.Module, prepared_dir: Path, params: FractureParams, out_dir: Path) -> Evaluation:
        return evaluate.evaluate(model, prepared_dir, params, out_dir)

    def score(self, cases: pd.DataFrame, params: FractureParams) -> dict[str, float]:
        """The test and out-of-domain metrics of any subset of the cases (a bootstrap draw)."""
        return metrics.score(cases, params.evaluate.calibration_bins)

    # --- calibration (Calibrates) --------------------------------------------------------------
    def calibrate(self, model: nn.Module, spec: ModelSpec, prepared_dir: Path, params: FractureParams) -> ModelSpec:
        """The spec with the served "unknown" threshold, set on the validation fractographs, in ``extra``."""
        return evaluate.calibrate(model, spec, prepared_dir, params)

    def example_input(self, prepared_dir: Path) -> np.ndarray:
        return prepare.example_input(prepared_dir)

    # PNG/JPEG uploads: the shared example and bad cases of image tasks (mlops/tasks/upload_cases.py)
    example_upload = staticmethod(upload_cases.first_image_upload)
    bad_uploads = staticmethod(upload_cases.bad_image_uploads)
    # How the members' web page shows the answer (mlops/serving/static/index.html)
    display = Display("class", "Failure type", "an SEM fractograph (PNG or JPEG)", upload_cases.IMAGE_SUFFIX_TYPES)
