"""Group-aware splitting: every sample of a group (a lab, a video, a volume) lands in one split."""

from __future__ import annotations

import numpy as np


def split_groups(groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Indices of samples per split ('train', 'val', 'test'), no group crossing splits.

    Groups are shuffled with ``seed`` and cut by group count; each split gets at least one group
    when there are three or more groups. Raises ValueError when there are too few groups.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"split fractions must leave room for training: val={val_fraction} test={test_fraction}")
    unique = np.unique(groups)
    if len(unique) < 3:
        raise ValueError(f"need at least 3 groups to split train/val/test, found {len(unique)}")
    order = np.random.default_rng(seed).permutation(unique)
    n_test = max(1, round(test_fraction * len(unique)))
    n_val = max(1, round(val_fraction * len(unique)))
    test_g, val_g, train_g = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {
        "train": np.flatnonzero(np.isin(groups, train_g)),
        "val": np.flatnonzero(np.isin(groups, val_g)),
        "test": np.flatnonzero(np.isin(groups, test_g)),
    }
