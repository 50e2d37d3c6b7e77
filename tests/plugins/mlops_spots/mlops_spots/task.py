"""spots as a platform Task: wiring only; each member delegates to its module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from mlops.tasks import upload_cases
from mlops.tasks.base import Evaluation, ModelSpec, Task
from mlops_spots import evaluate, expectations, layout, metrics, model, prepare, simulate
from mlops_spots.params import SpotsParams


class SpotsTask(Task):
    name = "spots"
    Params = SpotsParams
    inference_module = "mlops_spots.inference"
    models = model.MODELS

    def simulate(self, out_dir: Path, params: SpotsParams, seed: int, progress: Callable[[int], None]) -> int:
        p = params.simulate
        return simulate.simulate(out_dir, p.n_images, p.n_batches, p.noise, seed, progress)

    def simulated_samples(self, params: SpotsParams) -> int:
        return params.simulate.n_images

    def ingest(self, src_dir: Path, out_dir: Path) -> int:
        return layout.ingest(src_dir, out_dir)

    def manifest(self, raw_dir: Path, params: SpotsParams):
        return expectations.manifest(raw_dir)

    def expectations(self, params: SpotsParams) -> list[Any]:
        return expectations.expectations(params)

    def prepare(self, raw_dir: Path, out_dir: Path, params: SpotsParams, seed: int) -> dict[str, int]:
        return prepare.prepare(raw_dir, out_dir, params, seed)

    def dataset(self, prepared_dir: Path, split: str):
        return prepare.dataset(prepared_dir, split)

    def build_model(self, hparams: dict[str, Any], prepared_dir: Path) -> tuple[nn.Module, ModelSpec]:
        return model.build(hparams, prepared_dir)

    def criterion(self, model: nn.Module):
        return metrics.loss

    def val_metrics(self, outputs, targets) -> dict[str, float]:
        return metrics.val_metrics(outputs, targets)

    def evaluate(self, model: nn.Module, prepared_dir: Path, params: SpotsParams, out_dir: Path) -> Evaluation:
        return evaluate.evaluate(model, prepared_dir, params, out_dir)

    def score(self, cases: pd.DataFrame, params: SpotsParams) -> dict[str, float]:
        return metrics.score(cases)

    def example_input(self, prepared_dir: Path) -> np.ndarray:
        return prepare.dataset(prepared_dir, "val").tensors[0][:2].numpy()

    example_upload = staticmethod(upload_cases.first_image_upload)
    bad_uploads = staticmethod(upload_cases.bad_image_uploads)
