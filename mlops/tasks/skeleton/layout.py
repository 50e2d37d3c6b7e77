"""skeleton's real-data layout, and its one reader: what ``simulate`` writes, ``ingest`` copies and everything
else reads.

    videos.csv   video, split_role (train|test)[, person, n_frames, fps, width, height]
                 one row per video; train = normal behaviour only (split into train/val by video),
                 test = the videos evaluated (normal and anomalous behaviour interleaved)
    spans.csv    video, start_frame, end_frame (inclusive), action: the anomalous frame spans; may have no rows
    <video>/<video>_<frame:012d>_keypoints.json   one OpenPose (BODY_25) ``--write_json`` file per frame

A frame is identified as ``<video>:<frame>``; frames outside every span are normal (action 'normal').
Both tables are read with the platform's one table reader (``mlops.data.layout.read_labels_table``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mlops.data.layout import read_labels_table
from mlops.tasks.skeleton.preprocess import KeypointError, read_frame_file

VIDEOS_FILE, SPANS_FILE = "videos.csv", "spans.csv"
VIDEO_COLUMNS = ("video", "split_role")
SPAN_COLUMNS = ("video", "start_frame", "end_frame", "action")
#: the header ``simulate`` writes: the required columns, then what a camera's recording adds
VIDEO_HEADER = (*VIDEO_COLUMNS, "person", "n_frames", "fps", "width", "height")
ROLES = ("train", "test")
NORMAL = "normal"
FRAME_FILE = re.compile(r"_(\d+)_keypoints\.json$")


def frame_path(root: Path, video: str, frame: int) -> Path:
    """Where OpenPose's ``--write_json`` puts one frame of one video (inside the video's folder)."""
    return root / video / f"{video}_{frame:012d}_keypoints.json"


def read_videos(raw_dir: Path) -> pd.DataFrame:
    """videos.csv: one row per video with its split_role (train = normal behaviour only, test)."""
    return read_labels_table(raw_dir, VIDEO_COLUMNS, "skeleton", {"video": str}, VIDEOS_FILE)


def read_spans(raw_dir: Path) -> pd.DataFrame:
    """spans.csv: the anomalous frame spans (end_frame inclusive) with their action; may have no rows."""
    return read_labels_table(raw_dir, SPAN_COLUMNS, "skeleton", {"video": str}, SPANS_FILE)


def videos_of_role(videos: pd.DataFrame, role: str) -> list[str]:
    """The sorted names of the videos with ``split_role`` ``role``."""
    return sorted(videos.loc[videos["split_role"] == role, "video"].astype(str))


def frame_files(raw_dir: Path, video: str) -> list[tuple[int, Path]]:
    """(frame number, path) of a video's ``<video>_<frame>_keypoints.json`` files, in frame order."""
    folder = raw_dir / video
    found = []
    for path in folder.glob("*_keypoints.json"):
        match = FRAME_FILE.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def frame_labels(spans: pd.DataFrame, video: str, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame 0/1 (inside an anomalous span) and the action name ('normal' outside spans)."""
    labels = np.zeros(n_frames, dtype=np.int64)
    actions = np.full(n_frames, NORMAL, dtype=object)
    for row in spans[spans["video"] == video].itertuples():
        start, end = max(int(row.start_frame), 0), min(int(row.end_frame), n_frames - 1)
        if start <= end:
            labels[start : end + 1] = 1
            actions[start : end + 1] = str(row.action)
    return labels, actions


def load_video(raw_dir: Path, video: str) -> list[list[np.ndarray]]:
    """The people of every frame of a validated video, in frame order."""
    try:
        return [read_frame_file(path) for _, path in frame_files(raw_dir, video)]
    except KeypointError as exc:
        raise ValueError(f"{exc} (validation should have caught this: run `mlops data validate`)") from exc


def ingest(src_dir: Path, out_dir: Path) -> int:
    """Copy a user's videos (this layout) into ``out_dir``; returns the frame count. ValueError names a video
    without its folder of OpenPose files."""
    videos, spans = read_videos(src_dir), read_spans(src_dir)
    missing = [v for v in videos["video"] if not (src_dir / v).is_dir()]
    if missing:
        raise ValueError(f"{len(missing)} video(s) in videos.csv have no folder of OpenPose JSON: {missing[:5]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for video in videos["video"]:
        files = frame_files(src_dir, video)
        if not files:
            raise ValueError(f"{src_dir / video} holds no <video>_<frame>_keypoints.json files")
        (out_dir / video).mkdir(parents=True, exist_ok=True)
        for _, path in files:
            shutil.copy2(path, out_dir / video / path.name)
        total += len(files)
    videos.to_csv(out_dir / VIDEOS_FILE, index=False)
    spans.to_csv(out_dir / SPANS_FILE, index=False)
    return total
