"""The study's preprocessing, shared by training and serving so the two cannot drift.

OpenPose BODY_25 keypoints of one frame -> the skeleton drawn on the video's 640x480 canvas -> a 480x480
crop centred on the neck -> bilinear downscale to 28x28 -> grayscale -> binarised map. Consecutive maps of
one video form stride-1 windows of T frames ("sequential skeleton maps"): a video of F frames gives
F - T + 1 windows, none crossing into another video.

Real pose estimators miss people and joints: a frame without a person, or without any confident joint to
centre the crop on, becomes an empty map, and joints under the confidence floor are left out of the
drawing. Both are counted in ``FrameCounts`` so a dataset (or a request) says how much it lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

N_JOINTS = 25
NECK, R_SHOULDER, L_SHOULDER = 1, 2, 5
# OpenPose's BODY_25 rendering pairs (the limbs its images show).
BODY25_LIMBS = (
    (1, 8), (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (10, 11), (8, 12), (12, 13),
    (13, 14), (1, 0), (0, 15), (15, 17), (0, 16), (16, 18), (14, 19), (19, 20), (14, 21), (11, 22), (22, 23),
    (11, 24),
)  # fmt: skip
JOINT_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "mid_hip", "r_hip",
    "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear", "l_big_toe",
    "l_small_toe", "l_heel", "r_big_toe", "r_small_toe", "r_heel",
)  # fmt: skip


class KeypointError(ValueError):
    """An OpenPose frame that does not have the documented structure (the message says where)."""


@dataclass(frozen=True)
class MapSpec:
    """How keypoints become a map; the values come from params.yaml ``skeleton.input``."""

    canvas_width: int
    canvas_height: int
    crop: int
    size: int
    line_width_px: int
    binarize_threshold: float
    min_confidence: float

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class FrameCounts:
    """What preprocessing had to work around, summed over frames."""

    frames: int = 0
    frames_without_person: int = 0
    frames_without_centre: int = 0
    frames_with_low_confidence_joints: int = 0
    low_confidence_joints: int = 0
    extra_people: int = 0

    def add(self, other: FrameCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in self.__dataclass_fields__}


def parse_openpose_frame(doc: Any, where: str = "frame") -> list[np.ndarray]:
    """People of one OpenPose per-frame dict as (25, 3) float arrays; KeypointError names what is wrong."""
    if not isinstance(doc, dict):
        raise KeypointError(f"{where}: expected an OpenPose object with a 'people' list, got {type(doc).__name__}")
    people = doc.get("people")
    if not isinstance(people, list):
        raise KeypointError(f"{where}: 'people' must be a list (OpenPose writes [] when nobody was detected)")
    parsed = []
    for i, person in enumerate(people):
        keypoints = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if not isinstance(keypoints, list):
            raise KeypointError(f"{where}, person {i}: no 'pose_keypoints_2d' list")
        if len(keypoints) != 3 * N_JOINTS:
            raise KeypointError(
                f"{where}, person {i}: {len(keypoints)} numbers in pose_keypoints_2d; BODY_25 needs "
                f"{N_JOINTS} joints x (x, y, confidence) = {3 * N_JOINTS}"
            )
        try:
            array = np.asarray(keypoints, dtype=np.float64).reshape(N_JOINTS, 3)
        except (TypeError, ValueError, OverflowError) as exc:  # (an integer beyond float64: OverflowError)
            raise KeypointError(f"{where}, person {i}: pose_keypoints_2d holds non-numbers") from exc
        if not np.isfinite(array).all():
            raise KeypointError(f"{where}, person {i}: pose_keypoints_2d holds NaN or infinity")
        parsed.append(array)
    return parsed


def read_frame_file(path: Path) -> list[np.ndarray]:
    """People of one ``*_keypoints.json`` file; KeypointError for unreadable JSON or a wrong structure."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeypointError(f"{path}: not readable JSON ({exc})") from exc
    return parse_openpose_frame(doc, str(path))


def select_person(people: Sequence[np.ndarray]) -> np.ndarray | None:
    """The worker: the detection with the largest summed confidence (OpenPose also reports passers-by and
    spurious partial skeletons); None when nobody was detected."""
    if not people:
        return None
    return max(people, key=lambda kp: float(kp[:, 2].sum()))


def crop_centre(keypoints: np.ndarray, min_confidence: float) -> tuple[float, float] | None:
    """Where the crop is centred: the neck; when the neck was missed, the middle of the shoulders, else the
    mean of the confident joints (a shifted map beats a lost frame); None without any confident joint."""
    ok = keypoints[:, 2] >= min_confidence
    if ok[NECK]:
        return float(keypoints[NECK, 0]), float(keypoints[NECK, 1])
    if ok[R_SHOULDER] and ok[L_SHOULDER]:
        mid = keypoints[[R_SHOULDER, L_SHOULDER], :2].mean(axis=0)
        return float(mid[0]), float(mid[1])
    if ok.any():
        mean = keypoints[ok, :2].mean(axis=0)
        return float(mean[0]), float(mean[1])
    return None


def render_map(keypoints: np.ndarray | None, spec: MapSpec) -> np.ndarray:
    """Binary (size, size) uint8 map of one person's skeleton; all zeros without a person or a centre."""
    blank = np.zeros((spec.size, spec.size), dtype=np.uint8)
    if keypoints is None:
        return blank
    centre = crop_centre(keypoints, spec.min_confidence)
    if centre is None:
        return blank
    canvas = Image.new("L", (spec.canvas_width, spec.canvas_height), 0)
    draw = ImageDraw.Draw(canvas)
    ok = keypoints[:, 2] >= spec.min_confidence
    for a, b in BODY25_LIMBS:
        if ok[a] and ok[b]:
            draw.line([tuple(keypoints[a, :2]), tuple(keypoints[b, :2])], fill=255, width=spec.line_width_px)
    r = spec.line_width_px / 2
    for x, y in keypoints[ok, :2]:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    # The crop may reach past the frame; PIL pads it with black, as a camera would show nothing there.
    left = int(round(centre[0] - spec.crop / 2))
    top = int(round(centre[1] - spec.crop / 2))
    crop = canvas.crop((left, top, left + spec.crop, top + spec.crop))
    small = crop.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
    return (np.asarray(small, dtype=np.float32) >= spec.binarize_threshold * 255).astype(np.uint8)


def frame_to_map(people: Sequence[np.ndarray], spec: MapSpec) -> tuple[np.ndarray, FrameCounts]:
    """One frame's map and what was worked around in it."""
    counts = FrameCounts(frames=1)
    person = select_person(people)
    if person is None:
        counts.frames_without_person = 1
        return render_map(None, spec), counts
    counts.extra_people = len(people) - 1
    low = int((person[:, 2] < spec.min_confidence).sum())
    counts.low_confidence_joints = low
    counts.frames_with_low_confidence_joints = int(low > 0)
    if crop_centre(person, spec.min_confidence) is None:
        counts.frames_without_centre = 1
    return render_map(person, spec), counts


def frames_to_maps(frames: Iterable[Sequence[np.ndarray]], spec: MapSpec) -> tuple[np.ndarray, FrameCounts]:
    """Maps (F, size, size) uint8 of a video's frames, in order, and the summed counts."""
    maps, total = [], FrameCounts()
    for people in frames:
        m, counts = frame_to_map(people, spec)
        maps.append(m)
        total.add(counts)
    if not maps:
        return np.zeros((0, spec.size, spec.size), dtype=np.uint8), total
    return np.stack(maps), total


def window_starts(video_lengths: Sequence[int], window: int) -> np.ndarray:
    """Start indices of all stride-1 windows into videos concatenated in this order (none crosses a video).

    A video of F frames contributes max(F - window + 1, 0) windows.
    """
    starts, offset = [], 0
    for n in video_lengths:
        if n >= window:
            starts.append(np.arange(offset, offset + n - window + 1, dtype=np.int64))
        offset += n
    return np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)


def sliding_windows(maps: np.ndarray, window: int) -> np.ndarray:
    """All stride-1 windows (F - window + 1, window, H, W) of one video's maps, as a read-only view."""
    if len(maps) < window:
        raise ValueError(f"{len(maps)} frames are fewer than one window of {window}")
    view = np.lib.stride_tricks.sliding_window_view(maps, window, axis=0)
    return np.moveaxis(view, -1, 1)
