"""3-D instances from per-slice predictions: the study's boundary-aware marker watershed.

object map minus boundary map -> Gaussian blur -> threshold -> connected-component markers -> watershed
expansion of the markers inside the object mask, all in 3-D over a stack of slices. Thin objects whose core
vanishes under the boundary get no marker and are lost, and objects with several cores are split: the
study's failure mode (300 instances / 0.61 % against 64 / 1.41 % by hand) that count and volume fraction
against ground truth expose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class InstanceSettings:
    """Post-processing knobs (params.yaml ttubule.evaluate); sigmas in voxels (z, then y and x)."""

    mask_threshold: float = 0.5
    marker_threshold: float = 0.5
    blur_sigma_z: float = 0.5
    blur_sigma_xy: float = 1.0
    min_marker_voxels: int = 4
    min_instance_voxels: int = 30


@dataclass(frozen=True)
class InstanceStats:
    count: int
    volume_um3: float
    volume_fraction: float


def boundary_map(instances: np.ndarray) -> np.ndarray:
    """Per-slice inner contours of every instance of a (Z, Y, X) id stack (uint8 0/1).

    2-D per slice, like the per-slice boundary output the U-Net is trained to predict.
    """
    from skimage.segmentation import find_boundaries

    out = np.zeros(instances.shape, dtype=np.uint8)
    for z, ids in enumerate(instances):
        if ids.any():
            out[z] = find_boundaries(ids, connectivity=1, mode="inner") & (ids > 0)
    return out


def _drop_small(labelled: np.ndarray, min_voxels: int) -> np.ndarray:
    if labelled.max() == 0 or min_voxels <= 1:
        return labelled
    sizes = np.bincount(labelled.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    remap = np.zeros(len(sizes), dtype=np.int32)
    remap[keep] = np.arange(1, keep.sum() + 1)
    return remap[labelled]


def split_instances(object_prob: np.ndarray, boundary_prob: np.ndarray, s: InstanceSettings) -> np.ndarray:
    """Instance ids (int32, 0 = none) of one class in a (Z, Y, X) stack of probabilities in [0, 1]."""
    from skimage.segmentation import watershed

    obj = np.asarray(object_prob, dtype=np.float32)
    core = np.clip(obj - np.asarray(boundary_prob, dtype=np.float32), 0, 1)
    smooth = ndimage.gaussian_filter(core, (s.blur_sigma_z, s.blur_sigma_xy, s.blur_sigma_xy))
    full = ndimage.generate_binary_structure(3, 3)  # markers connect across slices diagonally too
    markers, _ = ndimage.label(smooth > s.marker_threshold, structure=full)
    markers = _drop_small(markers, s.min_marker_voxels)
    mask = obj > s.mask_threshold
    if markers.max() == 0 or not mask.any():
        return np.zeros(obj.shape, dtype=np.int32)
    labelled = watershed(-smooth, markers, mask=mask, connectivity=1).astype(np.int32)
    return _drop_small(labelled, s.min_instance_voxels)


def class_instances(labels: np.ndarray, cls: int, instances: np.ndarray | None = None) -> np.ndarray:
    """Ground-truth instances of one class: the given ids restricted to it, else its connected components."""
    mask = labels == cls
    if instances is not None:
        ids = np.where(mask, instances, 0).astype(np.int64)
        _, inverse = np.unique(ids, return_inverse=True)
        shift = 0 if (ids == 0).any() else 1  # 0 sorts first, so it stays 0 when present
        return (inverse.reshape(ids.shape) + shift).astype(np.int32)
    labelled, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
    return labelled.astype(np.int32)


def instance_stats(instances: np.ndarray, voxel_size_nm: tuple[float, float, float]) -> InstanceStats:
    """Count, total volume (µm³) and volume fraction of the stack that the instances fill."""
    voxel_um3 = float(np.prod(voxel_size_nm)) * 1e-9
    filled = int((instances > 0).sum())
    count = len(np.unique(instances[instances > 0]))
    return InstanceStats(count, filled * voxel_um3, filled / max(instances.size, 1))
