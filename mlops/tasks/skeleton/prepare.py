"""skeleton's prepared data: the normal videos split by video into train/val (the test videos are named by
videos.csv), training videos augmented, every frame drawn as a binary map, and stride-1 windows indexed.

Per split: ``x`` (frames, 28, 28) uint8 maps, ``y`` 0/1 per frame, ``groups`` (video), ``ids``
(``<video>:<frame>[:aug<k>]``), ``frame`` (number), ``actions`` per frame and ``starts`` (first frame of each window;
no window crosses a video). The meta records the window, the map rendering and what preprocessing worked around.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mlops.data.arrays import load_array, read_meta, save_split, write_meta
from mlops.data.split import split_groups
from mlops.tasks.skeleton.layout import frame_files, frame_labels, load_video, read_spans, read_videos, videos_of_role
from mlops.tasks.skeleton.model import MAP_SIZE
from mlops.tasks.skeleton.params import InputParams, SkeletonParams
from mlops.tasks.skeleton.preprocess import FrameCounts, MapSpec, frames_to_maps, window_starts


def map_spec(p: InputParams) -> MapSpec:
    return MapSpec(
        canvas_width=p.canvas_width,
        canvas_height=p.canvas_height,
        crop=p.crop,
        size=p.size,
        line_width_px=p.line_width_px,
        binarize_threshold=p.binarize_threshold,
        min_confidence=p.min_confidence,
    )


def split_videos(normal: list[str], test: list[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Sorted video names per split: the test videos as named, the normal ones (one worker's recording each)
    split group-aware into train and val, at least one in each."""
    groups = np.asarray(normal + test, dtype=str)
    rows = split_groups(groups, val_fraction, 0.0, seed, fixed_test=test)
    return {split: sorted(str(v) for v in groups[index]) for split, index in rows.items()}


def jitter_people(
    frames: list[list[np.ndarray]], rng: np.random.Generator, jitter_px: float, scale_jitter: float
) -> list[list[np.ndarray]]:
    """An augmented copy of a video: per-joint pixel jitter and one size change (as if a step nearer or
    further from the camera), about each person's neck; undetected joints stay (0, 0, 0)."""
    scale = rng.uniform(1 - scale_jitter, 1 + scale_jitter)
    out = []
    for people in frames:
        moved = []
        for kp in people:
            kp = kp.copy()
            seen = kp[:, 2] > 0
            centre = kp[1, :2] if seen[1] else (kp[seen, :2].mean(axis=0) if seen.any() else np.zeros(2))
            kp[seen, :2] = centre + (kp[seen, :2] - centre) * scale + rng.normal(0, jitter_px, (int(seen.sum()), 2))
            moved.append(kp)
        out.append(moved)
    return out


def prepare(raw_dir: Path, out_dir: Path, params: SkeletonParams, seed: int) -> dict[str, int]:
    """Write the prepared splits; returns the number of windows per split."""
    videos, spans = read_videos(raw_dir), read_spans(raw_dir)
    spec, window = map_spec(params.input), params.input.window
    split = split_videos(
        videos_of_role(videos, "train"), videos_of_role(videos, "test"), params.split.val_fraction, seed
    )
    a, rng = params.augment, np.random.default_rng(seed)

    sizes, frames_per_split, counts_per_split = {}, {}, {}
    for name in ("train", "val", "test"):
        maps, y, groups, ids, numbers, actions, lengths = [], [], [], [], [], [], []
        counts = FrameCounts()
        for video in split[name]:
            people = load_video(raw_dir, video)
            labels, acts = frame_labels(spans, video, len(people))
            frame_numbers = [n for n, _ in frame_files(raw_dir, video)]
            copies = a.copies if name == "train" else 1
            for copy in range(copies):
                source = people if copy == 0 else jitter_people(people, rng, a.joint_jitter_px, a.scale_jitter)
                video_maps, video_counts = frames_to_maps(source, spec)
                counts.add(video_counts)
                suffix = "" if copy == 0 else f":aug{copy}"
                maps.append(video_maps)
                y.append(labels)
                groups += [video] * len(people)
                ids += [f"{video}:{n}{suffix}" for n in frame_numbers]
                numbers.append(np.asarray(frame_numbers, dtype=np.int64))
                actions.append(acts)
                lengths.append(len(people))
        starts = window_starts(lengths, window)
        if name != "test" and len(starts) == 0:
            raise ValueError(f"no {name} video has the {window} frames of one window")
        empty = np.zeros((0, MAP_SIZE, MAP_SIZE), dtype=np.uint8)
        save_split(
            out_dir,
            name,
            x=np.concatenate(maps) if maps else empty,
            y=np.concatenate(y) if y else np.zeros(0, dtype=np.int64),
            groups=np.asarray(groups, dtype=str),
            ids=np.asarray(ids, dtype=str),
            frame=np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int64),
            actions=np.concatenate(actions).astype(str) if actions else np.zeros(0, dtype=str),
            starts=starts,
        )
        sizes[name], frames_per_split[name] = len(starts), int(sum(lengths))
        counts_per_split[name] = counts.to_json()
    write_meta(
        out_dir,
        {
            "task": "skeleton",
            "window": window,
            "map": spec.to_json(),
            "sizes": sizes,
            "frames": frames_per_split,
            "preprocessing": counts_per_split,
            "videos": split,
        },
    )
    return sizes


class WindowDataset(Dataset):
    """Stride-1 windows (T, 28, 28) uint8 of one split, sliced on demand from the frame maps; the target of a
    window is the window itself (reconstruction)."""

    def __init__(self, maps: torch.Tensor, starts: torch.Tensor, window: int):
        self.maps, self.starts, self.window = maps, starts, window

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        w = self.maps[s : s + self.window]
        return w, w


def dataset(prepared_dir: Path, split: str) -> WindowDataset:
    maps = torch.from_numpy(load_array(prepared_dir, split, "x"))
    starts = torch.from_numpy(load_array(prepared_dir, split, "starts"))
    return WindowDataset(maps, starts, int(read_meta(prepared_dir)["window"]))


def example_input(prepared_dir: Path) -> np.ndarray:
    """The first two validation windows, as float32."""
    val = dataset(prepared_dir, "val")
    return torch.stack([val[i][0] for i in range(min(2, len(val)))]).numpy().astype(np.float32)
