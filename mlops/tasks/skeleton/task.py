"""skeleton as a platform Task: OpenPose per-frame JSON of factory videos -> windows of binary skeleton maps
-> reconstruction-based anomaly scores, trained on normal behaviour only.

Unsupervised on the platform's terms: ``dataset()`` yields (window, window) so the target of a sample is
its own input; the loss is the task's negative ELBO (see ``model.py`` for the packed output), and the
validation metrics are computed on held-out normal videos. Labels (anomalous spans) are used only to
validate the data and to evaluate on the test video(s).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from mlops.config import Gates, Strict
from mlops.data.arrays import load_array, read_meta, save_split, write_meta
from mlops.tasks import register_task
from mlops.tasks.base import Evaluation, ModelSpec, Task
from mlops.tasks.skeleton import plots, uploads
from mlops.tasks.skeleton.model import MAP_SIZE, MODELS, negative_elbo, score_windows, window_scores
from mlops.tasks.skeleton.preprocess import (
    N_JOINTS,
    FrameCounts,
    KeypointError,
    MapSpec,
    frames_to_maps,
    parse_openpose_frame,
    read_frame_file,
    select_person,
    window_starts,
)
from mlops.tasks.skeleton.simulate import simulate_videos
from mlops.validation.columns import Columns, declare, leakage_and_duplicates
from mlops.validation.drift import DriftParams

VIDEO_COLUMNS = ("video", "split_role")
SPAN_COLUMNS = ("video", "start_frame", "end_frame", "action")
ROLES = ("train", "test")
NORMAL = "normal"
FRAME_FILE = re.compile(r"_(\d+)_keypoints\.json$")

Fraction = Annotated[float, Field(ge=0, le=1)]


class SimulateParams(Strict):
    n_train_videos: Annotated[int, Field(ge=1)]
    train_frames_per_video: Annotated[int, Field(ge=1)]
    n_test_videos: Annotated[int, Field(ge=1)]
    test_frames_per_video: Annotated[int, Field(ge=1)]
    fps: Annotated[int, Field(ge=1)]
    width: int
    height: int
    abnormal_fraction: Fraction
    segment_seconds_min: float
    segment_seconds_max: float
    joint_noise_px: float
    missed_joint_prob: Fraction
    weak_joint_prob: Fraction
    no_person_prob: Fraction
    ghost_person_prob: Fraction


class ValidationParams(Strict):
    min_train_videos: Annotated[int, Field(ge=2)]
    min_frames_per_video: int
    max_x: float
    max_y: float
    max_empty_frame_fraction: Fraction
    #: mean share of the 25 joints OpenPose did not detect, per video (frames with a person)
    max_missing_joint_share: Fraction
    drift: DriftParams


# label 1 = inside an anomalous span; the split keeps videos together; drift is watched on detection quality
COLUMNS = Columns(sample="frame_id", label="label", intensity="missing_joint_share", group="video")


class SplitParams(Strict):
    val_fraction: Annotated[float, Field(gt=0, lt=1)]


class InputParams(Strict):
    canvas_width: int
    canvas_height: int
    crop: int
    size: Literal[28]  # the models' input size (the study's)
    window: Annotated[int, Field(ge=2)]
    line_width_px: Annotated[int, Field(ge=1)]
    binarize_threshold: Annotated[float, Field(gt=0, le=1)]
    min_confidence: Fraction


class AugmentParams(Strict):
    copies: Annotated[int, Field(ge=1)]
    joint_jitter_px: float
    scale_jitter: Annotated[float, Field(ge=0, lt=1)]


class TrainParams(Strict):
    epochs: int
    patience: int


class EvaluateParams(Strict):
    window_label: Literal["last", "majority"]
    false_alarm_rate: Annotated[float, Field(gt=0, lt=1)]
    embedding: Literal["tsne", "pca"]
    embedding_max_points: Annotated[int, Field(ge=10)]


class SkeletonParams(Strict):
    simulate: SimulateParams
    validation: ValidationParams
    split: SplitParams
    input: InputParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
    gates: Gates


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


# --- the real-data layout -------------------------------------------------------------------------


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"{path} is missing: the skeleton layout needs {path.name} with columns {columns}")
    table = pd.read_csv(path, dtype={"video": str})
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; expected {columns}")
    return table


def read_videos(raw_dir: Path) -> pd.DataFrame:
    """videos.csv: one row per video with its split_role (train = normal behaviour only, test)."""
    return _read_table(raw_dir / "videos.csv", VIDEO_COLUMNS)


def read_spans(raw_dir: Path) -> pd.DataFrame:
    """spans.csv: the anomalous frame spans (end_frame inclusive) with their action; may have no rows."""
    return _read_table(raw_dir / "spans.csv", SPAN_COLUMNS)


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


def model_kwargs(name: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of model ``name`` taken from a hyperparameter set (a trial or the best params);
    KeyError names a missing one."""
    kwargs: dict[str, Any] = {"latent": int(hparams["latent"]), "width": int(hparams["width"])}
    if name == "lstm_vae":
        kwargs["hidden"] = int(hparams["hidden"])
        kwargs["window_latent"] = bool(hparams["window_latent"])
    if name in ("lstm_vae", "vae"):
        kwargs["free_bits"] = float(hparams["free_bits"])
    return kwargs


def _split_videos(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Group-aware train/val split of the normal training videos (a video is one worker's recording)."""
    if len(names) < 2:
        raise ValueError(f"need at least 2 training videos to hold one out for validation, found {len(names)}")
    order = [str(v) for v in np.random.default_rng(seed).permutation(sorted(names))]
    n_val = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


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


@register_task
class SkeletonTask(Task):
    name = "skeleton"
    Params = SkeletonParams
    inference_module = "mlops.tasks.skeleton.inference"
    models = MODELS

    # --- data ---------------------------------------------------------------------------------
    def simulate(self, out_dir: Path, params: SkeletonParams, seed: int, progress: Callable[[int], None]) -> int:
        return simulate_videos(out_dir, seed=seed, progress=progress, **params.simulate.model_dump())

    def simulated_samples(self, params: SkeletonParams) -> int:
        p = params.simulate
        return p.n_train_videos * p.train_frames_per_video + p.n_test_videos * p.test_frames_per_video

    def ingest(self, src_dir: Path, out_dir: Path) -> int:
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
        videos.to_csv(out_dir / "videos.csv", index=False)
        spans.to_csv(out_dir / "spans.csv", index=False)
        return total

    def manifest(self, raw_dir: Path) -> pd.DataFrame:
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

    def expectations(self, params: SkeletonParams) -> list[Any]:
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

    def _load_video(self, raw_dir: Path, video: str) -> list[list[np.ndarray]]:
        try:
            return [read_frame_file(path) for _, path in frame_files(raw_dir, video)]
        except KeypointError as exc:
            raise ValueError(f"{exc} (validation should have caught this: run `mlops data validate`)") from exc

    def prepare(self, raw_dir: Path, out_dir: Path, params: SkeletonParams, seed: int) -> dict[str, int]:
        videos, spans = read_videos(raw_dir), read_spans(raw_dir)
        spec, window = map_spec(params.input), params.input.window
        normal = sorted(videos.loc[videos["split_role"] == "train", "video"].astype(str))
        train_videos, val_videos = _split_videos(normal, params.split.val_fraction, seed)
        test_videos = sorted(videos.loc[videos["split_role"] == "test", "video"].astype(str))
        a, rng = params.augment, np.random.default_rng(seed)

        sizes, frames_per_split, counts_per_split = {}, {}, {}
        for split, names in (("train", train_videos), ("val", val_videos), ("test", test_videos)):
            maps, y, groups, ids, numbers, actions, lengths = [], [], [], [], [], [], []
            counts = FrameCounts()
            for video in names:
                people = self._load_video(raw_dir, video)
                labels, acts = frame_labels(spans, video, len(people))
                frame_numbers = [n for n, _ in frame_files(raw_dir, video)]
                copies = a.copies if split == "train" else 1
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
            if split != "test" and len(starts) == 0:
                raise ValueError(f"no {split} video has the {window} frames of one window")
            empty = np.zeros((0, MAP_SIZE, MAP_SIZE), dtype=np.uint8)
            save_split(
                out_dir,
                split,
                x=np.concatenate(maps) if maps else empty,
                y=np.concatenate(y) if y else np.zeros(0, dtype=np.int64),
                groups=np.asarray(groups, dtype=str),
                ids=np.asarray(ids, dtype=str),
                frame=np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int64),
                actions=np.concatenate(actions).astype(str) if actions else np.zeros(0, dtype=str),
                starts=starts,
            )
            sizes[split], frames_per_split[split] = len(starts), int(sum(lengths))
            counts_per_split[split] = counts.to_json()
        write_meta(
            out_dir,
            {
                "task": self.name,
                "window": window,
                "map": spec.to_json(),
                "sizes": sizes,
                "frames": frames_per_split,
                "preprocessing": counts_per_split,
                "videos": {"train": train_videos, "val": val_videos, "test": test_videos},
            },
        )
        return sizes

    def dataset(self, prepared_dir: Path, split: str) -> WindowDataset:
        maps = torch.from_numpy(load_array(prepared_dir, split, "x"))
        starts = torch.from_numpy(load_array(prepared_dir, split, "starts"))
        return WindowDataset(maps, starts, int(read_meta(prepared_dir)["window"]))

    # --- model --------------------------------------------------------------------------------
    def build_model(self, hparams: dict[str, Any], prepared_dir: Path) -> tuple[nn.Module, ModelSpec]:
        name = str(hparams["model"])
        kwargs = model_kwargs(name, hparams)
        meta = read_meta(prepared_dir)
        spec = ModelSpec(
            task=self.name,
            model=name,
            model_kwargs=kwargs,
            inference_module=self.inference_module,
            extra={"window": int(meta["window"]), "map": meta["map"]},
        )
        return self.models.build(name, **kwargs), spec

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return negative_elbo(outputs, targets)["loss"]

    def val_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Negative ELBO terms per frame (nats) and the mean anomaly score on held-out normal videos."""
        terms = negative_elbo(outputs, targets)
        metrics = {k: float(v) for k, v in terms.items()}
        metrics["anomaly_score"] = float(window_scores(outputs, targets).mean())
        return metrics

    def example_input(self, prepared_dir: Path) -> np.ndarray:
        val = self.dataset(prepared_dir, "val")
        return torch.stack([val[i][0] for i in range(min(2, len(val)))]).numpy().astype(np.float32)

    # What its service answers and refuses (mlops/tasks/skeleton/uploads.py)
    example_upload = staticmethod(uploads.example_upload)
    bad_uploads = staticmethod(uploads.bad_uploads)

    # --- evaluation ---------------------------------------------------------------------------
    def _scores(
        self, model: nn.Module, prepared_dir: Path, split: str, with_latents: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        maps, starts = load_array(prepared_dir, split, "x"), load_array(prepared_dir, split, "starts")
        window = int(read_meta(prepared_dir)["window"])
        scores, latents = score_windows(model, maps, starts, window, with_latents=with_latents)
        return starts, scores, latents

    def serving_threshold(self, model: nn.Module, prepared_dir: Path, params: SkeletonParams) -> float:
        """The score above which a window is flagged: the (1 - false_alarm_rate) quantile of the scores of
        held-out normal windows (the val split), so normal work raises that share of false alarms."""
        _, scores, _ = self._scores(model, prepared_dir, "val")
        return float(np.quantile(scores, 1 - params.evaluate.false_alarm_rate))

    def calibrate(self, model: nn.Module, spec: ModelSpec, prepared_dir: Path, params: SkeletonParams) -> ModelSpec:
        """The spec with the serving threshold in ``extra`` (to be called after training, before saving)."""
        threshold = self.serving_threshold(model, prepared_dir, params)
        extra = {**spec.extra, "threshold": threshold, "false_alarm_rate": params.evaluate.false_alarm_rate}
        return ModelSpec(spec.task, spec.model, spec.model_kwargs, spec.inference_module, extra)

    def compare(self, tables: dict[str, dict[str, pd.DataFrame]], out_dir: Path) -> dict[str, Path]:
        """All models' ROC curves in one figure and their score timelines stacked (the study's figures)."""
        return compare_arms({arm: t["window_scores"] for arm, t in tables.items() if "window_scores" in t}, out_dir)

    def window_labels(
        self, prepared_dir: Path, split: str, starts: np.ndarray, rule: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per window 0/1 and action: by its last frame (what an online detector judges at that moment) or
        by the majority of its frames (the action then is the most frequent one in the window)."""
        y, actions = load_array(prepared_dir, split, "y"), load_array(prepared_dir, split, "actions")
        window = int(read_meta(prepared_dir)["window"])
        if rule == "last":
            return y[starts + window - 1], actions[starts + window - 1]
        index = starts[:, None] + np.arange(window)
        labels = (y[index].mean(axis=1) > 0.5).astype(np.int64)
        modes = [pd.Series(row).mode().iloc[0] for row in actions[index]]
        return labels, np.asarray(modes, dtype=str)

    def evaluate(self, model: nn.Module, prepared_dir: Path, params: SkeletonParams, out_dir: Path) -> Evaluation:
        from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

        out_dir.mkdir(parents=True, exist_ok=True)
        e = params.evaluate
        threshold = self.serving_threshold(model, prepared_dir, params)
        starts, scores, latents = self._scores(model, prepared_dir, "test", with_latents=True)
        labels, actions = self.window_labels(prepared_dir, "test", starts, e.window_label)
        window = int(read_meta(prepared_dir)["window"])
        flagged = scores > threshold
        both = 0 < labels.sum() < len(labels)
        metrics = {
            "test_auroc": float(roc_auc_score(labels, scores)) if both else float("nan"),
            "test_average_precision": float(average_precision_score(labels, scores)) if both else float("nan"),
            "serving_threshold": threshold,
            "test_detection_rate": float(flagged[labels == 1].mean()) if labels.any() else float("nan"),
            "test_false_alarm_rate": float(flagged[labels == 0].mean()) if (labels == 0).any() else float("nan"),
            "test_windows": float(len(labels)),
            "test_abnormal_share": float(labels.mean()) if len(labels) else float("nan"),
        }
        rates = {
            str(a): float(flagged[(actions == a) & (labels == 1)].mean()) for a in sorted(set(actions[labels == 1]))
        }
        metrics |= {f"test_detection_rate_{a}": r for a, r in rates.items()}

        groups, frames = load_array(prepared_dir, "test", "groups"), load_array(prepared_dir, "test", "frame")
        end = starts + window - 1
        table = pd.DataFrame(
            {"video": groups[end], "end_frame": frames[end], "score": scores, "label": labels,
             "flagged": flagged, "action": actions}
        )  # fmt: skip
        images = {}
        if both:
            fpr, tpr, _ = roc_curve(labels, scores)
            images["roc_curve.png"] = plots.roc_curves(
                {"model": (fpr, tpr, metrics["test_auroc"])}, out_dir / "roc_curve.png"
            )
        timeline = []
        for video in dict.fromkeys(table["video"]):
            rows = table[table["video"] == video]
            timeline.append((video, rows["end_frame"].to_numpy(), rows["score"].to_numpy(), _spans(rows)))
        if timeline:
            images["score_timeline.png"] = plots.score_timeline(timeline, threshold, out_dir / "score_timeline.png")
        if rates:
            images["detection_by_action.png"] = plots.detection_by_action(
                rates, metrics["test_false_alarm_rate"], out_dir / "detection_by_action.png"
            )
        if latents is not None and len(latents) >= 10:
            points, keep = embed_2d(latents, e.embedding, e.embedding_max_points)
            images["latent_embedding.png"] = plots.latent_embedding(
                points, labels[keep] == 1, e.embedding, out_dir / "latent_embedding.png"
            )
        return Evaluation(metrics=metrics, images=images, tables={"window_scores": table})


def compare_arms(tables: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """The study's side-by-side figures from each model's ``window_scores`` table (what ``evaluate``
    returns): all ROC curves in one figure, and the score timelines stacked (scores differ in scale between
    models, so each row has its own axis)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    curves, timelines = {}, []
    for arm, table in tables.items():
        labels, scores = table["label"].to_numpy(), table["score"].to_numpy()
        if 0 < labels.sum() < len(labels):
            fpr, tpr, _ = roc_curve(labels, scores)
            curves[arm] = (fpr, tpr, float(roc_auc_score(labels, scores)))
        for video in dict.fromkeys(table["video"]):
            rows = table[table["video"] == video]
            timelines.append((f"{arm}: {video}", rows["end_frame"].to_numpy(), rows["score"].to_numpy(), _spans(rows)))
    images = {}
    if curves:
        images["roc_curves.png"] = plots.roc_curves(curves, out_dir / "roc_curves.png")
    if timelines:
        images["score_timelines.png"] = plots.score_timeline(timelines, None, out_dir / "score_timelines.png")
    return images


def _spans(rows: pd.DataFrame) -> list[tuple[int, int, str]]:
    """Runs of consecutive abnormal windows as (first end frame, last end frame, action)."""
    spans, start = [], None
    ends, labels, actions = rows["end_frame"].to_numpy(), rows["label"].to_numpy(), rows["action"].to_numpy()
    for i in range(len(rows) + 1):
        inside = i < len(rows) and labels[i] == 1 and (start is None or actions[i] == actions[start])
        if start is not None and not inside:
            spans.append((int(ends[start]), int(ends[i - 1]), str(actions[start])))
            start = None
        if start is None and i < len(rows) and labels[i] == 1:
            start = i
    return spans


def embed_2d(latents: np.ndarray, method: str, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """2-D points of (an evenly spaced subset of) latents by t-SNE or PCA, and the indices kept."""
    keep = np.unique(np.linspace(0, len(latents) - 1, min(max_points, len(latents))).astype(int))
    data = latents[keep]
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=0).fit_transform(data), keep
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(data) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(data), keep
