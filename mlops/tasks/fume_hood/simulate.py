"""Simulated fume-hood photos with a known latent state and the objects that lowered it.

A front view of a hood: the sash frame at the top, the back wall with baffle slots, the work surface
with its front edge at the bottom. Objects (bottles, boxes, equipment) are placed on the surface; the
expert's latent score falls with their count, the area they occupy, how many baffle slots they block
and how close they stand to the front edge (the checklist items experts use). The rating is that score
quantised to 1-5 with rater noise. Every object lowered the score, so the union of object masks is the
"cause mask" a Grad-CAM pointing game is scored against.

Output: the real-data layout of ``layout.py`` (JPEG photos, labels.csv, and a cause mask per photo).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mlops.tasks.fume_hood.layout import IMAGES, MASKS, write_labels
from mlops.tasks.fume_hood.params import SimulateParams

# Scene geometry as fractions of the photo, so any simulated size keeps the same layout.
SASH_BOTTOM = 0.09
SURFACE_TOP = 0.70
FRONT_EDGE = 0.985
BAFFLE_SLOTS = (0.24, 0.42, 0.60)
KINDS = ("bottle", "box", "equipment")


@dataclass(frozen=True)
class PlacedObject:
    kind: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (y1 = base on the surface)


def latent_score(objects: list[PlacedObject], width: int, height: int) -> float:
    """Expert's continuous score, 5 (good) .. below 1 (bad), from the checklist items."""
    surface_area = width * height * (FRONT_EDGE - SURFACE_TOP)
    occupied = sum((o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) for o in objects) / surface_area
    lowest_slot = BAFFLE_SLOTS[-1] * height
    blocking = sum(1 for o in objects if o.box[1] < lowest_slot)
    near_front = sum(1 for o in objects if o.box[3] > (FRONT_EDGE - 0.08) * height)
    bottles = sum(1 for o in objects if o.kind == "bottle")
    return 5.2 - 0.35 * max(len(objects) - 1, 0) - 2.0 * occupied - 0.45 * blocking - 0.5 * near_front - 0.15 * bottles


def _place(rng: np.random.Generator, kind: str, width: int, height: int) -> PlacedObject:
    if kind == "bottle":
        w, h = rng.uniform(0.03, 0.05) * width, rng.uniform(0.18, 0.34) * height
    elif kind == "box":
        w, h = rng.uniform(0.10, 0.18) * width, rng.uniform(0.10, 0.22) * height
    else:
        w, h = rng.uniform(0.12, 0.22) * width, rng.uniform(0.20, 0.42) * height
    base = rng.uniform(SURFACE_TOP + 0.06, FRONT_EDGE) * height
    x0 = rng.uniform(0.08 * width, 0.92 * width - w)
    return PlacedObject(kind, (int(x0), int(base - h), int(x0 + w), int(base)))


def _colour(rng: np.random.Generator, kind: str) -> tuple[int, int, int]:
    if kind == "bottle":
        base = [(150, 90, 30), (200, 210, 220), (60, 110, 60)][rng.integers(3)]
    elif kind == "box":
        base = (190, 150, 100)
    else:
        base = [(40, 40, 45), (90, 95, 100), (230, 230, 225)][rng.integers(3)]
    return tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in base)


def render(rng: np.random.Generator, objects: list[PlacedObject], width: int, height: int) -> np.ndarray:
    """RGB uint8 photo of the hood with the objects (nearer objects drawn last)."""
    wall = np.clip(rng.normal(205, 12), 150, 240)
    img = Image.new("RGB", (width, height), (int(wall),) * 3)
    draw = ImageDraw.Draw(img)
    surface = int(np.clip(wall + rng.normal(15, 8), 0, 255))
    draw.rectangle([0, int(SURFACE_TOP * height), width, height], fill=(surface, surface, surface - 10))
    for slot in BAFFLE_SLOTS:
        y = int(slot * height)
        draw.rectangle([int(0.06 * width), y, int(0.94 * width), y + max(2, height // 60)], fill=(35, 35, 40))
    draw.rectangle([0, 0, width, int(SASH_BOTTOM * height)], fill=(120, 125, 130))
    draw.line([0, int(FRONT_EDGE * height), width, int(FRONT_EDGE * height)], fill=(90, 90, 90), width=3)
    for obj in sorted(objects, key=lambda o: o.box[3]):
        x0, y0, x1, y1 = obj.box
        colour = _colour(rng, obj.kind)
        if obj.kind == "bottle":
            neck = (x1 - x0) // 3
            draw.rectangle([x0, y0 + (y1 - y0) // 4, x1, y1], fill=colour)
            draw.rectangle([x0 + neck, y0, x1 - neck, y0 + (y1 - y0) // 4], fill=colour)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=colour, outline=(30, 30, 30))
    pixels = np.asarray(img, dtype=np.float32)
    # Uneven lighting from the hood lamp and sensor noise, as in real photos.
    gradient = np.linspace(1.08, 0.85, height, dtype=np.float32)[:, None, None]
    gain = rng.uniform(0.8, 1.15)
    pixels = pixels * gradient * gain + rng.normal(0, 6, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def cause_mask(objects: list[PlacedObject], width: int, height: int) -> np.ndarray:
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for obj in objects:
        draw.rectangle(list(obj.box), fill=255)
    return np.asarray(mask)


def simulate_photos(
    out_dir: Path,
    n_photos: int,
    n_labs: int,
    width: int,
    height: int,
    rater_noise: float,
    seed: int,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Write ``n_photos`` photos from ``n_labs`` labs; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    (out_dir / MASKS).mkdir(parents=True, exist_ok=True)
    # Labs differ in tidiness, so photos of one lab are correlated (why the split is by lab).
    lab_clutter = rng.uniform(0.0, 4.5, size=n_labs)
    rows = []
    for i in range(n_photos):
        lab = i % n_labs
        n_objects = int(np.clip(rng.poisson(lab_clutter[lab]), 0, 9))
        objects = [_place(rng, KINDS[rng.integers(len(KINDS))], width, height) for _ in range(n_objects)]
        score = latent_score(objects, width, height) + rng.normal(0, rater_noise)
        rating = int(np.clip(np.rint(score), 1, 5))
        photo_id = f"fh{i:05d}"
        Image.fromarray(render(rng, objects, width, height)).save(out_dir / IMAGES / f"{photo_id}.jpg", quality=90)
        Image.fromarray(cause_mask(objects, width, height)).save(out_dir / MASKS / f"{photo_id}.png")
        rows.append((photo_id, f"lab{lab:03d}", rating))
        progress(1)
    write_labels(out_dir, rows)
    return n_photos


def simulate(out_dir: Path, p: SimulateParams, seed: int, progress: Callable[[int], None]) -> int:
    """The simulator with params.yaml's ``simulate`` section."""
    return simulate_photos(out_dir, p.n_photos, p.n_labs, p.width, p.height, p.rater_noise, seed, progress)
