"""The spots section of params.yaml."""

from __future__ import annotations

from mlops.config import Strict
from mlops.tasks.params import SplitParams, TaskParams, TrainParams, ValidationParams


class SimulateParams(Strict):
    n_images: int
    n_batches: int
    noise: float


class SpotsValidation(ValidationParams):
    min_images: int


class InputParams(Strict):
    size: int


class AugmentParams(Strict):
    #: copies of each training image, mirrored copies swap the label
    mirror: bool


class EvaluateParams(Strict):
    gradcam_samples: int


class SpotsParams(TaskParams):
    simulate: SimulateParams
    validation: SpotsValidation
    split: SplitParams
    input: InputParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
