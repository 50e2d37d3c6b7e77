"""gas_leak as a platform Task: infrared frame stacks + labels table -> leak source (X, Y) and depth flow Z.

Only wiring: the layout, simulator, validation, preparation, models, loss, evaluation and uploads live in the
modules beside this one.
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

from mlops.tasks.base import Claim, Display, Evaluation, ModelSpec, Task
from mlops.tasks.gas_leak import evaluate, expectations, layout, metrics, model, prepare, simulate, uploads
from mlops.tasks.gas_leak.params import GasLeakParams


class GasLeakTask(Task):
    name = "gas_leak"
    Params = GasLeakParams
    inference_module = "mlops.tasks.gas_leak.inference"
    models = model.MODELS
    claim = Claim(
        text=(
            "The heat-map head (encoder-decoder with long skips, source = the map's argmax, Z from a small branch) "
            "locates the source several times more accurately than the numeric head regressing X, Y, Z: mean "
            "error X 4.0 vs 10.39 px, Y 4.6 vs 7.35 px, Z 14.8 vs 89 pix/s."
        ),
        metric="test_xy_error",
        better="heatmap",
        than="numeric",
        higher_is_better=False,
        simulator_note=(
            "32x32 px, 16-frame stacks of Gaussian puffs advected by a meandering wind and integrated along "
            "pinhole rays, pipes in front of the gas (and of the source in ~35 % of sequences), sensor noise. The "
            "'field' split is the same simulator with other settings (more pipes, hot spots, fixed-pattern noise, "
            "camera shake), not real footage; the study's training on 3-D fluid simulations plus real video is not "
            "reproduced, and errors in px are on a 32 px image, not the study's frame size. The claim is judged on "
            "the Euclidean (X, Y) error of the in-domain test scenes, resampled by scene. Z is the depth part of "
            "the wind, seen only through puffs growing or shrinking: read test_z_mae against test_z_mae_zero (the "
            "error of answering Z = 0); test_z_skill at or below 0 means a head has no skill on Z, and then the "
            "study's Z result (14.8 vs 89 pix/s) is not tested."
        ),
    )

    # --- data ---------------------------------------------------------------------------------
    def simulate(self, out_dir: Path, params: GasLeakParams, seed: int, progress: Callable[[int], None]) -> int:
        return simulate.simulate(out_dir, params.simulate, seed, progress)

    def simulated_samples(self, params: GasLeakParams) -> int:
        return simulate.simulated_samples(params.simulate)

    def ingest(self, src_dir: Path, out_dir: Path) -> int:
        return layout.ingest(src_dir, out_dir)

    def manifest(self, raw_dir: Path, params: Any) -> pd.DataFrame:
        return expectations.manifest(raw_dir)

    def expectations(self, params: GasLeakParams) -> list[Any]:
        return expectations.expectations(params)

    def prepare(self, raw_dir: Path, out_dir: Path, params: GasLeakParams, seed: int) -> dict[str, int]:
        return prepare.prepare(raw_dir, out_dir, params, seed)

    def dataset(self, prepared_dir: Path, split: str) -> TensorDataset:
        return prepare.dataset(prepared_dir, split)

    # --- model --------------------------------------------------------------------------------
    def build_model(self, hparams: dict[str, Any], prepared_dir: Path) -> tuple[nn.Module, ModelSpec]:
        return model.build_model(hparams, prepared_dir, self.inference_module)

    def criterion(self, model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        # Both heads train on the one loss; it tells them apart by their output width.
        return metrics.loss

    def val_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return metrics.val_metrics(outputs, targets)

    def evaluate(self, model: nn.Module, prepared_dir: Path, params: GasLeakParams, out_dir: Path) -> Evaluation:
        return evaluate.evaluate(model, prepared_dir, params, out_dir)

    def score(self, cases: pd.DataFrame, params: GasLeakParams) -> dict[str, float]:
        return metrics.score(cases)

    def example_input(self, prepared_dir: Path) -> np.ndarray:
        return prepare.dataset(prepared_dir, "val").tensors[0][:2].numpy()

    # What its service answers and refuses (mlops/tasks/gas_leak/uploads.py)
    example_upload = staticmethod(uploads.example_upload)
    bad_uploads = staticmethod(uploads.bad_uploads)
    # How the members' web page shows the answer (mlops/serving/static/index.html)
    display = Display(
        "position",
        "Leak source",
        "an infrared frame stack (frames, height, width) of floats as .npy or .npz",
        {".npy": "application/x-npy", ".npz": "application/zip"},
    )
