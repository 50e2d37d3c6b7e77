"""Simulated infrared gas-camera footage of a leak with known source position and depth velocity.

Physics, kept small enough to render hundreds of sequences in seconds:

- A leak at world position (Xw, Yw, Z0) (camera frame: x right, y down, z = depth away from the camera)
  releases Gaussian puffs at a steady rate. Each puff is advected by the mean wind (lateral speed and
  direction, plus a depth component ``w_z``) and by the meandering part of the wind at its release time
  (an Ornstein-Uhlenbeck process, so consecutive puffs travel in slowly changing directions and the plume
  snakes), and grows by turbulent diffusion: ``sigma^2 = sigma0^2 + 2 K age``. The wind is horizontal with a
  uniform heading, so it has an image-x and a depth part (``w_z``); gas also rises or sinks (image y).
- The 3-D concentration is integrated along pinhole-camera rays. For a Gaussian puff the ray integral is
  a 2-D Gaussian centred on the puff's projection with pixel width ``sigma f / z`` and a per-pixel column
  density ``m (f/z)^2`` times the puff's mass share in the pixel (erf differences). So a puff moving
  towards the camera grows on the image and one moving away shrinks: the depth velocity is visible.
- Frames are absorbance over a thermal background, ``I = B - dT (1 - exp(-c))``; pipes are drawn in front
  of the gas (they hide the plume behind them and, in a share of sequences, the source itself); sensor
  noise (temporal and fixed-pattern) and, in the field domain, sub-pixel camera shake.

Ground truth per sequence: the source pixel (X, Y) (also when hidden) and the depth velocity Z in pix/s,
``Z = w_z f / Z0``: the study reports depth flow in pix/s because metres per second on the image depend on
the distance. Positive Z is away from the camera.

It writes the real-data layout of ``layout.py`` (the same a user's real footage uses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import erf

from mlops.tasks.gas_leak import layout
from mlops.tasks.gas_leak.layout import DOMAINS
from mlops.tasks.gas_leak.params import DomainSettings, Geometry, SimulateParams

#: depth (m) below which puffs drifting towards the camera fade out (they would fill the whole view)
NEAR_M = 1.0


@dataclass(frozen=True)
class Scene:
    """A static view: thermal background and pipes (shared by the sequences of one scene)."""

    waves: np.ndarray  # (n, 5): amplitude, kx, ky (cycles per frame width), phase, unused
    spots: np.ndarray  # (n, 4): amplitude, u, v, sigma_px
    level: float
    pipes: np.ndarray  # (n, 5): normal_x, normal_y, offset (normal . p), width_px, temperature


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    z: float
    occluded: bool


def focal_px(geom: Geometry) -> float:
    return geom.focal_frac * geom.width


def z_abs_max(geom: Geometry, dom: DomainSettings) -> float:
    """Largest |Z| (pix/s) a domain can produce: fastest depth wind at the nearest source depth."""
    return dom.wind_speed_high * focal_px(geom) / geom.depth_low


def make_scene(rng: np.random.Generator, geom: Geometry, dom: DomainSettings) -> Scene:
    n_waves = max(dom.background_waves, 0)
    waves = np.column_stack(
        [
            rng.uniform(0.3, 1.0, n_waves) * dom.background_amplitude / max(np.sqrt(n_waves), 1.0),
            rng.uniform(-2.0, 2.0, n_waves),
            rng.uniform(-2.0, 2.0, n_waves),
            rng.uniform(0, 2 * np.pi, n_waves),
            np.zeros(n_waves),
        ]
    ).reshape(n_waves, 5)
    spots = np.column_stack(
        [
            rng.choice([-1.0, 1.0], dom.hot_spots) * rng.uniform(0.05, 0.15, dom.hot_spots),
            rng.uniform(0, geom.width - 1, dom.hot_spots),
            rng.uniform(0, geom.height - 1, dom.hot_spots),
            rng.uniform(1.5, 0.12 * geom.width, dom.hot_spots),
        ]
    ).reshape(dom.hot_spots, 4)
    level = rng.uniform(dom.background_level_low, dom.background_level_high)
    n_pipes = int(rng.integers(dom.pipes_low, dom.pipes_high + 1))
    pipes = []
    for _ in range(n_pipes):
        base = 0.0 if rng.random() < 0.5 else np.pi / 2
        angle = base + np.deg2rad(rng.uniform(-dom.pipe_tilt_deg, dom.pipe_tilt_deg))
        normal = np.array([-np.sin(angle), np.cos(angle)])
        point = rng.uniform([0, 0], [geom.width - 1, geom.height - 1])
        width = rng.uniform(dom.pipe_width_low, dom.pipe_width_high)
        # Process pipes run hotter or colder than their surroundings, so they stand out in the infrared.
        temperature = np.clip(level + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.3), 0.05, 0.95)
        pipes.append([normal[0], normal[1], float(normal @ point), width, temperature])
    return Scene(waves, spots, float(level), np.asarray(pipes, dtype=np.float64).reshape(-1, 5))


def _pipe_distance(scene: Scene, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Distance (px) of points to each pipe's axis, shape (n_pipes, *u.shape)."""
    p = scene.pipes
    return np.abs(p[:, 0, None, None] * u + p[:, 1, None, None] * v - p[:, 2, None, None])


def covered_by_pipe(scene: Scene, x: float, y: float, clearance: float = 0.0) -> bool:
    """Whether the point (x, y) lies under a pipe (grown by ``clearance`` px)."""
    if not len(scene.pipes):
        return False
    d = _pipe_distance(scene, np.array([[x]]), np.array([[y]]))[:, 0, 0]
    return bool(np.any(d < scene.pipes[:, 3] / 2 + clearance))


def place_source(
    rng: np.random.Generator, scene: Scene, geom: Geometry, dom: DomainSettings
) -> tuple[float, float, bool]:
    """A source pixel inside the margins: behind a pipe with probability ``p_source_hidden``."""
    lo = geom.margin_px
    hi_x, hi_y = geom.width - 1 - geom.margin_px, geom.height - 1 - geom.margin_px
    want_hidden = len(scene.pipes) > 0 and rng.random() < dom.p_source_hidden
    for _ in range(1000):
        x, y = rng.uniform(lo, hi_x), rng.uniform(lo, hi_y)
        if want_hidden:
            # Slide the point onto a pipe's axis, then off it by less than half the pipe's width.
            nx, ny, offset, width, _ = scene.pipes[rng.integers(len(scene.pipes))]
            shift = offset - (nx * x + ny * y) + rng.uniform(-0.35, 0.35) * width
            x, y = x + nx * shift, y + ny * shift
            if lo <= x <= hi_x and lo <= y <= hi_y and covered_by_pipe(scene, x, y):
                return float(x), float(y), True
        elif not covered_by_pipe(scene, x, y, clearance=1.0):
            return float(x), float(y), False
    x, y = rng.uniform(lo, hi_x), rng.uniform(lo, hi_y)  # a scene pipes cover everywhere: take any point
    return float(x), float(y), covered_by_pipe(scene, x, y)


def _ou(rng: np.random.Generator, n: int, dt: float, tau: float, std: float) -> np.ndarray:
    """An Ornstein-Uhlenbeck series (n, 3) started in its stationary distribution."""
    decay = np.exp(-dt / tau)
    kick = std * np.sqrt(1 - decay**2)
    out = np.empty((n, 3))
    out[0] = rng.normal(0, std, 3)
    for i in range(1, n):
        out[i] = out[i - 1] * decay + rng.normal(0, kick, 3)
    return out


def _pixel_mass(centres: np.ndarray, sigmas: np.ndarray, n: int) -> np.ndarray:
    """Share of each 1-D Gaussian's mass falling in each of ``n`` unit pixels, shape (len(centres), n)."""
    edges = np.arange(n + 1, dtype=np.float64) - 0.5
    z = (edges[None, :] - centres[:, None]) / (np.sqrt(2.0) * sigmas[:, None])
    cdf = 0.5 * erf(z)
    return np.diff(cdf, axis=1)


def background(scene: Scene, geom: Geometry, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    img = np.full(u.shape, scene.level)
    for amp, kx, ky, phase, _ in scene.waves:
        img += amp * np.cos(2 * np.pi * (kx * u + ky * v) / geom.width + phase)
    for amp, su, sv, sigma in scene.spots:
        img += amp * np.exp(-((u - su) ** 2 + (v - sv) ** 2) / (2 * sigma**2))
    return img


def render_sequence(
    rng: np.random.Generator, scene: Scene, geom: Geometry, dom: DomainSettings, x: float, y: float
) -> tuple[np.ndarray, float]:
    """Frames (T, H, W) float32 of a leak at pixel (x, y) in ``scene``, and its depth velocity (pix/s)."""
    f = focal_px(geom)
    cx, cy = (geom.width - 1) / 2, (geom.height - 1) / 2
    depth = rng.uniform(geom.depth_low, geom.depth_high)
    source = np.array([(x - cx) * depth / f, (y - cy) * depth / f, depth])
    # Wind blows horizontally (image x and depth z) at a uniform heading; gas drifts up or down on its own.
    heading = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(dom.wind_speed_low, dom.wind_speed_high)
    w_z = speed * np.sin(heading)
    wind = np.array([speed * np.cos(heading), rng.uniform(-dom.buoyancy_max, dom.buoyancy_max), w_z])
    diffusivity = rng.uniform(geom.diffusivity_low, geom.diffusivity_high)
    contrast = rng.uniform(dom.gas_contrast_low, dom.gas_contrast_high)

    dt_release = 1.0 / (geom.fps * geom.puffs_per_frame)
    duration = geom.spin_up_s + geom.frames / geom.fps
    n_puffs = int(np.ceil(duration / dt_release))
    release = -geom.spin_up_s + dt_release * np.arange(n_puffs)
    gust = _ou(rng, n_puffs, dt_release, dom.meander_tau_s, dom.meander_std) * np.array([1.0, 1.0, 0.5])
    velocity = wind + gust  # frozen at release: puffs released in a gust keep its direction (meandering)
    emission = rng.uniform(dom.emission_low, dom.emission_high)
    mass = emission * dt_release * rng.lognormal(0.0, 0.2, n_puffs)  # a steady leak with fluctuating rate

    h, w = geom.height, geom.width
    v_grid, u_grid = np.mgrid[0:h, 0:w].astype(np.float64)
    fixed_pattern = rng.normal(0, dom.fixed_pattern_std, (h, w)) if dom.fixed_pattern_std > 0 else 0.0
    drift = rng.normal(0, 0.01)
    frames = np.empty((geom.frames, h, w), dtype=np.float32)
    for k in range(geom.frames):
        t = k / geom.fps
        shake = rng.normal(0, dom.jitter_px, 2) if dom.jitter_px > 0 else np.zeros(2)
        live = release <= t
        age = t - release[live]
        pos = source + velocity[live] * age[:, None]
        in_front = pos[:, 2] > NEAR_M
        pos, age, m = pos[in_front], age[in_front], mass[live][in_front]
        # Puffs reaching the camera fade out over the last metres instead of vanishing in one frame.
        m = m * np.clip((pos[:, 2] - NEAR_M) / NEAR_M, 0.0, 1.0)
        scale = f / pos[:, 2]
        sigma_px = np.sqrt(geom.puff_sigma0_m**2 + 2 * diffusivity * age) * scale
        pu = cx + pos[:, 0] * scale + shake[0]
        pv = cy + pos[:, 1] * scale + shake[1]
        column = np.einsum("i,iy,ix->yx", m * scale**2, _pixel_mass(pv, sigma_px, h), _pixel_mass(pu, sigma_px, w))
        # The scene moves with the camera shake: sample background and pipes at shifted coordinates.
        u, v = u_grid - shake[0], v_grid - shake[1]
        img = background(scene, geom, u, v) + drift * t - contrast * (1 - np.exp(-column))
        if len(scene.pipes):
            dist = _pipe_distance(scene, u, v)
            half = scene.pipes[:, 3, None, None] / 2
            inside = dist < half
            # A lit cylinder: brighter along its axis; the nearest pipe wins where two cross.
            shade = scene.pipes[:, 4, None, None] + 0.06 * np.cos(np.pi / 2 * np.minimum(dist / half, 1))
            order = np.where(inside, dist / half, np.inf)
            front = np.argmin(order, axis=0)
            covered = inside.any(axis=0)
            img = np.where(covered, np.take_along_axis(shade, front[None], axis=0)[0], img)
        img = img + fixed_pattern + rng.normal(0, dom.noise_std, (h, w))
        frames[k] = np.clip(img, 0.0, 1.0)
    return frames, float(w_z * f / depth)


def iter_domain(
    rng: np.random.Generator, geom: Geometry, dom: DomainSettings, n: int, prefix: str
) -> Iterator[tuple[str, str, np.ndarray, Label]]:
    """``n`` sequences of one domain as (seq_id, scene_id, frames, label), a new scene every few."""
    scene = None
    for i in range(n):
        if i % max(geom.seqs_per_scene, 1) == 0:
            scene = make_scene(rng, geom, dom)
        x, y, hidden = place_source(rng, scene, geom, dom)
        frames, z = render_sequence(rng, scene, geom, dom, x, y)
        yield f"{prefix}{i:05d}", f"{prefix}s{i // max(geom.seqs_per_scene, 1):04d}", frames, Label(x, y, z, hidden)


def simulate_sequences(
    out_dir: Path,
    geom: Geometry,
    domains: dict[str, tuple[DomainSettings, int]],
    seed: int,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Write ``{domain: (settings, count)}`` sequences in the real-data layout; deterministic in ``seed``."""
    (out_dir / layout.SEQUENCES).mkdir(parents=True, exist_ok=True)
    rows = []
    # One independent stream per domain, so changing the field count leaves the sim set unchanged.
    streams = np.random.SeedSequence(seed).spawn(len(DOMAINS))
    for name, stream in zip(DOMAINS, streams, strict=True):
        if name not in domains:
            continue
        settings, count = domains[name]
        prefix = "gl" if name == "sim" else "gf"
        for seq_id, scene_id, frames, label in iter_domain(
            np.random.default_rng(stream), geom, settings, count, prefix
        ):
            layout.write_sequence(out_dir, seq_id, frames)
            rows.append(
                (seq_id, round(label.x, 3), round(label.y, 3), round(label.z, 4), name, int(label.occluded), scene_id)
            )
            progress(1)
    layout.write_labels(out_dir, rows)
    return len(rows)


def simulate(out_dir: Path, params: SimulateParams, seed: int, progress: Callable[[int], None]) -> int:
    """Both domains of ``params`` (sim footage to train on, held-out field footage) into ``out_dir``."""
    domains = {"sim": (params.sim, params.n_sim), "field": (params.field, params.n_field)}
    return simulate_sequences(out_dir, params.geometry, domains, seed, progress)


def simulated_samples(params: SimulateParams) -> int:
    return params.n_sim + params.n_field
