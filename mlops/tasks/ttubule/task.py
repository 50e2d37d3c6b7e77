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

from mlops.tasks.base import Claim, Display, Evaluation, ModelSpec, Task
from mlops.tasks.ttubule import evaluate, expectations, layout, metrics, model, plots, prepare, simulate, uploads
from mlops.tasks.ttubule.inference import COLOURS as OVERLAY_COLOURS
from mlops.tasks.ttubule.params import TTubuleParams
from mlops.tasks.ttubule.preprocess import peak_settings


class TTubuleTask(Task):
    name = "ttubule"
    Params = TTubuleParams
    inference_module = "mlops.tasks.ttubule.inference"
    models = model.MODELS
    claim = Claim(
        text=(
            "Multi-label training (background, mitochondria, myofibril, T-tubule) finds T-tubules where single-label "
            "training (T-tubule vs rest) does not: the study's multi-label U-Net reached T-tubule F 0.855 / IoU 0.750 "
            "(mitochondria F 0.928, myofibril F 0.865; per image, at the mean of the per-image best thresholds), "
            "while single-label training converged to a tiny loss yet found no T-tubules."
        ),
        metric="test_ttubule_f",
        better="multi_label",
        than="single_label",
        simulator_note=(
            "The simulator draws T-tubules as thin bright tubes in the plane of the Z lines (about 0.45 % of the "
            "cell, a quarter thin and fainter) among labelled-background look-alikes with the same lumen, rim and "
            "widths (SR tubules, vesicles, bright extracellular clefts) kept off the Z lines, so only context tells "
            "them apart; it tests whether learning the mitochondria and myofibrils (whose striations mark the Z "
            "lines) gives that context, not that real SBEM T-tubules are told apart by it. It does not reproduce "
            "the study's collapse mechanism: its single-label arm gets the same tuning budget and rare-class losses "
            "(weighted cross-entropy, Dice, Tversky, focal), so 'finds none' becomes 'finds fewer'. Small volumes "
            "(12 slices of 128 x 128 at 50 nm, 6 training volumes), test volumes from the same generator (no "
            "domain shift, no annotation noise), one seed per pipeline run (`mlops repeats` gives the spread)."
        ),
    )

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

    def score(self, cases: pd.DataFrame, params: TTubuleParams) -> dict[str, float]:
        """Per class the per-slice means of precision, recall, F and IoU (the headline) and the pooled F and IoU,
        from the slices' TP/FP/FN at the validation thresholds. The instance counts and volumes are per volume,
        not functions of slice rows: not here."""
        return metrics.score_cases(cases)

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
    # How the members' web page shows the answer (mlops/serving/static/index.html); labels: each class's overlay colour
    display = Display(
        "masks",
        "Segmentation",
        "an 8-bit EM slice or small stack as (multi-page) TIFF or .npy",
        {".tif": "image/tiff", ".tiff": "image/tiff", ".npy": "application/x-npy"},
        labels={layout.SCORED[c]: "#{:02x}{:02x}{:02x}".format(*rgb) for c, (rgb, _) in OVERLAY_COLOURS.items()},
    )
