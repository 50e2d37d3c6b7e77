"""fracture's raw-data layout: ``simulate`` writes it, ``ingest`` accepts it, members' accepted contributions join
it, and everything else reads it through here::

    images/<image_id>.png | .jpg | .jpeg   8-bit grayscale (or RGB) SEM images, any size >= the floor
    labels.csv                              image_id, class, source, magnification

``class`` is one of fatigue, ductile_overload, brittle_cleavage, intergranular; ``source`` names
what images are correlated by (the specimen, or the member company that sent it) and is the split
group; ``magnification`` is the nominal SEM magnification (metadata, not a model input).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mlops.data.layout import find_image, read_labels_table, write_labels_table

#: the failure modes, in the order of the model's outputs
CLASSES = ("fatigue", "ductile_overload", "brittle_cleavage", "intergranular")
LABEL_COLUMNS = ("image_id", "class", "source", "magnification")
IMAGES, LABELS = "images", "labels.csv"
#: what a member tells besides the failure mode when contributing an image
CONTRIBUTION_FIELDS = ("magnification",)


def read_labels(raw_dir: Path) -> pd.DataFrame:
    return read_labels_table(raw_dir, LABEL_COLUMNS, "fracture", {"image_id": str, "class": str, "source": str})


def image_path(raw_dir: Path, image_id: str) -> Path | None:
    """The image of ``image_id`` (any accepted suffix), or None."""
    return find_image(raw_dir, image_id)


def write_labels(out_dir: Path, rows: Iterable[tuple[str, str, str, int]]) -> None:
    """labels.csv from (image_id, class, source, magnification) rows."""
    write_labels_table(out_dir, LABEL_COLUMNS, rows)


def ingest(src_dir: Path, out_dir: Path) -> int:
    """Copy a real dataset in this layout into ``out_dir``; ValueError when a labelled image is missing."""
    labels = read_labels(src_dir)
    files = {iid: image_path(src_dir, iid) for iid in labels["image_id"]}
    missing = [iid for iid, path in files.items() if path is None]
    if missing:
        raise ValueError(f"{len(missing)} image(s) in labels.csv have no file under images/: {missing[:5]}")
    (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    for path in files.values():
        shutil.copy2(path, out_dir / IMAGES / path.name)
    shutil.copy2(src_dir / LABELS, out_dir / LABELS)
    return len(labels)


def add_contribution(
    raw_dir: Path, sample_id: str, data: bytes, suffix: str, label: str, source: str, meta: dict[str, str]
) -> Path:
    """Image under ``images/`` plus one labels.csv row; ``source`` (the member) becomes its split group."""
    if label not in CLASSES:
        raise ValueError(f"unknown failure mode {label!r}; known: {list(CLASSES)}")
    if image_path(raw_dir, sample_id) is not None:
        raise ValueError(f"{raw_dir} already holds an image {sample_id}; nothing was written")
    labels_path = raw_dir / LABELS
    if not labels_path.is_file():
        raise ValueError(f"{labels_path} is missing: contributions join an existing fracture dataset")
    image = raw_dir / IMAGES / f"{sample_id}{suffix}"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(data)
    if not labels_path.read_bytes().endswith(b"\n"):  # a hand-edited table may lack the final newline
        with labels_path.open("a") as fh:
            fh.write("\n")
    row = pd.DataFrame([{"image_id": sample_id, "class": label, "source": source, **meta}])
    row.to_csv(labels_path, mode="a", header=False, index=False, columns=list(LABEL_COLUMNS))
    return image
