"""Serving side of skeleton: OpenPose frames (or ready maps) -> per-window anomaly scores, flags and timeline.

Accepted uploads, told apart by their first bytes (the declared type only has to be one of them):
- a JSON list of per-frame OpenPose documents ``[{"people": [{"pose_keypoints_2d": [75 numbers]}]}, ...]``;
- a zip of OpenPose's per-frame files ``<video>_<frame:012d>_keypoints.json`` (ordered by frame number);
- an ``.npy`` array (frames, 28, 28) of skeleton maps in [0, 1] (binarised at 0.5).
"""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlops.inference.arrays import NPY_MAGIC, ZIP_MAGIC, npy_bytes, read_npy, read_zip_member
from mlops.inference.base import BadInput, Predictor, admit
from mlops.inference.model_files import rebuild
from mlops.tasks.skeleton import plots
from mlops.tasks.skeleton.model import MAP_SIZE, MODELS, score_batch, score_windows
from mlops.tasks.skeleton.preprocess import KeypointError, MapSpec, frames_to_maps, parse_openpose_frame

CONTENT_TYPES = (
    "application/json",
    "application/zip",
    "application/x-zip-compressed",
    "application/octet-stream",
    "application/x-npy",
)
FRAME_NUMBER = re.compile(r"(\d+)(?:_keypoints)?\.json$")
# Two minutes of 30 fps video per request: about 14 s of compute on one core (3.8 ms a frame, measured with 1,200
# frames; 18,000 empty frames took 173 s), within the service's default 30 s deadline.
MAX_FRAMES = 30 * 60 * 2
MAX_UNZIPPED_BYTES = 256 * 1024 * 1024
#: farthest joint coordinate accepted (px): no camera's frame is larger, and drawing beyond it overflows
MAX_COORDINATE = 1e6


def _sniff(data: bytes) -> str | None:
    if data.startswith(ZIP_MAGIC):
        return "zip"
    if data.startswith(NPY_MAGIC):
        return "npy"
    if data.lstrip()[:1] in (b"[", b"{"):
        return "json"
    return None


def _frames_from_json(data: bytes) -> list[list[np.ndarray]]:
    doc = _json(data, "upload")
    if isinstance(doc, dict) and "people" in doc:
        doc = [doc]  # one OpenPose file on its own is one frame
    if not isinstance(doc, list):
        raise BadInput("expected a JSON list of per-frame OpenPose objects, one per frame in order", status=422)
    if len(doc) > MAX_FRAMES:
        raise BadInput(f"{len(doc)} frames; the limit is {MAX_FRAMES} per request", status=413)
    try:
        return [parse_openpose_frame(frame, f"frame {i}") for i, frame in enumerate(doc)]
    except KeypointError as exc:
        raise BadInput(str(exc), status=422) from exc


def _frames_from_zip(data: bytes) -> list[list[np.ndarray]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BadInput(f"corrupt zip archive: {exc}", status=400) from exc
    with archive:
        entries = [
            info for info in archive.infolist()
            if not info.is_dir() and info.filename.endswith(".json") and "__MACOSX" not in info.filename
        ]  # fmt: skip
        if not entries:
            raise BadInput("the zip holds no per-frame OpenPose .json files", status=422)
        if len(entries) > MAX_FRAMES:
            raise BadInput(f"{len(entries)} frames; the limit is {MAX_FRAMES} per request", status=413)
        if sum(info.file_size for info in entries) > MAX_UNZIPPED_BYTES:
            raise BadInput(f"the zip unpacks to more than {MAX_UNZIPPED_BYTES} bytes", status=413)

        def order(info: zipfile.ZipInfo) -> tuple[int, str]:
            match = FRAME_NUMBER.search(Path(info.filename).name)
            return (int(match.group(1)) if match else -1, info.filename)

        frames = []
        for info in sorted(entries, key=order):
            raw = read_zip_member(archive, info, "zip", status=400)  # declared sizes bounded above
            doc = _json(raw, info.filename)
            try:
                frames.append(parse_openpose_frame(doc, info.filename))
            except KeypointError as exc:
                raise BadInput(str(exc), status=422) from exc
        return frames


def _json(data: bytes, what: str) -> Any:
    """Parsed JSON, or BadInput: malformed, nested deeper than Python recurses, or a number of thousands of digits
    (``int`` refuses those: a ValueError that is not a JSONDecodeError)."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadInput(f"{what}: malformed JSON ({type(exc).__name__}: {str(exc)[:200]})", status=400) from exc


def _maps_from_npy(data: bytes) -> np.ndarray:
    array = read_npy(data, MAX_FRAMES * MAP_SIZE * MAP_SIZE, "upload")
    if array.ndim != 3 or array.shape[1:] != (MAP_SIZE, MAP_SIZE) or len(array) == 0:
        raise BadInput(f"expected maps of shape (frames >= 1, {MAP_SIZE}, {MAP_SIZE}), got {array.shape}", status=422)
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise BadInput(f"maps must be numbers, got dtype {array.dtype}", status=422)
    if len(array) > MAX_FRAMES:
        raise BadInput(f"{len(array)} frames; the limit is {MAX_FRAMES} per request", status=413)
    values = array.astype(np.float32)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise BadInput("map values must lie in [0, 1] (binary skeleton maps)", status=422)
    return (values >= 0.5).astype(np.uint8)


def _check_coordinates(frames: list[list[np.ndarray]]) -> None:
    for i, people in enumerate(frames):
        for j, keypoints in enumerate(people):
            if np.abs(keypoints[:, :2]).max() > MAX_COORDINATE:
                raise BadInput(f"frame {i}, person {j}: joint coordinates beyond {MAX_COORDINATE:g} px", status=422)


def flagged_spans(ends: np.ndarray, flags: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive flagged windows as (first, last) window end frame."""
    spans, start = [], None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append((int(ends[start]), int(ends[i - 1])))
            start = None
    return spans


class SkeletonPredictor(Predictor):
    """Per-window anomaly scores of uploaded pose sequences; read-only after construction (thread-safe)."""

    accepted_content_types = CONTENT_TYPES
    skips_explanation = True
    explanation_fields = ("timeline_png",)

    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]):
        self.model = model.eval()
        extra = spec["extra"]
        self.window = int(extra["window"])
        self.map_spec = MapSpec(**extra["map"])
        # Set by the task's calibration after training; without it scores are served unflagged.
        self.threshold = float(extra["threshold"]) if extra.get("threshold") is not None else None

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """Anomaly scores (N,) of windows (N, T, 28, 28)."""
        x = torch.as_tensor(np.asarray(batch, dtype=np.float32))
        return score_batch(self.model, x).numpy()

    def warmup_input(self) -> np.ndarray:
        return np.zeros((1, self.window, MAP_SIZE, MAP_SIZE), dtype=np.float32)

    def warm_up(self) -> None:
        """The whole upload path once at model load, timeline drawing included: matplotlib is imported now, not
        on the first request."""
        super().warm_up()
        self.predict_upload(npy_bytes(np.zeros((self.window, MAP_SIZE, MAP_SIZE), np.uint8)), "application/x-npy")

    def maps_from_upload(self, data: bytes) -> tuple[np.ndarray, dict[str, int]]:
        """Binary maps (F, 28, 28) of an upload and what preprocessing worked around; BadInput (4xx)."""
        if not data:
            raise BadInput("empty upload: send OpenPose JSON frames, a zip of them, or an .npy of maps", 400)
        kind = _sniff(data)
        if kind is None:
            raise BadInput("not JSON, a zip or an .npy array (checked by its first bytes)", status=415)
        if kind == "npy":
            maps = _maps_from_npy(data)
            return maps, {"frames": len(maps)}
        frames = _frames_from_json(data) if kind == "json" else _frames_from_zip(data)
        _check_coordinates(frames)
        maps, counts = frames_to_maps(frames, self.map_spec)
        return maps, counts.to_json()

    def predict_upload(self, data: bytes, content_type: str, explain: bool = True) -> dict[str, Any]:
        """Per-window scores and flags of one upload, with their timeline drawn (``explain=False``: not drawn)."""
        maps, counts = self.maps_from_upload(data)
        admit(len(maps), "frames")
        if len(maps) < self.window:
            raise BadInput(
                f"{len(maps)} frame(s) sent; one window of the model needs {self.window} consecutive frames",
                status=422,
            )
        starts = np.arange(len(maps) - self.window + 1)
        scores, _ = score_windows(self.model, maps, starts, self.window)
        ends = starts + self.window - 1
        flags = None if self.threshold is None else scores > self.threshold
        answer = {
            "window": self.window,
            "n_frames": int(len(maps)),
            "n_windows": int(len(scores)),
            "window_end_frames": ends.tolist(),
            "scores": [round(float(s), 6) for s in scores],
            "threshold": self.threshold,
            "flags": None if flags is None else flags.tolist(),
            "n_flagged": None if flags is None else int(flags.sum()),
            "flagged_spans": None if flags is None else flagged_spans(ends, flags),
            "preprocessing": counts,
            "explanation": (
                f"score = reconstruction error of each {self.window}-frame window (higher = less like the normal "
                "work seen in training), placed at the window's last frame; flagged above the threshold chosen "
                "on held-out normal videos"
            ),
        }
        if explain:
            png = plots.score_timeline([("upload", ends, scores, [])], self.threshold, None)
            answer["timeline_png"] = base64.b64encode(png).decode()
        return answer


def load(weights_path: Path, spec: dict[str, Any]) -> SkeletonPredictor:
    """Rebuild the model from its spec and state_dict (read with ``weights_only=True``) for serving."""
    return SkeletonPredictor(rebuild(MODELS, weights_path, spec), spec)
