"""Simulated SEM fractographs of the four standard failure modes, as procedural textures.

- fatigue: fine parallel striations (slightly curved, wavy bands) in patches of differing orientation,
  modulated by a beach-mark envelope (bands of brighter/stronger striations every few striations);
- ductile overload: dimples, i.e. Voronoi cups with bright rims, side-lit shading and occasional
  inclusion particles at their bottoms, sometimes elongated (shear);
- brittle cleavage: large flat facets of differing brightness with river lines that merge (branch)
  towards a convergence point downstream, and bright tear ridges at facet boundaries;
- intergranular: polygonal grains seen as 3-D polyhedra ("rock candy"): each grain split into faces
  shaded by their tilt, bright grain edges and some dark secondary cracks along boundaries.

Every image then gets class-independent nuisances: scale, orientation, uneven illumination, blur,
detector noise and, last, a random mean and contrast set *after* standardising the texture, so the
global gray-level statistics (and the image size) carry no information about the class.

Output: the real-data layout of ``layout.py`` (PNG images and labels.csv).
Images of one specimen (``source``) share the specimen's failure mode and imaging settings, which is
why the split is by source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from mlops.tasks.fracture.layout import CLASSES, IMAGES, write_labels
from mlops.tasks.fracture.params import SimulateParams

#: Nominal SEM magnifications; drawn independently of the class so the metadata cannot leak it.
MAGNIFICATIONS = (500, 1000, 2000, 5000)
#: Feature sizes are drawn in units of the model's 64-px input, so any simulated size looks alike.
REFERENCE_INPUT = 64


@dataclass(frozen=True)
class Imaging:
    """Per-specimen imaging settings (shared by the specimen's images, hence correlated within a group)."""

    mean: float
    contrast: float
    noise_std: float
    blur_sigma: float
    scale: float


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    return x, y


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Gaussian random field of unit std with correlation length ~sigma pixels."""
    field = ndimage.gaussian_filter(rng.normal(size=(n, n)).astype(np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _voronoi(rng: np.random.Generator, n: int, cell: float, stretch: float = 1.0, angle: float = 0.0):
    """Nearest and second-nearest seed distances and seed indices for seeds ~``cell`` px apart.

    Seeds are scattered over a margin around the image so cells at the border are whole. With
    ``stretch`` > 1 the cells are elongated along ``angle`` (shear dimples).
    """
    margin = 2 * cell
    count = max(4, int(((n + 2 * margin) / cell) ** 2))
    seeds = rng.uniform(-margin, n + margin, size=(count, 2)).astype(np.float32)
    x, y = _grid(n)
    points = np.stack([x.ravel(), y.ravel()], axis=1)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]], dtype=np.float32)
    squash = np.diag([1.0 / stretch, 1.0]).astype(np.float32)
    warp = rot @ squash @ rot.T
    dist, idx = cKDTree(seeds @ warp.T).query(points @ warp.T, k=2)
    shape = (n, n)
    return dist[:, 0].reshape(shape), dist[:, 1].reshape(shape), idx[:, 0].reshape(shape), idx[:, 1].reshape(shape)


def _shade(height: np.ndarray, light_angle: float, edge_gain: float) -> np.ndarray:
    """SEM-like shading of a height map: a side-lit term plus bright steep slopes (the edge effect)."""
    gy, gx = np.gradient(height)
    lit = gx * np.cos(light_angle) + gy * np.sin(light_angle)
    return lit + edge_gain * np.hypot(gx, gy)


def fatigue(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Striation patches with a beach-mark envelope."""
    x, y = _grid(n)
    period = rng.uniform(2.5, 5.0) * scale
    base_angle = rng.uniform(0, np.pi)
    # Patches (plateaus) of striations at slightly different orientations, split by tear ridges.
    d1, d2, i1, _ = _voronoi(rng, n, cell=rng.uniform(0.45, 0.9) * n)
    offsets = rng.normal(0, 0.3, size=int(i1.max()) + 1)
    angle = base_angle + offsets[i1]
    # Bands are arcs around a far-away crack origin: distance along the growth direction.
    radius = rng.uniform(2.0, 8.0) * n
    cx, cy = n / 2 - radius * np.cos(angle), n / 2 - radius * np.sin(angle)
    u = np.hypot(x - cx, y - cy) - radius
    u = u + 0.04 * n * _smooth_noise(rng, n, n / 5) + 0.15 * period * _smooth_noise(rng, n, 2 * period)
    phase = 2 * np.pi * u / period
    striations = np.sin(phase) + 0.35 * np.sin(2 * phase + 0.8)  # asymmetric ridge profile
    beach_period = rng.uniform(5.0, 12.0) * period
    beach = np.sin(2 * np.pi * u / beach_period + rng.uniform(0, 2 * np.pi))
    envelope = 0.6 + 0.4 * beach
    ridges = np.exp(-(d2 - d1) / (0.15 * period))
    roughness = _smooth_noise(rng, n, 1.5 * period)
    return envelope * striations + 0.7 * beach + 1.5 * ridges + 0.35 * roughness


def ductile_overload(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Dimples: cups with bright rims, side-lit, sometimes elongated, some with an inclusion."""
    cell = rng.uniform(6.0, 14.0) * scale
    stretch = 1.0 if rng.random() < 0.6 else rng.uniform(1.2, 1.8)
    d1, d2, i1, _ = _voronoi(rng, n, cell, stretch, rng.uniform(0, np.pi))
    openness = (d2 - d1) / np.maximum(d2 + d1, 1e-6)  # 0 on a rim, -> 1 at a cup's centre
    depth = rng.uniform(0.6, 1.2)
    height = -depth * cell * openness**0.75
    shading = _shade(height, rng.uniform(0, 2 * np.pi), edge_gain=rng.uniform(0.5, 1.5))
    rims = np.exp(-(d2 - d1) / (0.08 * cell))
    has_particle = rng.random(int(i1.max()) + 1) < 0.2
    particles = has_particle[i1] * np.exp(-((d1 / (0.12 * cell)) ** 2))
    return shading + 1.2 * rims + 1.5 * particles + 0.2 * _smooth_noise(rng, n, 0.3 * cell)


def brittle_cleavage(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Flat facets with merging river lines and tear ridges at the facet boundaries."""
    x, y = _grid(n)
    facet = rng.uniform(28.0, 56.0) * scale
    d1, d2, i1, _ = _voronoi(rng, n, facet)
    n_facets = int(i1.max()) + 1
    level = rng.normal(0, 0.8, size=n_facets)
    flow = rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.5, size=n_facets)  # crack direction per facet
    out = level[i1].astype(np.float32)
    spacing = rng.uniform(3.0, 6.0) * scale
    wiggle = _smooth_noise(rng, n, facet / 4)
    for f in np.unique(i1):
        mask = i1 == f
        # River lines fan into a convergence point downstream of the facet: lines of constant angle
        # around it. Coarser line sets (every 2nd, 4th line) reach nearer the point, so lines merge.
        fy, fx = np.argwhere(mask).mean(axis=0)
        px, py = fx + 1.5 * facet * np.cos(flow[f]), fy + 1.5 * facet * np.sin(flow[f])
        r = np.hypot(x[mask] - px, y[mask] - py)
        alpha = np.arctan2(y[mask] - py, x[mask] - px) + 0.04 * wiggle[mask]
        k = 2 * np.pi * 1.5 * facet / spacing
        lines = np.zeros_like(r)
        for level_index, reach in enumerate((1.6, 1.2, 0.8, 0.0)):
            kj = k / 2**level_index
            line = np.exp(-(np.sin(kj * alpha / 2) ** 2) / 0.01)
            lines = np.maximum(lines, line * (r > reach * facet))
        # A river line is a small step: bright on one side, a shadow on the other.
        out[mask] += 0.9 * lines * rng.choice((-1.0, 1.0))
    ridges = np.exp(-(d2 - d1) / 1.5)
    out = ndimage.gaussian_filter(out, 0.6) + 1.8 * ridges
    return out + 0.15 * _smooth_noise(rng, n, 2.0 * scale)


def intergranular(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Polyhedral grains ("rock candy"): faces shaded by tilt, bright edges, some boundary cracks."""
    x, y = _grid(n)
    grain = rng.uniform(12.0, 24.0) * scale
    d1, d2, i1, i2 = _voronoi(rng, n, grain)
    n_grains = int(max(i1.max(), i2.max())) + 1
    seeds_x = np.zeros(n_grains)
    seeds_y = np.zeros(n_grains)
    np.add.at(seeds_x, i1.ravel(), x.ravel())
    np.add.at(seeds_y, i1.ravel(), y.ravel())
    counts = np.maximum(np.bincount(i1.ravel(), minlength=n_grains), 1)
    angle = np.arctan2(y - (seeds_y / counts)[i1], x - (seeds_x / counts)[i1])
    faces = rng.integers(3, 7, size=n_grains)
    turn = rng.uniform(0, 2 * np.pi, size=n_grains)
    face = np.floor(((angle + turn[i1]) % (2 * np.pi)) / (2 * np.pi) * faces[i1]).astype(np.int64)
    brightness = rng.normal(0, 0.9, size=(n_grains, 7))
    out = brightness[i1, face] + 0.5 * rng.normal(0, 1, size=n_grains)[i1]
    edges = np.exp(-(d2 - d1) / 1.2)
    cracked = (np.sin(i1 * 12.9898 + i2 * 12.9898 + rng.uniform(0, 6.3)) * 43758.5453) % 1.0 < 0.3
    return ndimage.gaussian_filter(out, 0.8) + 1.4 * edges - 2.5 * edges * cracked


RENDERERS: dict[str, Callable[[np.random.Generator, int, float], np.ndarray]] = {
    "fatigue": fatigue,
    "ductile_overload": ductile_overload,
    "brittle_cleavage": brittle_cleavage,
    "intergranular": intergranular,
}


def finish(rng: np.random.Generator, texture: np.ndarray, imaging: Imaging) -> np.ndarray:
    """SEM-like uint8 image from a texture: illumination, blur, noise, then class-independent statistics."""
    n = texture.shape[0]
    x, y = _grid(n)
    t = (texture - texture.mean()) / max(float(texture.std()), 1e-6)
    tilt = rng.uniform(0, 2 * np.pi)
    t = t + rng.uniform(0.0, 0.8) * ((x * np.cos(tilt) + y * np.sin(tilt)) / n - 0.5)  # uneven detector yield
    t = ndimage.gaussian_filter(t, imaging.blur_sigma * n / REFERENCE_INPUT / 2)
    t = t + rng.normal(0, imaging.noise_std, size=t.shape)
    # Standardise last, then impose the specimen's gray level and contrast: no class-level cue survives.
    t = (t - t.mean()) / max(float(t.std()), 1e-6)
    return np.clip(imaging.mean + imaging.contrast * t, 0, 255).astype(np.uint8)


def render(rng: np.random.Generator, kind: str, size: int, imaging: Imaging) -> np.ndarray:
    """One ``size`` x ``size`` uint8 fractograph of failure mode ``kind``."""
    scale = size / REFERENCE_INPUT * imaging.scale
    return finish(rng, RENDERERS[kind](rng, size, scale).astype(np.float32), imaging)


def simulate_fractographs(
    out_dir: Path,
    n_specimens: int,
    images_per_specimen: int,
    min_size: int,
    max_size: int,
    mean_range: tuple[float, float],
    contrast_range: tuple[float, float],
    noise_std_max: float,
    blur_sigma_max: float,
    seed: int,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Write ``n_specimens * images_per_specimen`` images; deterministic in ``seed``.

    Specimens cycle through the classes (balanced); each specimen's images share its imaging settings.
    """
    rng = np.random.default_rng(seed)
    (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(n_specimens):
        kind = CLASSES[s % len(CLASSES)]
        imaging = Imaging(
            mean=rng.uniform(*mean_range),
            contrast=rng.uniform(*contrast_range),
            noise_std=rng.uniform(0.05, noise_std_max),
            blur_sigma=rng.uniform(0.3, blur_sigma_max),
            scale=rng.uniform(0.8, 1.25),
        )
        for k in range(images_per_specimen):
            size = int(rng.integers(min_size, max_size + 1))
            # Images of one specimen vary a little around its settings (another field of view).
            shot = Imaging(
                mean=float(np.clip(imaging.mean + rng.normal(0, 8), *mean_range)),
                contrast=imaging.contrast * rng.uniform(0.9, 1.1),
                noise_std=imaging.noise_std,
                blur_sigma=imaging.blur_sigma,
                scale=imaging.scale * rng.uniform(0.85, 1.15),
            )
            image_id = f"fr{s:04d}_{k:02d}"
            Image.fromarray(render(rng, kind, size, shot)).save(out_dir / IMAGES / f"{image_id}.png")
            rows.append((image_id, kind, f"specimen{s:04d}", int(rng.choice(MAGNIFICATIONS))))
            progress(1)
    write_labels(out_dir, rows)
    return len(rows)


def simulate(out_dir: Path, p: SimulateParams, seed: int, progress: Callable[[int], None]) -> int:
    """The simulator with params.yaml's ``simulate`` section."""
    return simulate_fractographs(
        out_dir,
        p.n_specimens,
        p.images_per_specimen,
        p.min_size,
        p.max_size,
        (p.mean_low, p.mean_high),
        (p.contrast_low, p.contrast_high),
        p.noise_std_max,
        p.blur_sigma_max,
        seed,
        progress,
    )


def outlier_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural non-fractograph (uint8, size x size) for outlier exposure in training.

    Generic natural-image statistics, not any probe photo: 1/f^beta "clouds" (the power spectrum of
    natural scenes), the "dead leaves" model (occluding objects with power-law sizes: piecewise smooth
    regions with edges, as photos of objects are), or dead leaves over clouds.
    """
    kind = int(rng.integers(3))
    x, y = _grid(size)
    img = np.zeros((size, size), dtype=np.float32)
    if kind in (0, 2):
        fy = np.fft.fftfreq(size)[:, None]
        fx = np.fft.rfftfreq(size)[None, :]
        radius = np.maximum(np.hypot(fx, fy), 1.0 / size)
        spectrum = rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)
        img += np.fft.irfft2(spectrum * radius ** (-rng.uniform(0.75, 1.5)), s=(size, size)).astype(np.float32)
        img /= max(float(img.std()), 1e-6)
    if kind in (1, 2):
        tilt = rng.uniform(0, 2 * np.pi)
        img += rng.uniform(0, 2) * ((x * np.cos(tilt) + y * np.sin(tilt)) / size - 0.5)
        # Sizes ~ r^-3 between 3 px and half the image (the scale-invariant dead-leaves law), painted
        # back to front until the image is mostly covered, each object with its gray level and shading.
        r_min, r_max = 3.0, size / 2
        for _ in range(int(rng.integers(40, 120))):
            r = r_min / np.sqrt(1 - rng.random() * (1 - (r_min / r_max) ** 2))
            cx, cy = rng.uniform(-0.1, 1.1, 2) * size
            if rng.random() < 0.6:
                ratio = rng.uniform(0.4, 1.0)
                shape = ((x - cx) / r) ** 2 + ((y - cy) / (r * ratio)) ** 2 < 1
            else:
                shape = (np.abs(x - cx) < r) & (np.abs(y - cy) < r * rng.uniform(0.3, 1.5))
            shade = rng.normal(0, 1.2) + rng.normal(0, 0.5) * (x - cx) / size * 4
            img = np.where(shape, shade + (0.3 * img if kind == 2 else 0), img)
    img = ndimage.gaussian_filter(img, rng.uniform(0.3, 1.2)) + rng.normal(0, rng.uniform(0.02, 0.2), img.shape)
    img = (img - img.mean()) / max(float(img.std()), 1e-6)
    return np.clip(rng.uniform(70, 180) + rng.uniform(25, 60) * img, 0, 255).astype(np.uint8)
