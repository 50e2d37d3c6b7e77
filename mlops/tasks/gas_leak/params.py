"""The types of gas_leak's params.yaml section; the values live only in params.yaml.

The split and train sections are the shared ``SplitParams`` / ``TrainParams``: the split holds out *scenes* of the
sim domain (the field domain is its own split), and training needs nothing beyond epochs and patience.
"""

from __future__ import annotations

from mlops.config import Strict
from mlops.tasks import params as shared
from mlops.tasks.params import SplitParams, TaskParams, TrainParams


class Geometry(Strict):
    """Camera and release settings shared by both domains."""

    frames: int
    height: int
    width: int
    fps: float
    #: seconds of release before the first frame, so the plume is developed when recording starts
    spin_up_s: float
    #: focal length as a multiple of the image width (1.2 is a ~45 degree field of view)
    focal_frac: float
    depth_low: float
    depth_high: float
    #: the source lies at least this many pixels inside the frame
    margin_px: float
    puffs_per_frame: int
    puff_sigma0_m: float
    diffusivity_low: float
    diffusivity_high: float
    #: sequences that share one background and pipe layout (the split's groups)
    seqs_per_scene: int


class DomainSettings(Strict):
    """What differs between simulated training footage and the held-out "field" footage."""

    background_level_low: float
    background_level_high: float
    background_amplitude: float
    background_waves: int
    hot_spots: int
    noise_std: float
    fixed_pattern_std: float
    jitter_px: float
    #: horizontal wind speed (m/s); its heading is uniform, so it has a depth component of up to this much
    wind_speed_low: float
    wind_speed_high: float
    #: largest vertical drift (m/s): buoyant gas rises, heavy vapour sinks
    buoyancy_max: float
    meander_std: float
    meander_tau_s: float
    pipes_low: int
    pipes_high: int
    pipe_width_low: float
    pipe_width_high: float
    #: largest tilt of a pipe from horizontal/vertical, degrees (90 = any direction)
    pipe_tilt_deg: float
    p_source_hidden: float
    gas_contrast_low: float
    gas_contrast_high: float
    #: leak rate in column-density units per second (sets how dense the plume is)
    emission_low: float
    emission_high: float


class SimulateParams(Strict):
    n_sim: int
    n_field: int
    geometry: Geometry
    sim: DomainSettings
    field: DomainSettings


class ValidationParams(shared.ValidationParams):
    """Bounds of the Great Expectations suite on the raw data (plus the shared drift bounds)."""

    min_sequences: int
    min_frames: int
    max_frames: int
    height: int
    width: int
    min_intensity: float
    max_intensity: float
    min_intensity_std: float
    z_abs_max: float


class InputParams(Strict):
    frames: int
    heatmap_sigma: float


class AugmentParams(Strict):
    copies: int
    flip_probability: float
    max_time_shift: int
    noise_std: float
    gain_low: float
    gain_high: float
    gain_tilt: float
    shake_px: float


class EvaluateParams(Strict):
    overlay_samples: int


class GasLeakParams(TaskParams):
    simulate: SimulateParams
    validation: ValidationParams
    split: SplitParams
    input: InputParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
