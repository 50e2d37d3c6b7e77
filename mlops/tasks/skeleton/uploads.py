"""skeleton's upload declarations: a video's OpenPose files as a zip, and the pose uploads its service refuses."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from mlops.tasks.base import BadUpload, Upload
from mlops.tasks.skeleton.inference import MAX_FRAMES
from mlops.tasks.skeleton.layout import frame_files, read_videos
from mlops.tasks.skeleton.model import MAP_SIZE
from mlops.tasks.upload_cases import empty, foreign_content_type, npy_bytes


def _first_video(raw_dir: Path) -> list[Path]:
    """The per-frame OpenPose files of the first video ``videos.csv`` lists, in frame order."""
    video = str(read_videos(raw_dir)["video"].iloc[0])
    frames = [path for _, path in frame_files(raw_dir, video)]
    if not frames:
        raise FileNotFoundError(f"no *_keypoints.json under {raw_dir / video}")
    return frames


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def example_upload(raw_dir: Path) -> Upload:
    """The video's folder as OpenPose's ``--write_json`` left it, zipped."""
    frames = _first_video(raw_dir)
    data = _zip({f"{p.parent.name}/{p.name}": p.read_bytes() for p in frames})
    return Upload(data, "application/zip", f"{frames[0].parent.name}.zip")


def bad_uploads(raw_dir: Path) -> list[BadUpload]:
    example = example_upload(raw_dir)
    docs = [json.loads(p.read_text()) for p in _first_video(raw_dir)]
    person = next(i for i, doc in enumerate(docs) if doc["people"])  # a frame where somebody was detected
    short = json.loads(json.dumps(docs))
    short[person]["people"][0]["pose_keypoints_2d"] = short[person]["people"][0]["pose_keypoints_2d"][:54]
    nan = json.loads(json.dumps(docs))
    nan[person]["people"][0]["pose_keypoints_2d"][0] = float("nan")
    far = json.loads(json.dumps(docs))
    far[person]["people"][0]["pose_keypoints_2d"][:6] = [1e20, -1e20, 1.0, 1e20, 5.0, 1.0]  # nose, neck: finite
    words = json.loads(json.dumps(docs))
    words[person]["people"][0]["pose_keypoints_2d"] = ["a"] * 75
    bad_member = _zip({"v/v_000000000000_keypoints.json": b"{"})
    js, npy = "application/json", "application/x-npy"
    return [
        empty(js),
        foreign_content_type(example),
        BadUpload("gif", b"GIF89a....", js, 415, ("not JSON, a zip or an .npy",)),
        BadUpload("malformed-json", b'[{"people": [', js, 400, ("malformed JSON",)),
        BadUpload("not-a-list", json.dumps({"frames": 3}).encode(), js, 422, ("list of per-frame",)),
        BadUpload("wrong-joints", json.dumps(short).encode(), js, 422, (f"frame {person}, person 0: 54 numbers",)),
        BadUpload("non-numbers", json.dumps(words).encode(), js, 422, ("non-numbers",)),
        # Python's json (and many clients) write NaN literals; the parser accepts them, the task must not.
        BadUpload("nan", json.dumps(nan).encode(), js, 422, ("NaN",)),
        BadUpload("far-coordinates", json.dumps(far).encode(), js, 422, (f"frame {person}, person 0", "coordinates")),
        BadUpload("too-few-frames", json.dumps(docs[:1]).encode(), js, 422, ("1 frame(s) sent", "window")),
        BadUpload("too-many-frames", b"[" + b"{}," * MAX_FRAMES + b"{}]", js, 413, (f"the limit is {MAX_FRAMES}",)),
        BadUpload("corrupt-zip", b"PK\x03\x04broken", "application/zip", 400, ("corrupt zip",)),
        BadUpload("zip-without-json", _zip({"notes.txt": b"hi"}), "application/zip", 422, ("no per-frame",)),
        BadUpload(
            "zip-malformed-json", bad_member, "application/zip", 400, ("v_000000000000_keypoints.json: malformed",)
        ),
        BadUpload("npy-shape", npy_bytes(np.zeros((40, 32, 32), np.float32)), npy, 422, (f"{MAP_SIZE}, {MAP_SIZE})",)),
        BadUpload("npy-range", npy_bytes(np.full((40, MAP_SIZE, MAP_SIZE), 3.0, np.float32)), npy, 422, ("[0, 1]",)),
        BadUpload("npy-pickled", npy_bytes(np.array([{"a": 1}], dtype=object)), npy, 422, ("no objects",)),
    ]
