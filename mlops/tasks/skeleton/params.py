"""skeleton's sections of params.yaml (strict: a misspelt or missing key fails the run before any work)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mlops.config import Strict
from mlops.tasks.params import TaskParams, TrainParams, ValidationParams

Fraction = Annotated[float, Field(ge=0, le=1)]


class SimulateParams(Strict):
    n_train_videos: Annotated[int, Field(ge=1)]
    train_frames_per_video: Annotated[int, Field(ge=1)]
    n_test_videos: Annotated[int, Field(ge=1)]
    test_frames_per_video: Annotated[int, Field(ge=1)]
    fps: Annotated[int, Field(ge=1)]
    width: int
    height: int
    abnormal_fraction: Fraction
    segment_seconds_min: float
    segment_seconds_max: float
    joint_noise_px: float
    missed_joint_prob: Fraction
    weak_joint_prob: Fraction
    no_person_prob: Fraction
    ghost_person_prob: Fraction


class SkeletonValidationParams(ValidationParams):
    min_train_videos: Annotated[int, Field(ge=2)]
    min_frames_per_video: int
    max_x: float
    max_y: float
    max_empty_frame_fraction: Fraction
    #: mean share of the 25 joints OpenPose did not detect, per video (frames with a person)
    max_missing_joint_share: Fraction


class VideoSplitParams(Strict):
    """Share of the normal (split_role train) *videos* held out for validation; the test videos are named by
    videos.csv, so there is no test fraction (``split_groups`` gets 0 and the test videos as ``fixed_test``)."""

    val_fraction: Annotated[float, Field(gt=0, lt=1)]


class InputParams(Strict):
    canvas_width: int
    canvas_height: int
    crop: int
    size: Literal[28]  # the models' input size (the study's)
    window: Annotated[int, Field(ge=2)]
    line_width_px: Annotated[int, Field(ge=1)]
    binarize_threshold: Annotated[float, Field(gt=0, le=1)]
    min_confidence: Fraction


class AugmentParams(Strict):
    copies: Annotated[int, Field(ge=1)]
    joint_jitter_px: float
    scale_jitter: Annotated[float, Field(ge=0, lt=1)]


class EvaluateParams(Strict):
    window_label: Literal["last", "majority"]
    false_alarm_rate: Annotated[float, Field(gt=0, lt=1)]
    embedding: Literal["tsne", "pca"]
    embedding_max_points: Annotated[int, Field(ge=10)]


class SkeletonParams(TaskParams):
    simulate: SimulateParams
    validation: SkeletonValidationParams
    split: VideoSplitParams
    input: InputParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
