"""Simulated factory-camera videos of a worker, written as OpenPose's own per-frame JSON.

A BODY_25 stick figure in 3-D is driven by parametric joint-angle trajectories, one per action of the
study, walks or stands on the floor of a room and is seen by a camera 2.7 m high tilted down (640x480,
30 fps). Each person has a body height, limb proportions, a tempo (how fast they move) and a posture
style; each action segment a phase and small posture offsets. Consecutive segments blend over 0.4 s, so
the only discontinuities are those of behaviour. The 2-D keypoints get the faults of a real pose
estimator: pixel jitter, per-joint confidences, missed joints (0, 0, 0), weak detections under the
confidence floor, frames where nobody was detected and spurious partial skeletons.

Normal behaviour: carrying a chair or a box with both hands, cutting paper with both hands, dropping
trash in front of the bin. Abnormal: the same with one hand, throwing trash, digging in the bin, and
carrying while running. Training videos hold normal behaviour only; test videos interleave normal and
abnormal segments, every abnormal action at least once when there is room.

Output: the real-data layout (``layout.py``; the README section "Real data: skeleton"), with every column
of videos.csv a camera's recording has.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlops.tasks.skeleton.layout import SPAN_COLUMNS, SPANS_FILE, VIDEO_HEADER, VIDEOS_FILE, frame_path
from mlops.tasks.skeleton.preprocess import N_JOINTS

NORMAL_ACTIONS = ("carry_chair", "carry_box", "cut_paper", "drop_trash")
ABNORMAL_ACTIONS = (
    "carry_chair_one_hand",
    "carry_box_one_hand",
    "cut_paper_one_hand",
    "throw_trash",
    "dig_in_bin",
    "run_while_working",
)
# Joint angles in degrees. Arm and leg flexions are measured from the vertical (0 = hanging, 90 = forward
# horizontal), so a forward lean moves the shoulders but lets the arms hang, as when digging in a bin.
ANGLES = ("lean", "r_sh", "r_abd", "r_el", "l_sh", "l_abd", "l_el", "r_hip", "r_kn", "l_hip", "l_kn")
WALK_HZ, RUN_HZ = 0.9, 1.45  # gait cycles (two steps) per second
WALK_SPEED, RUN_SPEED = 1.1, 3.0  # m/s
CAMERA_HEIGHT, CAMERA_PITCH_DEG, FOCAL_PX = 2.7, 30.0, 560.0
ROOM_X, ROOM_Z = (-2.0, 2.0), (3.0, 5.0)  # floor area in view, metres from the camera
# The work cell: where things are carried between, and which way a worker faces at the table and the bin
# (yaw 0 = facing away from the camera, 90 = walking to the image's left).
STATIONS = ((-1.4, 4.5), (1.4, 3.6), (0.0, 4.8))
FACING_DEG = {"table": 75.0, "bin": -100.0}
STATION_OF = {
    "cut_paper": "table",
    "cut_paper_one_hand": "table",
    "drop_trash": "bin",
    "throw_trash": "bin",
    "dig_in_bin": "bin",
}
BLEND_S = 0.4
SMALL_JOINTS = (15, 16, 17, 18, 19, 20, 21, 22, 23, 24)  # eyes, ears, feet: detected less reliably
TURN_DEG_PER_S = 180.0

ActionFn = Callable[[np.ndarray, float, float], tuple[np.ndarray, np.ndarray]]


def _pose(n: int, **values: np.ndarray | float) -> np.ndarray:
    out = np.zeros((n, len(ANGLES)))
    for name, value in values.items():
        out[:, ANGLES.index(name)] = value
    return out


def _gait(phi: np.ndarray, hip_amp: float, knee_amp: float, knee_rest: float) -> dict[str, np.ndarray]:
    """Legs in anti-phase; a knee flexes while its hip swings forward (cos > 0)."""
    return {
        "r_hip": hip_amp * np.sin(phi),
        "r_kn": knee_rest + knee_amp * np.clip(np.cos(phi), 0, None),
        "l_hip": -hip_amp * np.sin(phi),
        "l_kn": knee_rest + knee_amp * np.clip(-np.cos(phi), 0, None),
    }


def _stand(t: np.ndarray, phase: float) -> dict[str, np.ndarray]:
    sway = 2.0 * np.sin(2 * np.pi * 0.25 * t + phase)
    return {"r_hip": sway, "l_hip": -sway, "r_kn": 4.0, "l_kn": 4.0}


def _cycle(u: np.ndarray, knots: tuple[float, ...], values: tuple[float, ...]) -> np.ndarray:
    """Cosine-eased key-frame interpolation over a cycle position ``u`` in [0, 1)."""
    k, v = np.asarray(knots), np.asarray(values, dtype=float)
    i = np.clip(np.searchsorted(k, u, side="right") - 1, 0, len(k) - 2)
    frac = (u - k[i]) / (k[i + 1] - k[i])
    return v[i] + (v[i + 1] - v[i]) * (0.5 - 0.5 * np.cos(np.pi * frac))


def _free_arm_swing(phi: np.ndarray) -> dict[str, np.ndarray]:
    """The empty left hand swings with the right leg, as in ordinary walking."""
    return {"l_sh": 22 * np.sin(phi), "l_abd": 6.0, "l_el": 20 + 10 * np.sin(phi)}


def carry_box(t, tempo, phase):
    """Walking with a box held at the chest in both hands."""
    phi = 2 * np.pi * WALK_HZ * tempo * t + phase
    bob = 3 * np.sin(2 * phi)
    arms = {"r_sh": 35 + bob, "l_sh": 35 + bob, "r_abd": 10, "l_abd": 10, "r_el": 85, "l_el": 85}
    return _pose(len(t), lean=-3, **arms, **_gait(phi, 22, 50, 5)), np.full(len(t), WALK_SPEED * tempo)


def carry_chair(t, tempo, phase):
    """Walking with a chair held low and wide in both hands, leaning back a little."""
    phi = 2 * np.pi * WALK_HZ * tempo * t + phase
    bob = 3 * np.sin(2 * phi)
    arms = {"r_sh": 22 + bob, "l_sh": 22 + bob, "r_abd": 22, "l_abd": 22, "r_el": 35, "l_el": 35}
    return _pose(len(t), lean=-6, **arms, **_gait(phi, 20, 45, 5)), np.full(len(t), 0.95 * WALK_SPEED * tempo)


def carry_box_one_hand(t, tempo, phase):
    """Walking with a box hanging from the right hand, the left arm swinging free."""
    phi = 2 * np.pi * WALK_HZ * tempo * t + phase
    arms = {"r_sh": 8, "r_abd": 18, "r_el": 12, **_free_arm_swing(phi)}
    return _pose(len(t), lean=0, **arms, **_gait(phi, 22, 50, 5)), np.full(len(t), WALK_SPEED * tempo)


def carry_chair_one_hand(t, tempo, phase):
    """Walking with a chair hanging from the right hand, the left arm swinging free."""
    phi = 2 * np.pi * WALK_HZ * tempo * t + phase
    arms = {"r_sh": 4, "r_abd": 26, "r_el": 6, **_free_arm_swing(phi)}
    return _pose(len(t), lean=2, **arms, **_gait(phi, 20, 45, 5)), np.full(len(t), 0.95 * WALK_SPEED * tempo)


def run_while_working(t, tempo, phase):
    """Running (about 2.9 steps/s) with a box held in both hands."""
    phi = 2 * np.pi * RUN_HZ * tempo * t + phase
    bob = 8 * np.sin(2 * phi)
    arms = {"r_sh": 40 + bob, "l_sh": 40 + bob, "r_abd": 10, "l_abd": 10, "r_el": 95, "l_el": 95}
    return _pose(len(t), lean=12, **arms, **_gait(phi, 38, 95, 15)), np.full(len(t), RUN_SPEED * tempo)


def _cutting(t, tempo, phase, left: dict[str, float]):
    snip = 12 * np.sin(2 * np.pi * 1.6 * tempo * t + phase)
    drift = 6 * np.sin(2 * np.pi * 0.25 * t + phase)
    right = {"r_sh": 50 + drift, "r_abd": 10, "r_el": 60 + snip}
    return _pose(len(t), lean=18, **right, **left, **_stand(t, phase)), np.zeros(len(t))


def cut_paper(t, tempo, phase):
    """Standing at the table, the left hand holding the sheet, the right one snipping."""
    return _cutting(t, tempo, phase, {"l_sh": 45, "l_abd": 5, "l_el": 75})


def cut_paper_one_hand(t, tempo, phase):
    """Standing at the table snipping with the right hand, nothing holding the sheet."""
    return _cutting(t, tempo, phase, {"l_sh": 6, "l_abd": 6, "l_el": 12})


def drop_trash(t, tempo, phase):
    """Standing at the bin, reaching over it slowly and letting go."""
    # A slow reach over the bin, a pause while letting go, and back (about 3 s per drop).
    u = (tempo * t / 3.2 + phase / (2 * np.pi)) % 1.0
    knots = (0.0, 0.2, 0.45, 0.65, 1.0)
    pose = {
        "r_sh": _cycle(u, knots, (20, 20, 60, 60, 20)),
        "r_el": _cycle(u, knots, (80, 80, 15, 15, 80)),
        "lean": _cycle(u, knots, (8, 8, 25, 25, 8)),
        "r_abd": 8,
        "l_sh": 8,
        "l_abd": 8,
        "l_el": 15,
    }
    knee = _cycle(u, knots, (5, 5, 15, 15, 5))
    legs = {**_stand(t, phase), "r_kn": knee, "l_kn": knee}
    return _pose(len(t), **pose, **legs), np.zeros(len(t))


def throw_trash(t, tempo, phase):
    """Standing near the bin, throwing overarm."""
    # Wind-up behind the body, a fast overarm throw, follow-through and recovery (1.6 s per throw).
    u = (tempo * t / 1.6 + phase / (2 * np.pi)) % 1.0
    knots = (0.0, 0.3, 0.45, 0.6, 1.0)
    pose = {
        "r_sh": _cycle(u, knots, (20, -40, 150, 120, 20)),
        "r_el": _cycle(u, knots, (20, 100, 10, 15, 20)),
        "lean": _cycle(u, knots, (5, -8, 20, 15, 5)),
        "r_abd": 15,
        "l_sh": 30,
        "l_abd": 25,
        "l_el": 30,
        "r_hip": _cycle(u, knots, (0, -10, 15, 10, 0)),
        "l_hip": _cycle(u, knots, (0, 5, 20, 15, 0)),
        "r_kn": 10,
        "l_kn": 10,
    }
    return _pose(len(t), **pose), np.zeros(len(t))


def dig_in_bin(t, tempo, phase):
    """Bent deep over the bin, both hands rummaging fast inside it."""
    w = 2 * np.pi * 2.2 * tempo * t + phase
    pose = {
        "lean": 55 + 5 * np.sin(2 * np.pi * 0.5 * t + phase),
        "r_sh": 10 + 12 * np.sin(w),
        "l_sh": 10 + 12 * np.sin(w + 2),
        "r_el": 25 + 25 * np.sin(w + 1),
        "l_el": 25 + 25 * np.sin(w + 3),
        "r_abd": 10,
        "l_abd": 10,
        "r_hip": 10,
        "l_hip": 10,
        "r_kn": 20,
        "l_kn": 20,
    }
    return _pose(len(t), **pose), np.zeros(len(t))


ACTIONS: dict[str, ActionFn] = {
    "carry_chair": carry_chair,
    "carry_box": carry_box,
    "cut_paper": cut_paper,
    "drop_trash": drop_trash,
    "carry_chair_one_hand": carry_chair_one_hand,
    "carry_box_one_hand": carry_box_one_hand,
    "cut_paper_one_hand": cut_paper_one_hand,
    "throw_trash": throw_trash,
    "dig_in_bin": dig_in_bin,
    "run_while_working": run_while_working,
}


@dataclass(frozen=True)
class Person:
    height: float
    proportions: np.ndarray  # multiplicative jitter of the 8 segment lengths
    tempo: float
    style: np.ndarray  # posture offsets (degrees) per angle
    confidence: np.ndarray  # typical detection confidence per joint


def draw_person(rng: np.random.Generator) -> Person:
    """A worker: height, limb proportions, tempo, posture style and how well a pose estimator sees them."""
    confidence = rng.uniform(0.6, 0.92, N_JOINTS)
    confidence[list(SMALL_JOINTS)] = rng.uniform(0.35, 0.7, len(SMALL_JOINTS))
    return Person(
        height=float(rng.uniform(1.55, 1.9)),
        proportions=rng.uniform(0.97, 1.03, 8),
        tempo=float(rng.uniform(0.85, 1.15)),
        style=rng.normal(0, 4.0, len(ANGLES)),
        confidence=confidence,
    )


def skeleton_3d(angles_deg: np.ndarray, person: Person) -> np.ndarray:
    """Body-frame joints (n, 25, 3) for angles (n, len(ANGLES)): x = the person's left, y = up, z = forward;
    the lowest foot point stands on the floor (y = 0)."""
    h, p = person.height, person.proportions
    torso, shoulder, hip, upper_arm, forearm, thigh, shank, head = (
        np.array([0.30, 0.105, 0.055, 0.175, 0.16, 0.245, 0.245, 0.10]) * h * p
    )
    a = np.radians(angles_deg)
    n = len(a)
    col = {name: a[:, i] for i, name in enumerate(ANGLES)}
    joints = np.zeros((n, N_JOINTS, 3))

    def limb(flex: np.ndarray, abd: np.ndarray | float = 0.0, side: float = 0.0) -> np.ndarray:
        return np.stack(
            [side * np.sin(abd) * np.ones(n), -np.cos(abd) * np.cos(flex), np.cos(abd) * np.sin(flex)], axis=-1
        )

    def offset(x: float, y: float, z: float) -> np.ndarray:
        return np.array([x, y, z])

    pelvis = np.zeros((n, 3))
    joints[:, 8] = pelvis
    # right side is -x (x points to the person's left)
    for side, (hip_i, knee_i, ankle_i, big, small, heel), hip_a, knee_a in (
        (-1.0, (9, 10, 11, 22, 23, 24), col["r_hip"], col["r_kn"]),
        (1.0, (12, 13, 14, 19, 20, 21), col["l_hip"], col["l_kn"]),
    ):
        joints[:, hip_i] = pelvis + offset(side * hip, 0, 0)
        joints[:, knee_i] = joints[:, hip_i] + thigh * limb(hip_a)
        joints[:, ankle_i] = joints[:, knee_i] + shank * limb(hip_a - knee_a)
        joints[:, big] = joints[:, ankle_i] + offset(side * 0.01 * h, -0.04 * h, 0.11 * h)
        joints[:, small] = joints[:, ankle_i] + offset(side * 0.04 * h, -0.04 * h, 0.09 * h)
        joints[:, heel] = joints[:, ankle_i] + offset(0, -0.045 * h, -0.04 * h)
    lean = col["lean"]
    up = np.stack([np.zeros(n), np.cos(lean), np.sin(lean)], axis=-1)
    neck = pelvis + torso * up
    joints[:, 1] = neck
    # The head pitches less than the torso: people keep looking ahead.
    head_up = np.stack([np.zeros(n), np.cos(0.6 * lean), np.sin(0.6 * lean)], axis=-1)
    head_fwd = np.stack([np.zeros(n), -np.sin(0.6 * lean), np.cos(0.6 * lean)], axis=-1)
    nose = neck + head * head_up + 0.05 * h * head_fwd
    joints[:, 0] = nose
    for side, eye_i, ear_i in ((-1.0, 15, 17), (1.0, 16, 18)):
        joints[:, eye_i] = nose + 0.025 * h * head_up + offset(side * 0.03 * h, 0, 0) - 0.015 * h * head_fwd
        joints[:, ear_i] = nose + 0.005 * h * head_up + offset(side * 0.07 * h, 0, 0) - 0.08 * h * head_fwd
    for side, (sh_i, el_i, wr_i), sh_a, abd_a, el_a in (
        (-1.0, (2, 3, 4), col["r_sh"], col["r_abd"], col["r_el"]),
        (1.0, (5, 6, 7), col["l_sh"], col["l_abd"], col["l_el"]),
    ):
        joints[:, sh_i] = neck + offset(side * shoulder, 0, 0)
        joints[:, el_i] = joints[:, sh_i] + upper_arm * limb(sh_a, abd_a, side)
        joints[:, wr_i] = joints[:, el_i] + forearm * limb(sh_a + el_a, abd_a, side)
    feet = joints[:, [11, 14, 19, 20, 21, 22, 23, 24], 1].min(axis=1)
    joints[:, :, 1] -= feet[:, None]
    return joints


def project(world: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (..., 2) of world points seen by the tilted camera, and whether each is in front."""
    pitch = np.radians(CAMERA_PITCH_DEG)
    d = world - np.array([0.0, CAMERA_HEIGHT, 0.0])
    z = d[..., 1] * -np.sin(pitch) + d[..., 2] * np.cos(pitch)
    y = d[..., 1] * np.cos(pitch) + d[..., 2] * np.sin(pitch)
    safe = np.maximum(z, 1e-3)
    # Looking along +z with y up, the image's right is the world's -x.
    u = width / 2 - FOCAL_PX * d[..., 0] / safe
    v = height / 2 - FOCAL_PX * y / safe
    return np.stack([u, v], axis=-1), z > 0.1


def _turn(current: float, target: float, max_step: float) -> float:
    delta = (target - current + np.pi) % (2 * np.pi) - np.pi
    return current + float(np.clip(delta, -max_step, max_step))


def plan_segments(
    rng: np.random.Generator,
    n_frames: int,
    fps: int,
    abnormal_fraction: float,
    seconds: tuple[float, float],
) -> list[tuple[int, int, str]]:
    """(start, end exclusive, action) segments covering the video. round(abnormal_fraction x (segments - 1))
    of them are abnormal, never the first (a detector needs a window of history), at random places;
    their actions cycle through shuffled rounds of all abnormal actions, so each appears when there is room."""
    bounds, start = [], 0
    while start < n_frames:
        end = min(n_frames, start + int(round(rng.uniform(*seconds) * fps)))
        bounds.append((start, end))
        start = end
    n_abnormal = int(round(abnormal_fraction * (len(bounds) - 1)))
    abnormal = set((1 + rng.permutation(len(bounds) - 1)[:n_abnormal]).tolist())
    segments, pending = [], []
    for i, (start, end) in enumerate(bounds):
        if i in abnormal:
            if not pending:
                pending = [str(a) for a in rng.permutation(ABNORMAL_ACTIONS)]
            action = pending.pop()
        else:
            action = str(NORMAL_ACTIONS[rng.integers(len(NORMAL_ACTIONS))])
        segments.append((start, end, action))
    return segments


def simulate_video(
    rng: np.random.Generator,
    person: Person,
    segments: list[tuple[int, int, str]],
    fps: int,
    width: int,
    height: int,
) -> np.ndarray:
    """Keypoints (n_frames, 25, 2) in pixels, before detection faults."""
    n_frames = segments[-1][1]
    angles = np.zeros((n_frames, len(ANGLES)))
    speed = np.zeros(n_frames)
    targets = np.zeros(n_frames)  # yaw a standing worker turns to
    walking = np.zeros(n_frames, dtype=bool)
    blend = int(round(BLEND_S * fps))
    previous = None
    for start, end, action in segments:
        t = np.arange(end - start) / fps
        phase, offsets = rng.uniform(0, 2 * np.pi), rng.normal(0, 3.0, len(ANGLES))
        a, s = ACTIONS[action](t, person.tempo, phase)
        a = a + person.style + offsets
        if previous is not None:
            fn, p_phase, p_offsets, p_t0 = previous
            k = min(blend, end - start)
            pa, ps = fn(p_t0 + t[:k], person.tempo, p_phase)
            w = (0.5 - 0.5 * np.cos(np.pi * np.arange(1, k + 1) / (k + 1)))[:, None]
            a[:k] = (1 - w) * (pa + person.style + p_offsets) + w * a[:k]
            s[:k] = (1 - w[:, 0]) * ps + w[:, 0] * s[:k]
        angles[start:end], speed[start:end] = a, s
        facing = FACING_DEG.get(STATION_OF.get(action, ""), 0.0) + rng.normal(0, 15.0)
        targets[start:end] = np.radians(facing)
        walking[start:end] = s.max() > 0
        previous = (ACTIONS[action], phase, offsets, t[-1] + 1 / fps)

    x, z = rng.uniform(*ROOM_X), rng.uniform(*ROOM_Z)
    yaw = rng.uniform(-np.pi, np.pi)
    station = int(rng.integers(len(STATIONS)))

    def next_waypoint() -> np.ndarray:
        # Carrying goes from one station of the cell to another, never to where the worker already is.
        nonlocal station
        station = (station + int(rng.integers(1, len(STATIONS)))) % len(STATIONS)
        return np.asarray(STATIONS[station]) + rng.normal(0, 0.25, 2)

    waypoint = next_waypoint()
    max_turn = np.radians(TURN_DEG_PER_S) / fps
    roots = np.zeros((n_frames, 3))
    yaws = np.zeros(n_frames)
    for i in range(n_frames):
        if walking[i]:
            if np.hypot(*(waypoint - (x, z))) < 0.5:
                waypoint = next_waypoint()
            yaw = _turn(yaw, float(np.arctan2(waypoint[0] - x, waypoint[1] - z)), max_turn)
        else:
            yaw = _turn(yaw, targets[i], max_turn)
        x = float(np.clip(x + speed[i] / fps * np.sin(yaw), *ROOM_X))
        z = float(np.clip(z + speed[i] / fps * np.cos(yaw), *ROOM_Z))
        roots[i], yaws[i] = (x, 0.0, z), yaw

    body = skeleton_3d(angles, person)
    c, s_ = np.cos(yaws)[:, None], np.sin(yaws)[:, None]
    world = np.stack(
        [body[..., 0] * c + body[..., 2] * s_, body[..., 1], -body[..., 0] * s_ + body[..., 2] * c], axis=-1
    )
    pixels, _ = project(world + roots[:, None, :], width, height)
    return pixels


def detect(
    rng: np.random.Generator,
    pixels: np.ndarray,
    person: Person,
    width: int,
    height: int,
    joint_noise_px: float,
    missed_joint_prob: float,
    weak_joint_prob: float,
    no_person_prob: float,
    ghost_person_prob: float,
) -> list[list[np.ndarray]]:
    """What a pose estimator reports per frame: a list of people, each (25, 3) of x, y, confidence."""
    frames = []
    small = np.zeros(N_JOINTS, dtype=bool)
    small[list(SMALL_JOINTS)] = True
    fault_scale = np.where(small, 2.5, 1.0)
    for kp in pixels:
        if rng.uniform() < no_person_prob:
            frames.append([])
            continue
        xy = kp + rng.normal(0, joint_noise_px, kp.shape)
        conf = np.clip(person.confidence + rng.normal(0, 0.06, N_JOINTS), 0.12, 0.99)
        weak = rng.uniform(size=N_JOINTS) < weak_joint_prob * fault_scale
        conf[weak] = rng.uniform(0.02, 0.1, int(weak.sum()))
        xy[weak] += rng.normal(0, 4 * joint_noise_px, (int(weak.sum()), 2))
        inside = (xy[:, 0] >= 0) & (xy[:, 0] <= width - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= height - 1)
        missed = (rng.uniform(size=N_JOINTS) < missed_joint_prob * fault_scale) | ~inside
        person_kp = np.concatenate([xy, conf[:, None]], axis=1)
        person_kp[missed] = 0.0
        people = [person_kp]
        if rng.uniform() < ghost_person_prob:
            ghost = np.zeros((N_JOINTS, 3))
            picked = rng.choice(N_JOINTS, size=int(rng.integers(2, 5)), replace=False)
            ghost[picked] = np.stack(
                [rng.uniform(0, width - 1, len(picked)), rng.uniform(0, height - 1, len(picked)),
                 rng.uniform(0.1, 0.4, len(picked))], axis=1,
            )  # fmt: skip
            people.append(ghost)
        frames.append(people)
    return frames


def openpose_document(people: list[np.ndarray]) -> dict:
    """One frame as OpenPose 1.3+ writes it (body only)."""
    return {
        "version": 1.3,
        "people": [
            {
                "person_id": [-1],
                "pose_keypoints_2d": [round(float(v), 3) for v in kp.reshape(-1)],
                "face_keypoints_2d": [],
                "hand_left_keypoints_2d": [],
                "hand_right_keypoints_2d": [],
                "pose_keypoints_3d": [],
                "face_keypoints_3d": [],
                "hand_left_keypoints_3d": [],
                "hand_right_keypoints_3d": [],
            }
            for kp in people
        ],
    }


def simulate_videos(
    out_dir: Path,
    *,
    n_train_videos: int,
    train_frames_per_video: int,
    n_test_videos: int,
    test_frames_per_video: int,
    fps: int,
    width: int,
    height: int,
    abnormal_fraction: float,
    segment_seconds_min: float,
    segment_seconds_max: float,
    joint_noise_px: float,
    missed_joint_prob: float,
    weak_joint_prob: float,
    no_person_prob: float,
    ghost_person_prob: float,
    seed: int,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Write the videos in the real-data layout; deterministic in ``seed``; returns the frame count."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = [(f"train_{i + 1:02d}", "train", train_frames_per_video, 0.0) for i in range(n_train_videos)]
    plan += [(f"test_{i + 1:02d}", "test", test_frames_per_video, abnormal_fraction) for i in range(n_test_videos)]
    videos, spans, total = [], [], 0
    for number, (video, role, n_frames, fraction) in enumerate(plan):
        person = draw_person(rng)
        segments = plan_segments(rng, n_frames, fps, fraction, (segment_seconds_min, segment_seconds_max))
        pixels = simulate_video(rng, person, segments, fps, width, height)
        frames = detect(
            rng,
            pixels,
            person,
            width,
            height,
            joint_noise_px,
            missed_joint_prob,
            weak_joint_prob,
            no_person_prob,
            ghost_person_prob,
        )
        (out_dir / video).mkdir(parents=True, exist_ok=True)
        for i, people in enumerate(frames):
            doc = openpose_document(people)
            frame_path(out_dir, video, i).write_text(json.dumps(doc, separators=(",", ":")))
            progress(1)
        spans += [(video, s, e - 1, a) for s, e, a in segments if a in ABNORMAL_ACTIONS]
        videos.append((video, role, f"p{number + 1:02d}", n_frames, fps, width, height))
        total += n_frames
    with (out_dir / VIDEOS_FILE).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(VIDEO_HEADER)
        writer.writerows(videos)
    with (out_dir / SPANS_FILE).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SPAN_COLUMNS)
        writer.writerows(spans)
    return total
