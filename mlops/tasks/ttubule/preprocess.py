"""From a decoded EM stack to the U-Net's input: the same steps in training (prepare, dataset) and serving.

1. ``normalize.normalize_stack``: each slice's two histogram peaks mapped onto the training split's mean peaks
   (P1, P2), found with params.yaml's peak settings; prepare stores the normalised uint8 slices, the predictor
   normalises an upload with the P1, P2 and peak settings its spec carries;
2. ``model_input``: uint8 slices -> the U-Net's (N, 1, H, W) float input in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mlops.tasks.ttubule.normalize import PeakSettings


def peak_settings(source: Mapping[str, Any]) -> PeakSettings:
    """The peak finding named by ``peak_smoothing`` and ``peak_min_separation`` (params' input section, a spec)."""
    return PeakSettings(float(source["peak_smoothing"]), int(source["peak_min_separation"]))


def model_input(slices: np.ndarray) -> torch.Tensor:
    """(N, H, W) normalised uint8 slices -> (N, 1, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(slices).astype(np.float32) / 255.0)[:, None]
