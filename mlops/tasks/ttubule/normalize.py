"""The study's piecewise-linear intensity normalisation of EM slices.

Each slice's histogram has two dominant peaks: mitochondria (dark, ``p1``) and myofibrils (``p2``). They are
mapped onto the training set's mean peaks ``P1`` and ``P2`` with three linear pieces (TASKS.md §5):

    x' = x * P1 / p1                          for x <= p1
    x' = P1 + (x - p1) (P2 - P1) / (p2 - p1)  for p1 < x <= p2
    x' = P2 + (x - p2) (255 - P2) / (255 - p2) above

so 0 stays 0 and 255 stays 255, and slice-to-slice drift of gain and offset is taken out. Used by ``prepare``
(with P1, P2 from the training split) and by the predictor (P1, P2 stored in the model spec).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class PeakSettings:
    """How peaks are found: histogram smoothing (gray levels) and the least gap between the two peaks.

    params.yaml ttubule.input.peak_smoothing and peak_min_separation; prepare stores them with the model.
    """

    smoothing: float
    min_separation: int


class PeakError(ValueError):
    """A slice's histogram does not show two peaks (blank, saturated or not a muscle image)."""


def histogram_peaks(image: np.ndarray, settings: PeakSettings) -> tuple[float, float]:
    """(p1, p2): the mitochondria and myofibril peaks of an 8-bit slice's histogram.

    The two highest local maxima of the smoothed histogram at least ``min_separation`` gray levels apart,
    darker one first (mitochondria are darker than myofibrils). PeakError when there are not two.
    """
    values = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.int64)
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    if settings.smoothing > 0:
        hist = ndimage.gaussian_filter1d(hist, settings.smoothing, mode="constant")
    interior = (hist[1:-1] > hist[:-2]) & (hist[1:-1] >= hist[2:])
    maxima = np.flatnonzero(interior) + 1
    if len(maxima) == 0:
        raise PeakError("the histogram has no peak (blank or saturated slice)")
    first = int(maxima[np.argmax(hist[maxima])])
    apart = maxima[np.abs(maxima - first) >= settings.min_separation]
    if len(apart) == 0:
        raise PeakError(f"only one histogram peak (at gray level {first}); expected mitochondria and myofibrils")
    second = int(apart[np.argmax(hist[apart])])
    p1, p2 = sorted((first, second))
    return float(max(p1, 1)), float(min(p2, 254))


def piecewise_linear(image: np.ndarray, p1: float, p2: float, P1: float, P2: float) -> np.ndarray:  # noqa: N803
    """The study's formula (module docstring) applied to ``image``; float32 in [0, 255]."""
    if not 0 < p1 < p2 < 255 or not 0 < P1 < P2 < 255:
        raise ValueError(f"peaks must satisfy 0 < p1 < p2 < 255 and 0 < P1 < P2 < 255, got {p1, p2, P1, P2}")
    x = np.asarray(image, dtype=np.float32)
    low = x * (P1 / p1)
    mid = P1 + (x - p1) * ((P2 - P1) / (p2 - p1))
    high = P2 + (x - p2) * ((255.0 - P2) / (255.0 - p2))
    out = np.where(x <= p1, low, np.where(x <= p2, mid, high))
    return np.clip(out, 0, 255).astype(np.float32)


def normalize_stack(
    stack: np.ndarray,
    P1: float,  # noqa: N803
    P2: float,  # noqa: N803
    settings: PeakSettings,
) -> tuple[np.ndarray, int]:
    """Normalise every slice of a (Z, Y, X) stack; returns (uint8 stack, number of slices left unchanged).

    A slice without two peaks is left as it is (and counted) rather than failing the whole stack.
    """
    out = np.empty(stack.shape, dtype=np.uint8)
    skipped = 0
    for z, image in enumerate(stack):
        try:
            p1, p2 = histogram_peaks(image, settings)
            out[z] = np.rint(piecewise_linear(image, p1, p2, P1, P2)).astype(np.uint8)
        except PeakError:
            out[z] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
            skipped += 1
    return out, skipped


def mean_peaks(stacks: list[np.ndarray], settings: PeakSettings) -> tuple[float, float]:
    """(P1, P2): the mean mitochondria and myofibril peaks over every slice of the training stacks."""
    peaks = []
    for stack in stacks:
        for image in stack:
            try:
                peaks.append(histogram_peaks(image, settings))
            except PeakError:
                continue
    if not peaks:
        raise PeakError("no training slice shows the two histogram peaks (mitochondria, myofibril)")
    p1, p2 = np.mean(peaks, axis=0)
    return float(p1), float(p2)
