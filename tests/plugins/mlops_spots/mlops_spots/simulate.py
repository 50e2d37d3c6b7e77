"""Noisy 16x16 images with one bright spot on the left or the right half, written in the raw layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mlops_spots.layout import SIDES

SIZE = 16


def simulate(
    out_dir: Path, n_images: int, n_batches: int, noise: float, seed: int, progress: Callable[[int], None]
) -> int:
    rng = np.random.default_rng(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        side = int(rng.integers(2))
        image = rng.normal(60, noise, (SIZE, SIZE))
        r = int(rng.integers(2, SIZE - 2))
        c = int(rng.integers(2, SIZE // 2 - 2)) + side * (SIZE // 2)
        image[r - 2 : r + 2, c - 2 : c + 2] += 150
        image_id = f"s{i:04d}"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out_dir / "images" / f"{image_id}.png")
        rows.append({"image_id": image_id, "side": SIDES[side], "batch": f"b{i % n_batches:02d}"})
        progress(1)
    pd.DataFrame(rows).to_csv(out_dir / "labels.csv", index=False)
    return n_images
