"""The types of ttubule's params.yaml section; the values live only in params.yaml.

The split section is the shared ``SplitParams`` plus how the groups are cut (whole volumes or slabs of slices);
training needs nothing beyond the shared epochs and patience. The U-Net's depth and the loss constants sit in
``input``: prepare copies that section's model settings into the prepared data, where every stage that builds a
model (sweep, train, repeats) reads them, so a change reruns the pipeline from prepare.
"""

from __future__ import annotations

from typing import Literal

from mlops.config import Strict
from mlops.tasks import params as shared
from mlops.tasks.params import TaskParams, TrainParams


class SimSettings(Strict):
    """The simulator's knobs (params.yaml ttubule.simulate); lengths in nm unless named _px."""

    n_volumes: int
    slices: int
    height: int
    width: int
    voxel_z_nm: float
    voxel_xy_nm: float
    sarcomere_nm: float
    myofibril_nm: float
    cleft_nm: float
    mito_fraction: float
    ttubule_fraction: float
    tube_radius_low_nm: float
    tube_radius_high_nm: float
    thin_tube_share: float
    thin_tube_radius_nm: float
    # Look-alikes (labelled background): SR tubules and vesicles, as shares of the cell's voxels; the share
    # of SR tubules that are transverse at M lines; the least distance of a look-alike to a Z line (nm).
    sr_fraction: float
    m_line_sr_share: float
    vesicle_fraction: float
    lookalike_zline_gap_nm: float
    extracellular_probability: float
    extracellular_share_low: float
    extracellular_share_high: float
    blur_px: float
    dose: float
    drift_gain: float
    drift_offset: float


class ValidationParams(shared.ValidationParams):
    """Bounds of the Great Expectations suite on the raw volumes (plus the shared drift bounds)."""

    min_volumes: int
    min_slices: int
    min_height: int
    min_width: int
    min_slice_std: float
    min_mito_fraction: float
    max_mito_fraction: float
    min_myofibril_fraction: float
    max_myofibril_fraction: float
    min_ttubule_fraction: float
    max_ttubule_fraction: float


class SplitParams(shared.SplitParams):
    #: volume: whole volumes per split; slab: contiguous slabs of ``slab_slices`` (few volumes)
    group: Literal["volume", "slab"]
    slab_slices: int


class InputParams(Strict):
    tile: int
    infer_tile: int
    peak_smoothing: float
    peak_min_separation: int
    max_upload_voxels: int
    #: U-Net levels: tiles must be multiples of 2**depth, and the receptive field (so infer_tile's least size) grows
    depth: int
    #: focusing exponent of the focal loss
    focal_gamma: float
    #: the Tversky index's weight of false positives (1 - alpha weighs false negatives)
    tversky_alpha: float


class AugmentParams(Strict):
    tiles_per_slice: int
    ttubule_tile_share: float
    flips: bool
    rotations: bool
    elastic_alpha_px: float
    elastic_sigma_px: float
    gain_low: float
    gain_high: float
    offset_max: float
    gamma_low: float
    gamma_high: float
    noise_std: float


class EvaluateParams(Strict):
    marker_threshold: float
    blur_sigma_z: float
    blur_sigma_xy: float
    min_marker_voxels: int
    min_instance_voxels: int
    overlay_slices: int


class TTubuleParams(TaskParams):
    simulate: SimSettings
    validation: ValidationParams
    split: SplitParams
    input: InputParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
