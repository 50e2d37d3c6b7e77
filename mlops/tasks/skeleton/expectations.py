"""skeleton's data checks: one manifest row per frame, and the Great Expectations suite over it.

The manifest never raises on a broken file: what a broken file looks like is a data finding that the suite
names frame by frame (``frame_id`` = ``<video>:<frame>``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.tasks.skeleton.layout import ROLES, frame_files, frame_labels, read_spans, read_videos
from mlops.tasks.skeleton.params import SkeletonParams
from mlops.tasks.skeleton.preprocess import N_JOINTS, KeypointError, parse_openpose_frame, select_person
from mlops.validation.columns import Columns, declare, leakage_and_duplicates

# label 1 = inside an anomalous span; the split keeps videos together; drift is watched on detection quality
COLUMNS = Columns(sample="frame_id", label="label", intensity="missing_joint_share", group="video")


def _lenient_frame_stats(path: Path | None) -> dict[str, Any]:
    """Statistics of one frame file that never raise: what a broken file looks like is a data finding."""
    stats: dict[str, Any] = {"parse_ok": False, "n_people": 0, "bad_people": 0, "n_joints": np.nan}
    for key in ("x_min", "x_max", "y_min", "y_max", "conf_min", "conf_max", "detected_joints", "missing_joint_share"):
        stats[key] = np.nan
    if path is None:
        return stats
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return stats
    people = doc.get("people") if isinstance(doc, dict) else None
    if not isinstance(people, list):
        return stats
    stats.update(parse_ok=True, n_people=len(people))
    good, joint_counts = [], []
    for person in people:
        keypoints = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        joint_counts.append(len(keypoints) / 3 if isinstance(keypoints, list) else 0.0)
        try:
            good.extend(parse_openpose_frame({"people": [person]}))
        except KeypointError:
            stats["bad_people"] += 1
    if joint_counts:
        # The count furthest from 25 is the one a report should show.
        stats["n_joints"] = max(joint_counts, key=lambda n: abs(n - N_JOINTS))
    if good:
        everyone = np.concatenate(good)
        detected = everyone[everyone[:, 2] > 0]
        stats.update(conf_min=float(everyone[:, 2].min()), conf_max=float(everyone[:, 2].max()))
        stats["detected_joints"] = int((select_person(good)[:, 2] > 0).sum())
        stats["missing_joint_share"] = 1.0 - stats["detected_joints"] / N_JOINTS
        # the parsed keypoints, not the file bytes: the same pose written twice is the same sample
        stats["content_hash"] = hashlib.sha256(np.ascontiguousarray(everyone, dtype=np.float64).tobytes()).hexdigest()
        if len(detected):
            stats.update(
                x_min=float(detected[:, 0].min()),
                x_max=float(detected[:, 0].max()),
                y_min=float(detected[:, 1].min()),
                y_max=float(detected[:, 1].max()),
            )
    return stats


def manifest(raw_dir: Path) -> pd.DataFrame:
    """One row per frame (frame_id = '<video>:<frame>') with per-video and dataset-wide columns."""
    videos, spans = read_videos(raw_dir), read_spans(raw_dir)
    known = set(videos["video"])
    unknown_spans = int((~spans["video"].isin(known)).sum())
    n_train_videos = int((videos["split_role"] == "train").sum())
    rows = []
    for video in videos.to_dict("records"):
        name = str(video["video"])
        files = frame_files(raw_dir, name) if (raw_dir / name).is_dir() else []
        numbers = [n for n, _ in files]
        n = len(files)
        declared = video.get("n_frames")
        own = spans[spans["video"] == name]
        outside = int(
            ((own["start_frame"] < 0) | (own["end_frame"] >= n) | (own["start_frame"] > own["end_frame"])).sum()
        )
        labels, actions = frame_labels(spans, name, n)
        common = {
            "video": name,
            "split_role": video["split_role"],
            "video_frames": n,
            "frame_count_matches": declared is None or pd.isna(declared) or int(declared) == n,
            "frames_contiguous": numbers == list(range(n)),
            "spans_outside_video": outside,
            "spans_unknown_video": unknown_spans,
            "n_train_videos": n_train_videos,
        }
        if not files:
            rows.append({"frame_id": f"{name}:missing", "frame": -1, **common, **_lenient_frame_stats(None)})
            continue
        for i, (number, path) in enumerate(files):
            stats = _lenient_frame_stats(path)
            rows.append(
                {"frame_id": f"{name}:{number}", "frame": number, **common, **stats,
                 "label": int(labels[i]), "action": actions[i]}
            )  # fmt: skip
    table = pd.DataFrame(rows)
    if "label" not in table:
        table["label"] = 0
    table["label"] = table["label"].fillna(0).astype(int)
    table["empty_fraction"] = table.groupby("video")["n_people"].transform(lambda s: float((s == 0).mean()))
    table["abnormal_in_train"] = (table["split_role"] == "train") & (table["label"] == 1)
    for column in ("missing_joint_share", "content_hash"):
        if column not in table:  # no frame had a person: still a table the suite can judge
            table[column] = np.nan
    table["video_missing_joint_share"] = table.groupby("video")["missing_joint_share"].transform("mean")
    return declare(table, COLUMNS)


def expectations(params: SkeletonParams) -> list[Any]:
    import great_expectations as gx

    v = params.validation
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeUnique(column="frame_id"),
        e.ExpectColumnValuesToBeInSet(column="split_role", value_set=list(ROLES)),
        e.ExpectColumnValuesToBeInSet(column="parse_ok", value_set=[True]),
        # joints per frame: every detected person has BODY_25's 25 (x, y, confidence) triples
        e.ExpectColumnValuesToBeBetween(column="bad_people", max_value=0),
        e.ExpectColumnValuesToBeInSet(column="n_joints", value_set=[N_JOINTS]),
        e.ExpectColumnValuesToBeBetween(column="conf_min", min_value=0, max_value=1),
        e.ExpectColumnValuesToBeBetween(column="conf_max", min_value=0, max_value=1),
        e.ExpectColumnValuesToBeBetween(column="x_min", min_value=0, max_value=v.max_x),
        e.ExpectColumnValuesToBeBetween(column="x_max", min_value=0, max_value=v.max_x),
        e.ExpectColumnValuesToBeBetween(column="y_min", min_value=0, max_value=v.max_y),
        e.ExpectColumnValuesToBeBetween(column="y_max", min_value=0, max_value=v.max_y),
        # frame counts: enough for a window, as declared, without gaps
        e.ExpectColumnValuesToBeBetween(column="video_frames", min_value=v.min_frames_per_video),
        e.ExpectColumnValuesToBeInSet(column="frame_count_matches", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="frames_contiguous", value_set=[True]),
        e.ExpectColumnValuesToBeBetween(column="empty_fraction", max_value=v.max_empty_frame_fraction),
        # labels: spans inside their video, training on normal behaviour only, anomalies to test on
        e.ExpectColumnValuesToBeBetween(column="spans_outside_video", max_value=0),
        e.ExpectColumnValuesToBeBetween(column="spans_unknown_video", max_value=0),
        e.ExpectColumnValuesToBeInSet(column="abnormal_in_train", value_set=[False]),
        e.ExpectColumnDistinctValuesToContainSet(column="label", value_set=[0, 1]),
        e.ExpectColumnValuesToBeBetween(column="n_train_videos", min_value=v.min_train_videos),
        # detection quality, and no pose twice (a frozen or copied recording) or in two videos (leakage)
        e.ExpectColumnValuesToBeBetween(column="video_missing_joint_share", max_value=v.max_missing_joint_share),
        *leakage_and_duplicates(COLUMNS),
    ]
