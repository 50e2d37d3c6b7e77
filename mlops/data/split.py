"""Group-aware splitting: every sample of a group (a lab, a video, a volume, a specimen) lands in one split.

One splitter for every task, with two options: ``strata`` splits each stratum's groups separately (so a class
with few specimens still reaches validation), ``fixed_test`` takes the test groups from the data's own layout
(a study that names its test recordings) and splits only the rest.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


def split_groups(
    groups: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    strata: np.ndarray | None = None,
    fixed_test: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Sorted indices of the samples per split ('train', 'val', 'test'); no group crosses splits.

    Groups are shuffled with ``seed`` and cut by group count, test first; each split gets at least one group.
    ``strata`` (one value per sample): each group goes with its most common stratum and every stratum is split
    on its own with ``seed + stratum``; when a stratum has fewer than 3 groups, or there is one stratum, the plain
    split is used. ``fixed_test``: these groups are the test split (``test_fraction`` must be 0); the others are
    shuffled and cut into validation and training, training keeping at least one group.
    Raises ValueError when there are too few groups.
    """
    groups = np.asarray(groups)
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"split fractions must leave room for training: val={val_fraction} test={test_fraction}")
    if fixed_test is not None:
        return _split_fixed_test(groups, val_fraction, test_fraction, seed, set(fixed_test))
    if strata is not None:
        return _split_stratified(groups, np.asarray(strata), val_fraction, test_fraction, seed)
    unique = np.unique(groups)
    if len(unique) < 3:
        raise ValueError(f"need at least 3 groups to split train/val/test, found {len(unique)}")
    order = np.random.default_rng(seed).permutation(unique)
    n_test = max(1, round(test_fraction * len(unique)))
    n_val = max(1, round(val_fraction * len(unique)))
    return _assign(
        groups, {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    )


def _assign(groups: np.ndarray, chosen: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {split: np.flatnonzero(np.isin(groups, chosen[split])) for split in ("train", "val", "test")}


def _split_stratified(
    groups: np.ndarray, strata: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    table = pd.DataFrame({"group": groups, "y": strata})
    majority = table.groupby("group")["y"].agg(lambda s: s.value_counts().index[0])
    if majority.value_counts().min() < 3 or majority.nunique() < 2:
        return split_groups(groups, val_fraction, test_fraction, seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for stratum, members in majority.groupby(majority):
        member = np.isin(groups, members.index.to_numpy())
        inner = split_groups(groups[member], val_fraction, test_fraction, seed + int(stratum))
        for split, rows in inner.items():
            parts[split].append(np.flatnonzero(member)[rows])
    return {split: np.sort(np.concatenate(rows)) for split, rows in parts.items()}


def _split_fixed_test(
    groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int, test: set[str]
) -> dict[str, np.ndarray]:
    if test_fraction:
        raise ValueError(
            f"the test groups are fixed by the data's layout: test_fraction must be 0, not {test_fraction}"
        )
    rest = np.unique([g for g in groups if g not in test])
    if len(rest) < 2:
        raise ValueError(
            f"need at least 2 groups outside the test split to hold one out for validation, found {len(rest)}"
        )
    order = np.random.default_rng(seed).permutation(rest)
    n_val = min(max(1, round(val_fraction * len(rest))), len(rest) - 1)
    return _assign(groups, {"test": np.asarray(sorted(test)), "val": order[:n_val], "train": order[n_val:]})
