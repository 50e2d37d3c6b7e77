"""gas_leak's raw-data layout: what the simulator writes, what a user's real footage must look like, and its readers.

    <raw_dir>/
      sequences/<seq_id>.npy   float32 array, frames x height x width (infrared absorbance, intensities about 0..1)
      labels.csv               seq_id, x, y, z, domain, occluded[, scene_id]

- ``x`` is the column, ``y`` the row of the leak source in pixels from the top-left (also when a pipe hides it);
- ``z`` is the depth velocity in pix/s, positive away from the camera;
- ``domain`` is ``sim`` or ``field``: field rows become the held-out ``field`` split, never trained on;
- ``occluded`` is 0/1 (the source is behind a pipe);
- ``scene_id`` (optional) groups the split: sequences of one background and pipe layout stay on one side. Without
  it every sequence is its own group.

README "Real data: gas_leak" shows the same layout to users.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from mlops.data.layout import read_labels_table, write_labels_table

LABEL_COLUMNS = ("seq_id", "x", "y", "z", "domain", "occluded")
#: the optional grouping column after the label columns
SCENE = "scene_id"
DOMAINS = ("sim", "field")
SEQUENCES = "sequences"
LABELS = "labels.csv"


def sequence_path(raw_dir: Path, seq_id: str) -> Path:
    return raw_dir / SEQUENCES / f"{seq_id}.npy"


def sequence_files(raw_dir: Path) -> list[Path]:
    """Every sequence file under ``raw_dir``, sorted by name."""
    return sorted((raw_dir / SEQUENCES).glob("*.npy"))


def read_labels(raw_dir: Path) -> pd.DataFrame:
    """The labels table of the real-data layout (+ optional scene_id); ValueError naming what is missing."""
    table = read_labels_table(raw_dir, LABEL_COLUMNS, "gas_leak", {"seq_id": str, "domain": str, SCENE: str})
    if SCENE not in table.columns:  # no scene grouping given: every sequence is its own group
        table[SCENE] = table["seq_id"]
    return table


def write_sequence(raw_dir: Path, seq_id: str, frames: np.ndarray) -> None:
    np.save(sequence_path(raw_dir, seq_id), frames, allow_pickle=False)


def write_labels(raw_dir: Path, rows: Iterable[tuple]) -> None:
    """labels.csv from rows in the order ``(*LABEL_COLUMNS, scene_id)``."""
    write_labels_table(raw_dir, (*LABEL_COLUMNS, SCENE), rows)


def ingest(src_dir: Path, out_dir: Path) -> int:
    """Copy a user's footage in this layout into ``out_dir``; ValueError on missing sequences or unknown domains."""
    labels = read_labels(src_dir)
    missing = [sid for sid in labels["seq_id"] if not sequence_path(src_dir, sid).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} sequence(s) in labels.csv have no sequences/<seq_id>.npy: {missing[:5]}")
    unknown = sorted(set(labels["domain"].astype(str)) - set(DOMAINS))
    if unknown:
        raise ValueError(f"labels.csv has unknown domain(s) {unknown}; use {list(DOMAINS)}")
    (out_dir / SEQUENCES).mkdir(parents=True, exist_ok=True)
    for sid in labels["seq_id"]:
        shutil.copy2(sequence_path(src_dir, sid), sequence_path(out_dir, sid))
    shutil.copy2(src_dir / LABELS, out_dir / LABELS)
    return len(labels)
