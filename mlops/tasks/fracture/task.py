"""fracture as a platform Task: SEM images + labels table -> failure mode, with Grad-CAM and "unknown".

Wiring only: each method delegates to the module that holds its responsibility (layout, simulate, expectations,
prepare, model, metrics, evaluate; serving is ``inference``). Members may contribute images
(``mlops.tasks.capabilities.TakesContributions``); the real-data layout is documented in ``layout.py``.
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
from mlops.tasks.base import Evaluation, ModelSpec, Task
from mlops.tasks.fracture import evaluate, expectations, layout, metrics, prepare, simulate
from mlops.tasks.fracture.model import MODELS, build
from mlops.tasks.fracture.params import FractureParams


class FractureTask(Task):
    name = "fracture"
    Params = FractureParams
    inference_module = "mlops.tasks.fracture.inference"
    models = MODELS

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

    def example_input(self, prepared_dir: Path) -> np.ndarray:
        return prepare.example_input(prepared_dir)

    # PNG/JPEG uploads: the shared example and bad cases of image tasks (mlops/tasks/upload_cases.py)
    example_upload = staticmethod(upload_cases.first_image_upload)
    bad_uploads = staticmethod(upload_cases.bad_image_uploads)
