"""ttubule as a platform Task: SBEM stacks + voxel labels -> per-voxel classes, boundaries and 3-D instances.

Only wiring: the layout, simulator, validation, preparation, models, losses, evaluation and uploads live in the
modules beside this one. It calibrates (the served per-class thresholds) and compares arms (their T-tubule curves).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mlops.tasks.base import Evaluation, ModelSpec, Task
from mlops.tasks.ttubule import evaluate, expectations, layout, metrics, model, plots, prepare, simulate, uploads
from mlops.tasks.ttubule.params import TTubuleParams
from mlops.tasks.ttubule.preprocess import peak_settings


class TTubuleTask(Task):
    name = "ttubule"
    Params = TTubuleParams
    inference_module = "mlops.tasks.ttubule.inference"
    models = model.MODELS

    # --- data ---------------------------------------------------------------------------------
    def simulate(self, out_dir: Path, params: TTubuleParams, seed: int, progress: Callable[[int], None]) -> int:
        return simulate.simulate_volumes(out_dir, params.simulate, seed, progress)

    def simulated_samples(self, params: TTubuleParams) -> int:
        return params.simulate.n_volumes

    def ingest(self, src_dir: Path, out_dir: Path) -> int:
        return layout.ingest(src_dir, out_dir)

    def manifest(self, raw_dir: Path, params: TTubuleParams) -> pd.DataFrame:
        return expectations.manifest(raw_dir, peak_settings(params.input.model_dump()))

    def expectations(self, params: TTubuleParams) -> list[Any]:
        return expectations.expectations(params)

    def prepare(self, raw_dir: Path, out_dir: Path, params: TTubuleParams, seed: int) -> dict[str, int]:
        return prepare.prepare(raw_dir, out_dir, params, seed)

    def dataset(self, prepared_dir: Path, split: str) -> TensorDataset:
        return prepare.dataset(prepared_dir, split)

    # --- model --------------------------------------------------------------------------------
    def build_model(self, hparams: dict[str, Any], prepared_dir: Path) -> tuple[nn.Module, ModelSpec]:
        return model.build_model(hparams, prepared_dir, self.inference_module)

    def criterion(self, model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss the model was built with (its tuned ``loss``, ``rare_weight``, ``boundary_weight`` and the
        loss constants of params.yaml)."""
        return partial(metrics.segmentation_loss, cfg=model.loss_config)

    def val_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return metrics.val_metrics(outputs, targets)

    def evaluate(self, model: nn.Module, prepared_dir: Path, params: TTubuleParams, out_dir: Path) -> Evaluation:
        return evaluate.evaluate(model, prepared_dir, params, out_dir)

    def example_input(self, prepared_dir: Path) -> np.ndarray:
        return prepare.dataset(prepared_dir, "val").tensors[0][:2].numpy()

    # --- capabilities (mlops.tasks.capabilities) ----------------------------------------------
    def calibrate(self, model: nn.Module, spec: ModelSpec, prepared_dir: Path, params: TTubuleParams) -> ModelSpec:
        """The served per-class thresholds (the study's, on the validation slices) and instance post-processing."""
        return evaluate.calibrate(model, spec, prepared_dir, params)

    def compare(self, tables: dict[str, dict[str, pd.DataFrame]], out_dir: Path) -> dict[str, Path]:
        return plots.compare(tables, out_dir)

    # What its service answers and refuses (mlops/tasks/ttubule/uploads.py)
    example_upload = staticmethod(uploads.example_upload)
    bad_uploads = staticmethod(uploads.bad_uploads)
