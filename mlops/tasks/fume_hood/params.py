"""fume_hood's section of params.yaml (every value lives there; none is repeated here as a default)."""

from __future__ import annotations

from mlops.config import Gates, Strict
from mlops.tasks.params import SplitParams, TaskParams, TrainParams, ValidationParams


class SimulateParams(Strict):
    n_photos: int
    n_labs: int
    width: int
    height: int
    rater_noise: float


class FumeHoodValidationParams(ValidationParams):
    min_photos_per_rating: int
    min_width: int
    min_height: int
    min_mean_intensity: float
    max_mean_intensity: float
    min_intensity_std: float
    #: no rating may hold more than this share of the photos (class balance)
    max_rating_fraction: float


class ImageParams(Strict):
    width: int
    height: int


class AugmentParams(Strict):
    copies: int
    max_rotation_deg: float
    max_shift_frac: float
    brightness_low: float
    brightness_high: float


class EvaluateParams(Strict):
    gradcam_samples: int
    pointing_tolerance_px: int
    #: blur (model-input pixels) of the model-free pointer the Grad-CAM hit rate is compared with
    model_free_blur_px: float


class FumeHoodParams(TaskParams):
    simulate: SimulateParams
    validation: FumeHoodValidationParams
    split: SplitParams
    input: ImageParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
    gates: Gates
