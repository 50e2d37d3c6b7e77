"""Simulated serial-block-face EM (SBEM) stacks of heart-muscle cells, with voxel labels and instances.

Geometry (axes z = slice, y, x; myofibrils run along x):

- myofibrils: cylinders along x packed on a jittered hexagonal lattice in the (y, z) cross-section and
  separated by thin cytosolic clefts; sarcomere striations along x (bright I band, darker A band, M line,
  dark Z line once per sarcomere), the Z lines a little staggered between neighbouring myofibrils;
- mitochondria: dark ellipsoids elongated along x in the clefts, one per sarcomere centred between two Z lines
  (interfibrillar mitochondria are about a sarcomere long and sit between the Z lines), pushing the myofibrils
  aside, with cristae texture and a darker membrane rim;
- T-tubules: bright tubes lying in the transverse plane of a Z line, so in a slice they are thin bright lines
  on the Z lines (passing between the ends of neighbouring mitochondria), wrapped in a dark membrane rim; each
  is an instance, and a share are thin and fainter (the hard ones, which a 2-D model misses or breaks apart);
- look-alikes, labelled background and kept away from the Z lines: membrane-bound compartments whose lumen
  and rim look exactly like a T-tubule's (same gray levels, same widths, the same thin share), so a voxel's
  neighbourhood alone does not tell them apart, only the context does (Z line or not, myofibrils and
  mitochondria around):
  longitudinal sarcoplasmic reticulum (SR) tubules running along x within one sarcomere, in the clefts and
  over the myofibrils; transverse SR segments at the M lines (where a T-tubule would cross, half a sarcomere
  off); vesicles (round profiles, like a T-tubule cut across);
- extracellular space beyond the sarcolemma in some volumes: processes of neighbouring cells (not striated)
  separated by narrow extracellular clefts as bright as T-tubule lumen (it is continuous with it in a real
  cell) and about as wide, between dark membranes, one of them along the sarcolemma; labelled background:
  the study's main source of false positives;

then an in-plane blur, a per-slice intensity drift (gain and offset, so normalisation matters) and Poisson
(shot) noise.

Labels: 0 background (cytosol, extracellular space), 1 mitochondrion, 2 myofibril, 3 T-tubule. Instances: one
id per mitochondrion and per T-tubule (0 elsewhere), unique within a volume.

Output: the layout a user's real data uses (``layout.py``), with the optional uint16 ``instances.tif`` written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from mlops.tasks.ttubule.layout import BACKGROUND, MITO, MYOFIBRIL, TTUBULE, write_volume
from mlops.tasks.ttubule.params import SimSettings

# Ideal gray levels before blur, drift and noise (SBEM contrast: stained membranes and proteins are dark).
CYTOSOL, I_BAND, A_BAND, M_LINE, Z_LINE = 182.0, 158.0, 143.0, 152.0, 85.0
MITO_MATRIX, MITO_RIM, TUBE_RIM = 88.0, 52.0, 78.0
# Lumen of every membrane-bound compartment (T-tubules and their look-alikes alike): drawn per object.
LUMEN_LOW, LUMEN_HIGH, THIN_LUMEN_LOW, THIN_LUMEN_HIGH = 206.0, 228.0, 192.0, 210.0
NEIGHBOUR, SARCOLEMMA = 165.0, 70.0
#: membrane rim around tubes and vesicles (nm); length range of a transverse tubule (T-tubule or M-line SR)
RIM_NM = 55.0
TRANSVERSE_LENGTH_NM = (1000.0, 3000.0)


@dataclass
class SimVolume:
    image: np.ndarray  # (Z, Y, X) uint8
    labels: np.ndarray  # (Z, Y, X) uint8
    instances: np.ndarray  # (Z, Y, X) uint16
    voxel_size_nm: tuple[float, float, float]  # z, y, x
    #: look-alike voxels inside the cell (SR tubules, vesicles; labelled background), for tests and figures
    lookalikes: np.ndarray | None = None
    #: distance (nm) of each voxel to the nearest Z line along x
    zline_distance: np.ndarray | None = None


def _waves(rng: np.random.Generator, coords: list[np.ndarray], wavelength: tuple[float, float], n: int = 3):
    """A smooth random field in [-1, 1]: a sum of ``n`` plane waves over broadcastable coordinates (nm)."""
    total = 0.0
    for _ in range(n):
        direction = rng.normal(size=len(coords))
        direction /= np.linalg.norm(direction) + 1e-12
        k = 2 * np.pi / rng.uniform(*wavelength)
        total = total + np.sin(
            k * sum(d * c for d, c in zip(direction, coords, strict=True)) + rng.uniform(0, 2 * np.pi)
        )
    return total / n


def _myofibril_lattice(rng: np.random.Generator, s: SimSettings, y_extent: float, z_extent: float) -> np.ndarray:
    """Myofibril axis positions (y, z) in nm: a jittered hexagonal lattice covering the volume with a margin."""
    spacing = s.myofibril_nm + s.cleft_nm
    row = spacing * np.sqrt(3) / 2
    z0, y0 = rng.uniform(0, row), rng.uniform(0, spacing)
    centres = []
    for i, z in enumerate(np.arange(-spacing + z0, z_extent + spacing, row)):
        for y in np.arange(-spacing + y0 + (spacing / 2) * (i % 2), y_extent + spacing, spacing):
            centres.append((y, z))
    centres = np.asarray(centres) + rng.normal(0, 0.08 * spacing, size=(len(centres), 2))
    return centres


def _nearest_two(points_y: np.ndarray, points_z: np.ndarray, centres: np.ndarray):
    """Index of the nearest and second-nearest lattice centre and the distance to their bisector (nm)."""
    d1 = np.full(points_y.shape, np.inf)
    d2 = np.full(points_y.shape, np.inf)
    i1 = np.zeros(points_y.shape, dtype=np.int64)
    i2 = np.zeros(points_y.shape, dtype=np.int64)
    for k, (cy, cz) in enumerate(centres):
        d = (points_y - cy) ** 2 + (points_z - cz) ** 2
        closer = d < d1
        second = ~closer & (d < d2)
        d2 = np.where(closer, d1, np.where(second, d, d2))
        i2 = np.where(closer, i1, np.where(second, k, i2))
        d1 = np.where(closer, d, d1)
        i1 = np.where(closer, k, i1)
    separation = np.linalg.norm(centres[i1] - centres[i2], axis=-1)
    # Distance of a point to the bisector of its two nearest centres: the half-width it has to the cleft.
    bisector = (d2 - d1) / (2 * np.maximum(separation, 1e-9))
    return i1, bisector


def _in_plane_rim(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with an in-slice 4-neighbour outside it (a one-pixel membrane)."""
    cross = np.zeros((1, 3, 3), dtype=bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=1)


def _place_mitochondria(
    rng: np.random.Generator,
    s: SimSettings,
    cleft: np.ndarray,
    inside: np.ndarray,
    phase: np.ndarray,
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Instance map (ids 1..n) of non-touching ellipsoidal mitochondria centred in the clefts, one per sarcomere.

    Each is centred near an M line (mid-sarcomere) and shorter than a sarcomere, so the Z lines, where the
    T-tubules run, stay between the ends of neighbouring mitochondria.
    """
    Z, Y, X = shape
    dz, dxy, period = s.voxel_z_nm, s.voxel_xy_nm, s.sarcomere_nm
    ids = np.zeros(shape, dtype=np.uint16)
    candidates = np.argwhere(cleft & inside & (np.abs(phase - period / 2) < 0.06 * period))
    if len(candidates) == 0:
        return ids
    target, filled, n = s.mito_fraction * inside.sum(), 0, 0
    halo = np.ones((1, 3, 3), dtype=bool)
    for _ in range(1500):
        if filled >= target:
            break
        cz, cy, cx = candidates[rng.integers(len(candidates))]
        ax = rng.uniform(0.30, 0.40) * period
        ay, az = rng.uniform(170, 360), rng.uniform(170, 360)
        rz, ry, rx = int(np.ceil(az / dz)), int(np.ceil(ay / dxy)), int(np.ceil(ax / dxy))
        zs, ys, xs = (slice(max(c - r, 0), min(c + r + 1, n_)) for c, r, n_ in ((cz, rz, Z), (cy, ry, Y), (cx, rx, X)))
        gz, gy, gx = np.ogrid[zs, ys, xs]
        body = ((gz - cz) * dz / az) ** 2 + ((gy - cy) * dxy / ay) ** 2 + ((gx - cx) * dxy / ax) ** 2 <= 1.0
        body &= inside[zs, ys, xs]
        if body.sum() < 8 or (ndimage.binary_dilation(body, structure=halo) & (ids[zs, ys, xs] > 0)).any():
            continue
        n += 1
        ids[zs, ys, xs][body] = n
        filled += int(body.sum())
    return ids


def _transverse_centreline(
    rng: np.random.Generator,
    s: SimSettings,
    shape: tuple[int, int, int],
    plane_x,
    x_origin: float,
    length_nm: tuple[float, float],
) -> np.ndarray | None:
    """Voxel coordinates (n, 3) of a curve in a transverse plane ``x_origin + k * sarcomere + plane_x(z, y)``.

    With ``x_origin`` on a Z line this is a T-tubule; half a sarcomere further on, a transverse SR segment at
    an M line.
    """
    Z, Y, X = shape
    dz, dxy, period = s.voxel_z_nm, s.voxel_xy_nm, s.sarcomere_nm
    first = int(np.ceil((2 * dxy - x_origin) / period))
    last = int(np.floor(((X - 3) * dxy - x_origin) / period))
    if last < first:
        return None
    line = rng.integers(first, last + 1)
    y, z = rng.uniform(0, Y * dxy), rng.uniform(0, Z * dz)
    # Mostly along y (the slice plane) with a tilt through the slices: a line segment in a slice that
    # drifts across a few slices, as T-tubules look in longitudinal sections.
    angle = rng.normal(0, 0.3) + (np.pi if rng.random() < 0.5 else 0.0)
    length, step = rng.uniform(*length_nm), 15.0
    points = []
    for _ in range(int(length / step)):
        if not (0 <= y < Y * dxy and 0 <= z < Z * dz):
            break
        x = x_origin + line * period + plane_x(z, y)
        points.append((z / dz, y / dxy, x / dxy))
        angle += rng.normal(0, 0.03)
        y += step * np.cos(angle)
        z += step * np.sin(angle) * 0.35
    return _voxels(points, shape, least=20)


def _longitudinal_centreline(
    rng: np.random.Generator, s: SimSettings, shape: tuple[int, int, int], start: np.ndarray, phase: np.ndarray
) -> np.ndarray | None:
    """Voxel coordinates of a wavy SR tubule along x inside the sarcomere of voxel ``start``, off its Z lines."""
    dz, dxy, period = s.voxel_z_nm, s.voxel_xy_nm, s.sarcomere_nm
    cz, cy, cx = (int(v) for v in start)
    zline = cx * dxy - phase[cz, cy, cx]  # the Z line at the sarcomere's start (nm)
    room = s.lookalike_zline_gap_nm + s.tube_radius_high_nm
    a, b = zline + room, zline + period - room
    if b - a < 200:
        return None
    length = rng.uniform(0.4, 1.0) * (b - a)
    x = rng.uniform(a, b - length)
    y, z, slope = cy * dxy, cz * dz, rng.normal(0, 0.15)
    points, step = [], 15.0
    for _ in range(int(length / step)):
        points.append((z / dz, y / dxy, x / dxy))
        slope = float(np.clip(slope + rng.normal(0, 0.04), -0.5, 0.5))
        x += step
        y += step * slope
        z += step * rng.normal(0, 0.05)
    return _voxels(points, shape, least=8)


def _voxels(points: list, shape: tuple[int, int, int], least: int) -> np.ndarray | None:
    """Unique in-volume voxels of a centreline given in voxel units; None when fewer than ``least`` points."""
    if len(points) < least:
        return None
    voxels = np.unique(np.rint(np.asarray(points)).astype(np.int64), axis=0)
    keep = np.all((voxels >= 0) & (voxels < np.asarray(shape)), axis=1)
    return voxels[keep] if keep.sum() >= 5 else None


def _profile(centre: np.ndarray, radius: float, s: SimSettings, shape: tuple[int, ...]):
    """(box, distance in nm to the centreline) around a centreline, within reach of its rim."""
    dz, dxy = s.voxel_z_nm, s.voxel_xy_nm
    pad = np.array([int(np.ceil((radius + RIM_NM) / d)) + 1 for d in (dz, dxy, dxy)])
    lo = np.maximum(centre.min(axis=0) - pad, 0)
    hi = np.minimum(centre.max(axis=0) + pad + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    seed = np.ones(tuple(hi - lo), dtype=bool)
    seed[tuple((centre - lo).T)] = False
    return box, ndimage.distance_transform_edt(seed, sampling=(dz, dxy, dxy))


def _radius_and_lumen(rng: np.random.Generator, s: SimSettings) -> tuple[float, float]:
    """Radius (nm) and lumen gray level of one tube or vesicle: a share are thin and fainter (partial volume)."""
    if rng.random() < s.thin_tube_share:
        return s.thin_tube_radius_nm * rng.uniform(0.9, 1.1), rng.uniform(THIN_LUMEN_LOW, THIN_LUMEN_HIGH)
    return rng.uniform(s.tube_radius_low_nm, s.tube_radius_high_nm), rng.uniform(LUMEN_LOW, LUMEN_HIGH)


def _place_tubes(rng, s: SimSettings, inside: np.ndarray, zline_x, x_origin: float):
    """T-tubule instance map (ids 1..n), rim mask and lumen gray levels; tubes do not touch each other."""
    shape = inside.shape
    ids = np.zeros(shape, dtype=np.uint16)
    rim = np.zeros(shape, dtype=bool)
    lumen = np.zeros(shape, dtype=np.float32)
    target, filled, n = s.ttubule_fraction * inside.sum(), 0, 0
    for _ in range(200):
        if filled >= target:
            break
        centre = _transverse_centreline(rng, s, shape, zline_x, x_origin, TRANSVERSE_LENGTH_NM)
        if centre is None:
            continue
        radius, gray = _radius_and_lumen(rng, s)
        # Distances only in a box around the centreline (a whole-volume transform per tube is wasteful).
        box, dist = _profile(centre, radius, s, shape)
        body = (dist < radius) & inside[box]
        ring = (dist >= radius) & (dist < radius + RIM_NM)
        if body.sum() < 10 or ((body | ring) & (ids[box] > 0)).any() or body.sum() < 0.7 * (dist < radius).sum():
            continue
        if n and filled + body.sum() > 1.5 * target:  # small volumes: one long tube too many overshoots
            continue
        n += 1
        ids[box][body] = n
        rim[box] |= ring & inside[box]
        lumen[box][body] = gray
        filled += int(body.sum())
    rim &= ids == 0
    return ids, rim, lumen


def _place_lookalikes(
    rng: np.random.Generator,
    s: SimSettings,
    inside: np.ndarray,
    tubes: np.ndarray,
    mito: np.ndarray,
    zline_distance: np.ndarray,
    phase: np.ndarray,
    cleft: np.ndarray,
    zline_x,
    x_origin: float,
):
    """SR tubules (along x, or transverse at M lines) and vesicles: (body mask, rim mask, lumen gray levels).

    Same radii, lumen and rim as the T-tubules, never within ``lookalike_zline_gap_nm`` of a Z line and never
    touching a T-tubule (``tubes``: tubes and their rims) or each other; a tubule that runs into a
    mitochondrion stops at its membrane.
    """
    shape = inside.shape
    body_all = np.zeros(shape, dtype=bool)
    rim = np.zeros(shape, dtype=bool)
    lumen = np.zeros(shape, dtype=np.float32)
    halo = np.ones((1, 3, 3), dtype=bool)
    near_tube = ndimage.binary_dilation(tubes, structure=halo)
    allowed = inside & (zline_distance >= s.lookalike_zline_gap_nm) & ~ndimage.binary_dilation(mito, structure=halo)
    cells, clefts = np.argwhere(allowed), np.argwhere(allowed & cleft)
    n_cell = inside.sum()

    def put(centre: np.ndarray | None, radius: float, gray: float) -> int:
        if centre is None:
            return 0
        box, dist = _profile(centre, radius, s, shape)
        body = (dist < radius) & allowed[box]
        ring = (dist >= radius) & (dist < radius + RIM_NM) & inside[box] & ~mito[box]
        if body.sum() < 4 or ((body | ring) & (near_tube[box] | body_all[box] | rim[box])).any():
            return 0
        body_all[box] |= body
        rim[box] |= ring
        lumen[box][body] = gray
        return int(body.sum())

    filled, target = 0, s.sr_fraction * n_cell
    for _ in range(400):
        if filled >= target or not len(cells):
            break
        radius, gray = _radius_and_lumen(rng, s)
        if rng.random() < s.m_line_sr_share:
            m_line = x_origin + s.sarcomere_nm / 2
            centre = _transverse_centreline(rng, s, shape, zline_x, m_line, TRANSVERSE_LENGTH_NM)
        else:  # half in the clefts (between myofibrils), half over the myofibrils
            pool = clefts if len(clefts) and rng.random() < 0.5 else cells
            centre = _longitudinal_centreline(rng, s, shape, pool[rng.integers(len(pool))], phase)
        filled += put(centre, radius, gray)
    filled, target = 0, s.vesicle_fraction * n_cell
    for _ in range(400):
        if filled >= target or not len(cells):
            break
        radius, gray = _radius_and_lumen(rng, s)
        filled += put(cells[rng.integers(len(cells))][None], radius * rng.uniform(0.9, 1.4), gray)
    rim &= ~body_all
    return body_all, rim, lumen


def simulate_volume(rng: np.random.Generator, s: SimSettings) -> SimVolume:
    """One stack with its labels and instances; deterministic in the generator's state."""
    shape = (s.slices, s.height, s.width)
    Z, Y, X = shape
    dz, dxy, period = s.voxel_z_nm, s.voxel_xy_nm, s.sarcomere_nm
    z = (np.arange(Z) * dz)[:, None, None]
    y = (np.arange(Y) * dxy)[None, :, None]
    x = (np.arange(X) * dxy)[None, None, :]

    # Extracellular space beyond a wavy sarcolemma along one side (y high), in some volumes only.
    inside = np.ones(shape, dtype=bool)
    sarcolemma = np.zeros(shape, dtype=bool)
    border = np.inf
    if rng.random() < s.extracellular_probability:
        share = rng.uniform(s.extracellular_share_low, s.extracellular_share_high)
        border = (1 - share) * Y * dxy + 180.0 * _waves(rng, [z, x], (2500, 6000), n=2)
        inside = np.broadcast_to(y < border, shape).copy()
        sarcolemma = inside & (y >= border - 1.2 * dxy)

    # Myofibrils bend gently along x; the cross-section lattice is sampled at the bent position.
    bend = 0.12 * s.myofibril_nm * _waves(rng, [z, x], (3000, 8000), n=2)
    centres = _myofibril_lattice(rng, s, Y * dxy, Z * dz)
    fibril, bisector = _nearest_two(np.broadcast_to(y + bend, shape), np.broadcast_to(z, shape), centres)
    cleft = bisector < s.cleft_nm / 2

    # Sarcomeres: Z lines every `period` along x, staggered per myofibril and gently wavy across the cell.
    x_origin = rng.uniform(0, period)
    stagger = rng.normal(0, 0.025 * period, size=len(centres))
    wave_seed = int(rng.integers(2**31))

    def zline_x(zz, yy):
        return 0.02 * period * _waves(np.random.default_rng(wave_seed), [np.asarray(zz), np.asarray(yy)], (2000, 5000))

    phase = np.mod(x - x_origin - stagger[fibril] - zline_x(z, y), period)
    to_zline = np.minimum(phase, period - phase)
    image = np.full(shape, A_BAND, dtype=np.float32)
    image[to_zline < 0.24 * period] = I_BAND
    image[np.abs(phase - period / 2) < 0.6 * dxy] = M_LINE
    image[to_zline < 0.6 * dxy] = Z_LINE
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), (0, 0.7, 1.5))
    image += 8.0 * texture

    labels = np.where(cleft, BACKGROUND, MYOFIBRIL).astype(np.uint8)
    image[cleft] = CYTOSOL
    glycogen = cleft & (rng.random(shape) < 0.03)
    image[glycogen] -= 70.0

    mito = _place_mitochondria(rng, s, cleft, inside, phase, shape)
    is_mito = mito > 0
    labels[is_mito] = MITO
    cristae = 14.0 * np.sin(2 * np.pi * (x * np.cos(0.4) + y * np.sin(0.4) + 0.3 * z) / 160.0)
    image[is_mito] = (MITO_MATRIX + np.broadcast_to(cristae, shape))[is_mito]
    image[_in_plane_rim(is_mito)] = MITO_RIM

    tubes, tube_rim, tube_lumen = _place_tubes(rng, s, inside, zline_x, x_origin)
    is_tube = tubes > 0
    labels[is_tube] = TTUBULE
    image[tube_rim] = TUBE_RIM
    image[is_tube] = tube_lumen[is_tube]

    # Look-alikes after the tubes (they keep clear of them) and the mitochondria (they stop at them).
    lookalikes, look_rim, look_lumen = _place_lookalikes(
        rng, s, inside, is_tube | tube_rim, is_mito, to_zline, phase, cleft, zline_x, x_origin
    )
    labels[lookalikes] = BACKGROUND
    image[look_rim] = TUBE_RIM
    image[lookalikes] = look_lumen[lookalikes]

    instances = mito.astype(np.uint16)
    instances[is_tube] = 0
    # Tubes cut into a mitochondrion leave it smaller; its id stays. Tube ids follow the mitochondria's.
    instances[is_tube] = tubes[is_tube] + int(mito.max())

    # Outside the cell: processes of neighbouring cells (fibroblasts, endothelium: not striated, cytosol-gray)
    # separated by narrow extracellular clefts as bright as T-tubule lumen and about as wide, between dark
    # membranes; one such cleft runs along the sarcolemma.
    outside = ~inside
    labels[outside] = BACKGROUND
    instances[outside] = 0
    if outside.any():
        field = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), (1.0, 4.0, 4.0))
        field /= field.std() + 1e-6
        width = rng.uniform(2 * s.tube_radius_low_nm, 2 * s.tube_radius_high_nm)
        clefts = outside & ((np.abs(field) < 0.3) | (y < border + width))
        processes = outside & ~clefts
        grain = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), (0, 1.0, 1.0))
        image[processes] = (NEIGHBOUR + 30.0 * grain)[processes]
        image[clefts] = rng.uniform(LUMEN_LOW, LUMEN_HIGH)
        image[_in_plane_rim(processes)] = TUBE_RIM
        image[sarcolemma] = SARCOLEMMA

    # Acquisition: in-plane blur, per-slice drift of gain and offset, then shot noise.
    image = ndimage.gaussian_filter(image, (0, s.blur_px, s.blur_px))
    gain = rng.uniform(0.92, 1.08) * (1 + s.drift_gain * _waves(rng, [np.arange(Z) * dz], (Z * dz, 4 * Z * dz), 2))
    offset = s.drift_offset * _waves(rng, [np.arange(Z) * dz], (Z * dz, 4 * Z * dz), 2)
    image = image * gain[:, None, None] + offset[:, None, None]
    counts = rng.poisson(np.clip(image, 0, None) * s.dose)
    image = np.clip(np.rint(counts / s.dose), 0, 255).astype(np.uint8)
    return SimVolume(image, labels, instances, (float(dz), float(dxy), float(dxy)), lookalikes, to_zline)


def simulate_volumes(out_dir: Path, s: SimSettings, seed: int, progress: Callable[[int], None] = lambda _: None) -> int:
    """Write ``s.n_volumes`` volumes ``vol000``, ``vol001``, ... under ``out_dir``; deterministic in ``seed``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(s.n_volumes)
    for i, child in enumerate(children):
        vol = simulate_volume(np.random.default_rng(child), s)
        write_volume(out_dir / f"vol{i:03d}", vol.image, vol.labels, vol.voxel_size_nm, vol.instances)
        progress(1)
    return s.n_volumes
