"""skeleton as a platform Task: OpenPose per-frame JSON of factory videos -> windows of binary skeleton maps
-> reconstruction-based anomaly scores, trained on normal behaviour only.

Unsupervised on the platform's terms: ``dataset()`` yields (window, window) so the target of a sample is
its own input; the loss is the task's negative ELBO (see ``model.py`` for the packed output), and the
validation metrics are computed on held-out normal videos. Labels (anomalous spans) are used only to
validate the data and to evaluate on the test video(s).

Only wiring lives here: the layout (``layout.py``), checks (``expectations.py``), split and windows
(``prepare.py``), models (``model.py``), loss and metrics (``metrics.py``), evaluation and the serving threshold
(``evaluate.py``). Besides the contract it calibrates a serving threshold (``Calibrates``) and draws every arm's
ROC curve and timeline together (``ComparesArms``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlops.data.arrays import read_meta
from mlops.tasks.base import Claim, Display, Evaluation, ModelSpec, Task
from mlops.tasks.skeleton import evaluate, expectations, layout, metrics, prepare, uploads
from mlops.tasks.skeleton import model as networks
from mlops.tasks.skeleton.params import SkeletonParams
from mlops.tasks.skeleton.simulate import simulate_videos


class SkeletonTask(Task):
    name = "skeleton"
    Params = SkeletonParams
    inference_module = "mlops.tasks.skeleton.inference"
    models = networks.MODELS
    claim = Claim(
        text=(
            "The sequence model (LSTM-VAE over 30-frame windows of 28x28 skeleton maps) detects unsafe behaviour "
            "better than the frame-level autoencoders: test AUROC 0.74 vs 0.67 (AE) and 0.63 (VAE)."
        ),
        metric="test_auroc",
        better="lstm_vae",
        than="ae",
        simulator_note=(
            "A 25-joint stick figure driven by parametric joint-angle trajectories of the study's four normal and "
            "six abnormal actions, one simulated person per video (size, proportions, tempo, posture style), with "
            "pose-estimator faults, drawn with the study's preprocessing. The test videos are persons never seen in "
            "training; the AUROC is resampled by test video. What it cannot test: real OpenPose output of real "
            "workers, camera placement and clutter, and whether the study's abnormal actions differ from the normal "
            "ones as they do here (one-handed carrying, throwing, digging and running are built to change the pose "
            "or its rhythm; an anomaly visible only in the timing of frames favours the sequence model by design)."
        ),
    )

    # --- data ---------------------------------------------------------------------------------
    def simulate(self, out_dir: Path, params: SkeletonParams, seed: int, progress: Callable[[int], None]) -> int:
        return simulate_videos(out_dir, seed=seed, progress=progress, **params.simulate.model_dump())

    def simulated_samples(self, params: SkeletonParams) -> int:
        p = params.simulate
        return p.n_train_videos * p.train_frames_per_video + p.n_test_videos * p.test_frames_per_video

    def ingest(self, src_dir: Path, out_dir: Path) -> int:
        return layout.ingest(src_dir, out_dir)

    def manifest(self, raw_dir: Path, params: Any) -> pd.DataFrame:
        return expectations.manifest(raw_dir)

    def expectations(self, params: SkeletonParams) -> list[Any]:
        return expectations.expectations(params)

    def prepare(self, raw_dir: Path, out_dir: Path, params: SkeletonParams, seed: int) -> dict[str, int]:
        return prepare.prepare(raw_dir, out_dir, params, seed)

    def dataset(self, prepared_dir: Path, split: str) -> prepare.WindowDataset:
        return prepare.dataset(prepared_dir, split)

    # --- model --------------------------------------------------------------------------------
    def build_model(self, hparams: dict[str, Any], prepared_dir: Path) -> tuple[nn.Module, ModelSpec]:
        return networks.build_model(hparams, read_meta(prepared_dir), self.inference_module)

    def criterion(self, model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The negative ELBO: every model packs its own regularisation cost into its output, so no model setting
        enters the loss."""
        return metrics.loss

    def val_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return metrics.val_metrics(outputs, targets)

    def example_input(self, prepared_dir: Path) -> np.ndarray:
        return prepare.example_input(prepared_dir)

    # What its service answers and refuses (mlops/tasks/skeleton/uploads.py)
    example_upload = staticmethod(uploads.example_upload)
    bad_uploads = staticmethod(uploads.bad_uploads)
    # How the members' web page shows the answer (mlops/serving/static/index.html)
    display = Display(
        "timeline",
        "Unsafe behaviour",
        "a video's OpenPose *_keypoints.json files as a zip (or one JSON list)",
        {".zip": "application/zip", ".json": "application/json", ".npy": "application/x-npy"},
    )

    # --- evaluation ---------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, prepared_dir: Path, params: SkeletonParams, out_dir: Path) -> Evaluation:
        return evaluate.evaluate(model, prepared_dir, params, out_dir)

    def score(self, cases: pd.DataFrame, params: SkeletonParams) -> dict[str, float]:
        return metrics.score(cases)

    # --- capabilities (mlops.tasks.capabilities) ----------------------------------------------
    def calibrate(self, model: nn.Module, spec: ModelSpec, prepared_dir: Path, params: SkeletonParams) -> ModelSpec:
        """The spec with the serving threshold (set on held-out normal videos) in ``extra``."""
        return evaluate.calibrate(model, spec, prepared_dir, params)

    def compare(self, tables: dict[str, dict[str, pd.DataFrame]], out_dir: Path) -> dict[str, Path]:
        """All models' ROC curves in one figure and their score timelines stacked (the study's figures)."""
        return evaluate.compare(tables, out_dir)
