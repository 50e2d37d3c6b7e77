"""fracture's section of params.yaml (every value lives there; none is repeated here as a default)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mlops.config import Gates, Strict
from mlops.tasks.params import SplitParams, TaskParams, TrainParams, ValidationParams


class SimulateParams(Strict):
    n_specimens: Annotated[int, Field(ge=3)]
    images_per_specimen: Annotated[int, Field(ge=1)]
    min_size: Annotated[int, Field(ge=16)]
    max_size: Annotated[int, Field(ge=16)]
    mean_low: float
    mean_high: float
    contrast_low: float
    contrast_high: float
    noise_std_max: float
    blur_sigma_max: float


class FractureValidationParams(ValidationParams):
    min_images_per_class: int
    min_sources: int
    min_width: int
    min_height: int
    min_mean_intensity: float
    max_mean_intensity: float
    min_intensity_std: float
    #: no class may hold more than this share of the images (class balance)
    max_class_fraction: float


class InputParams(Strict):
    size: Annotated[int, Field(ge=16)]
    #: share of the in-domain validation images the served "unknown" threshold may withhold (its calibration)
    unknown_val_share: Annotated[float, Field(ge=0, lt=1)]


class AugmentParams(Strict):
    copies: Annotated[int, Field(ge=1)]
    max_rotation_deg: Annotated[float, Field(ge=0, le=180)]
    brightness_low: float
    brightness_high: float
    contrast_low: float
    contrast_high: float
    outlier_share: Annotated[float, Field(ge=0, lt=1)]


class EvaluateParams(Strict):
    gradcam_samples: int
    calibration_bins: Annotated[int, Field(ge=2)]
    ood_crops: Annotated[int, Field(ge=0, le=4)]


class FractureParams(TaskParams):
    simulate: SimulateParams
    validation: FractureValidationParams
    split: SplitParams
    input: InputParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
    gates: Gates
