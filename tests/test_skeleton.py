"""skeleton: preprocessing, OpenPose ingest, simulator, validation, split, models, evaluation and serving."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mlops.data.arrays import SealedSplitError, load_array, open_sealed_splits
from mlops.fit.loop import FitConfig, fit
from mlops.inference import BadInput
from mlops.params import load_experiment, load_params
from mlops.tasks import get_task
from mlops.tasks.base import ModelSpec
from mlops.tasks.capabilities import Calibrates, ComparesArms
from mlops.tasks.skeleton import plots
from mlops.tasks.skeleton.evaluate import compare_arms, window_labels
from mlops.tasks.skeleton.inference import SkeletonPredictor, load
from mlops.tasks.skeleton.layout import frame_path
from mlops.tasks.skeleton.metrics import auroc, average_precision, negative_elbo
from mlops.tasks.skeleton.model import MODELS, model_kwargs
from mlops.tasks.skeleton.preprocess import (
    BODY25_LIMBS,
    NECK,
    MapSpec,
    frame_to_map,
    frames_to_maps,
    read_frame_file,
    render_map,
    select_person,
    sliding_windows,
    window_starts,
)
from mlops.tasks.skeleton.simulate import ABNORMAL_ACTIONS, openpose_document, simulate_videos
from mlops.training.scoring import differences, evaluate_sealed
from mlops.validation import validate_dataset
from tests.conftest import ROOT

torch.set_num_threads(1)
TASK = get_task("skeleton")
T = 30


def tiny_params():
    """The repo's skeleton params with every size shrunk so a whole dataset takes a fraction of a second."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["skeleton"]
    raw["simulate"].update(
        n_train_videos=3,
        train_frames_per_video=45,
        n_test_videos=2,
        test_frames_per_video=90,
        segment_seconds_min=0.8,
        segment_seconds_max=1.2,
        abnormal_fraction=0.5,
    )
    raw["split"]["val_fraction"] = 0.34
    raw["evaluate"].update(embedding="pca", embedding_max_points=40)
    return TASK.Params.model_validate(raw)


@pytest.fixture()
def params():
    return tiny_params()


@pytest.fixture()
def raw(tmp_path, params) -> Path:
    folder = tmp_path / "raw" / "skeleton"
    TASK.simulate(folder, params, seed=3, progress=lambda _: None)
    return folder


@pytest.fixture()
def spec(params) -> MapSpec:
    p = params.input
    return MapSpec(
        p.canvas_width, p.canvas_height, p.crop, p.size, p.line_width_px, p.binarize_threshold, p.min_confidence
    )


def figure(neck=(320.0, 200.0), scale=1.0) -> np.ndarray:
    """A standing BODY_25 stick figure (25, 3) with its neck at ``neck``, every joint confident."""
    offsets = {
        0: (0, -25), 1: (0, 0), 2: (-20, 0), 3: (-24, 35), 4: (-26, 68), 5: (20, 0), 6: (24, 35), 7: (26, 68),
        8: (0, 75), 9: (-10, 75), 10: (-11, 120), 11: (-12, 165), 12: (10, 75), 13: (11, 120), 14: (12, 165),
        15: (-5, -30), 16: (5, -30), 17: (-10, -27), 18: (10, -27), 19: (18, 172), 20: (22, 171), 21: (10, 170),
        22: (-18, 172), 23: (-22, 171), 24: (-10, 170),
    }  # fmt: skip
    kp = np.zeros((25, 3))
    for joint, (dx, dy) in offsets.items():
        kp[joint] = (neck[0] + scale * dx, neck[1] + scale * dy, 0.8)
    return kp


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


# --- preprocessing ---------------------------------------------------------------------------------


def test_map_is_binary_28x28_and_crop_is_centred_on_the_neck(spec):
    m = render_map(figure(), spec)
    assert m.shape == (28, 28) and m.dtype == np.uint8
    assert set(np.unique(m)) == {0, 1}
    # The neck lies at the centre of the crop: the torso runs down from the map's centre.
    assert m[14:16, 13:15].any()
    rows = np.flatnonzero(m.any(axis=1))
    assert rows.min() < 14 < rows.max()
    # Moving the person in the video does not move the map (the crop follows the neck) ...
    for dx, dy in ((-150, 40), (200, -60), (37, 11)):
        assert np.array_equal(render_map(figure((320.0 + dx, 200.0 + dy)), spec), m)
    # ... while moving a joint relative to the neck does.
    raised = figure()
    raised[4] = (300.0, 150.0, 0.8)
    assert not np.array_equal(render_map(raised, spec), m)


def test_crop_without_a_neck_falls_back_to_the_shoulders_and_blank_without_any_joint(spec):
    kp = figure()
    kp[NECK, 2] = 0.0
    assert render_map(kp, spec).any()
    nothing = figure()
    nothing[:, 2] = 0.0
    m, counts = frame_to_map([nothing], spec)
    assert not m.any() and counts.frames_without_centre == 1


def test_window_count_is_frames_minus_29_and_windows_stay_inside_videos():
    starts = window_starts([50, 29, 31, 30], T)
    assert len(starts) == (50 - 29) + 0 + (31 - 29) + (30 - 29)
    assert starts.tolist()[-3:] == [79, 80, 110]  # second video (29 frames) has none
    maps = np.random.default_rng(0).integers(0, 2, (45, 28, 28), dtype=np.uint8)
    windows = sliding_windows(maps, T)
    assert windows.shape == (45 - 29, T, 28, 28)
    assert np.array_equal(windows[3], maps[3 : 3 + T])
    with pytest.raises(ValueError, match="fewer than one window"):
        sliding_windows(maps[:12], T)


def test_low_confidence_joints_are_not_drawn_and_are_counted(spec):
    weak = figure()
    weak[[3, 4], 2] = 0.05  # right elbow and wrist under the floor
    missing = figure()
    missing[[3, 4]] = 0.0
    m_weak, counts = frame_to_map([weak], spec)
    assert np.array_equal(m_weak, render_map(missing, spec))
    assert counts.low_confidence_joints == 2 and counts.frames_with_low_confidence_joints == 1


def test_the_most_confident_person_is_the_worker(spec):
    ghost = np.zeros((25, 3))
    ghost[[0, 4]] = (10.0, 10.0, 0.3)
    assert select_person([ghost, figure()])[1, 2] == 0.8
    m, counts = frame_to_map([ghost, figure()], spec)
    assert np.array_equal(m, render_map(figure(), spec)) and counts.extra_people == 1


# --- OpenPose JSON ingest ----------------------------------------------------------------------------


def test_openpose_json_with_no_people_and_low_confidence_joints_is_read_and_counted(tmp_path, spec):
    weak = figure()
    weak[7, 2] = 0.02
    docs = [openpose_document([figure()]), {"version": 1.3, "people": []}, openpose_document([weak])]
    for i, doc in enumerate(docs):
        path = frame_path(tmp_path, "cam1", i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    frames = [read_frame_file(frame_path(tmp_path, "cam1", i)) for i in range(3)]
    assert [len(f) for f in frames] == [1, 0, 1]
    maps, counts = frames_to_maps(frames, spec)
    assert maps.shape == (3, 28, 28)
    assert maps[0].any() and not maps[1].any() and maps[2].any()
    assert counts.frames_without_person == 1 and counts.low_confidence_joints == 1


def test_ingest_copies_the_layout_and_refuses_a_missing_video(raw, tmp_path):
    n = TASK.ingest(raw, tmp_path / "copy")
    assert n == 3 * 45 + 2 * 90
    assert (tmp_path / "copy" / "spans.csv").is_file()
    assert len(list((tmp_path / "copy" / "train_01").glob("*_keypoints.json"))) == 45
    videos = pd.read_csv(raw / "videos.csv")
    videos.loc[len(videos)] = ["cam9", "test", "p9", 40, 30, 640, 480]
    videos.to_csv(raw / "videos.csv", index=False)
    with pytest.raises(ValueError, match="cam9"):
        TASK.ingest(raw, tmp_path / "again")


# --- simulator -----------------------------------------------------------------------------------------


def test_simulator_is_deterministic_and_writes_the_real_layout(tmp_path, params):
    sim = params.simulate.model_dump()
    for folder, seed in (("a", 5), ("b", 5), ("c", 6)):
        simulate_videos(tmp_path / folder, seed=seed, **sim)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    videos = pd.read_csv(tmp_path / "a" / "videos.csv")
    spans = pd.read_csv(tmp_path / "a" / "spans.csv")
    assert list(videos.columns[:2]) == ["video", "split_role"]
    assert list(spans.columns) == ["video", "start_frame", "end_frame", "action"]
    assert set(spans.video) <= set(videos.loc[videos.split_role == "test", "video"])
    assert len(spans) and set(spans.action) <= set(ABNORMAL_ACTIONS)
    doc = json.loads(frame_path(tmp_path / "a", "train_01", 0).read_text())
    assert len(doc["people"][0]["pose_keypoints_2d"]) == 75


# --- validation ------------------------------------------------------------------------------------------


def test_validation_passes_on_simulated_data(raw, params):
    report = validate_dataset(TASK, raw, params)
    assert report.success, report.summary()


def _break(raw: Path, breakage: str) -> str:
    """Damage one thing in a simulated dataset; returns the frame_id (or video) a report should name."""
    victim = frame_path(raw, "train_02", 7)
    doc = json.loads(victim.read_text())
    if breakage == "abnormal_in_train":
        spans = pd.read_csv(raw / "spans.csv")
        spans.loc[len(spans)] = ["train_02", 5, 9, "throw_trash"]
        spans.to_csv(raw / "spans.csv", index=False)
    elif breakage == "confidence":
        doc["people"][0]["pose_keypoints_2d"][2] = 1.7
        victim.write_text(json.dumps(doc))
    elif breakage == "joints":
        doc["people"][0]["pose_keypoints_2d"] = doc["people"][0]["pose_keypoints_2d"][:54]  # 18 joints (COCO)
        victim.write_text(json.dumps(doc))
    elif breakage == "malformed":
        victim.write_text('{"version": 1.3, "people": [')
    elif breakage == "span_outside":
        spans = pd.read_csv(raw / "spans.csv")
        spans.loc[len(spans)] = ["test_01", 80, 400, "dig_in_bin"]
        spans.to_csv(raw / "spans.csv", index=False)
        return "test_01:0"
    return "train_02:7"


@pytest.mark.parametrize(
    "breakage, column",
    [
        ("abnormal_in_train", "abnormal_in_train"),
        ("confidence", "conf_max"),
        ("joints", "n_joints"),
        ("malformed", "parse_ok"),
        ("span_outside", "spans_outside_video"),
    ],
)
def test_validation_fails_on_a_broken_dataset_and_names_the_frames(raw, params, breakage, column):
    sample = _break(raw, breakage)
    report = validate_dataset(TASK, raw, params)
    assert not report.success
    failed = [f for f in report.failures if f.column == column]
    assert failed, report.summary()
    assert any(sample in f.samples for f in failed), report.summary()


def test_manifest_counts_frames_and_joints(raw, params):
    table = TASK.manifest(raw, params)
    assert len(table) == 3 * 45 + 2 * 90 and table.frame_id.is_unique
    assert table.groupby("video").video_frames.first().to_dict()["test_01"] == 90
    assert set(table.n_joints.dropna()) == {25}
    assert table.loc[table.split_role == "test", "label"].isin([0, 1]).all()
    assert table.loc[table.split_role == "train", "label"].eq(0).all()


# --- prepare, dataset, training loop, evaluation ---------------------------------------------------------


@pytest.fixture()
def prepared(raw, params, tmp_path) -> Path:
    out = tmp_path / "prepared"
    TASK.prepare(raw, out, params, seed=1)
    return out


def test_prepare_splits_by_video_and_counts_windows(prepared, raw, params, tmp_path):
    with open_sealed_splits("test"):
        groups = {s: set(load_array(prepared, s, "groups")) for s in ("train", "val", "test")}
        assert len(load_array(prepared, "test", "starts")) == 2 * (90 - 29)
        assert load_array(prepared, "test", "y").any()
        x = load_array(prepared, "test", "x")
    assert not groups["train"] & groups["val"] and groups["test"] == {"test_01", "test_02"}
    assert len(groups["train"]) == 2 and len(groups["val"]) == 1
    assert len(load_array(prepared, "train", "starts")) == 2 * (45 - 29)
    assert load_array(prepared, "train", "y").sum() == 0
    assert x.shape == (2 * 90, 28, 28) and x.dtype == np.uint8 and set(np.unique(x)) <= {0, 1}
    window, target = TASK.dataset(prepared, "val")[0]
    assert window.shape == (T, 28, 28) and torch.equal(window, target)
    TASK.prepare(raw, tmp_path / "again", params, seed=1)
    assert digest(tmp_path / "again") == digest(prepared)


def test_augmented_copies_are_jittered_windows_of_the_same_videos(raw, params, tmp_path):
    doubled = params.model_copy(update={"augment": params.augment.model_copy(update={"copies": 2})})
    TASK.prepare(raw, tmp_path / "aug", doubled, seed=1)
    ids, x = load_array(tmp_path / "aug", "train", "ids"), load_array(tmp_path / "aug", "train", "x")
    assert len(load_array(tmp_path / "aug", "train", "starts")) == 2 * 2 * (45 - 29)
    copies = np.char.endswith(ids, ":aug1")
    assert copies.sum() == len(ids) // 2
    assert not np.array_equal(x[copies], x[~copies])
    assert set(load_array(tmp_path / "aug", "train", "groups")[copies]) == set(
        load_array(tmp_path / "aug", "train", "groups")[~copies]
    )


def test_window_labels_by_last_frame_or_majority(prepared):
    with open_sealed_splits("test"):
        starts = load_array(prepared, "test", "starts")
        y, frame_actions = load_array(prepared, "test", "y"), load_array(prepared, "test", "actions")
        last, _ = window_labels(prepared, "test", starts, "last")
        majority, actions = window_labels(prepared, "test", starts, "majority")
    assert np.array_equal(last, y[starts + T - 1])
    assert np.array_equal(majority, (np.stack([y[s : s + T] for s in starts]).mean(axis=1) > 0.5).astype(int))
    assert not np.array_equal(last, majority)  # the two rules differ on these windows: the choice is tested
    assert set(actions[majority == 1]) <= set(ABNORMAL_ACTIONS)
    # the window's action is its most frequent frame action (the first in sorted order of a tie)
    assert list(actions) == [pd.Series(frame_actions[s : s + T]).mode().iloc[0] for s in starts]


def test_the_study_label_is_the_repo_setting():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert TASK.Params.model_validate(raw["skeleton"]).evaluate.window_label == "majority"


HPARAMS = {"latent": 16, "width": 4, "hidden": 16, "free_bits": 0.0, "window_latent": True}


@pytest.mark.parametrize("name", MODELS.names())
def test_model_output_packs_reconstruction_and_kl(name):
    model = MODELS.build(name, **model_kwargs(name, HPARAMS))
    x = (torch.rand(3, T, 28, 28) < 0.1).to(torch.uint8)
    model.eval()
    assert model(x).shape == (3, T, 785)
    assert model.embed(x).shape == (3, 16)
    model.train()
    frames = 1 if name in ("ae", "vae") else T
    assert model(x).shape == (3, frames, 785)


@pytest.mark.parametrize("window_latent", [True, False])
def test_lstm_vae_has_one_latent_per_window_or_per_step(window_latent):
    torch.manual_seed(0)
    model = MODELS.build("lstm_vae", **model_kwargs("lstm_vae", {**HPARAMS, "window_latent": window_latent})).eval()
    x = (torch.rand(2, T, 28, 28) < 0.1).float()
    later = x.clone()
    later[:, -1] = 1 - later[:, -1]  # only the window's last frame changes
    with torch.no_grad():
        out, changed = model(x), model(later)
    kl = out[..., -1]
    # One latent per window: its KL sits in row 0 and every frame's reconstruction depends on the whole window.
    # One latent per step: the encoder has seen only frames up to t, so the first frame's reconstruction stays.
    assert bool((kl[:, 1:] == 0).all()) == window_latent and bool((kl[:, 0] > 0).all())
    assert (not torch.equal(out[:, 0], changed[:, 0])) == window_latent


@pytest.mark.parametrize("name", MODELS.names())
def test_model_learns_on_tiny_data(prepared, name):
    torch.manual_seed(0)
    sequence = name == "lstm_vae"
    hparams = {"model": name, **HPARAMS, "width": 8, "hidden": 32, "free_bits": 1.0}
    model, _ = TASK.build_model(hparams, prepared)
    data = TASK.dataset(prepared, "train")
    # frame models learn from the newest frame of each window, the LSTM-VAE from all 30
    x = torch.stack([data[i][0] for i in np.linspace(0, len(data) - 1, 4 if sequence else 16).astype(int)])
    seen = x if sequence else x[:, -1:]
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    criterion = TASK.criterion(model)
    losses = []
    for _ in range(250 if sequence else 150):
        opt.zero_grad()
        loss = criterion(model.train()(x), x)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])
    # Better than the best constant image: it draws these skeletons, not the average one.
    maps = seen.float()
    mean = maps.mean(dim=(0, 1)).clamp(1e-3, 1 - 1e-3).expand_as(maps)
    constant = float(torch.nn.functional.binary_cross_entropy(mean, maps, reduction="sum")) / maps[:, :, 0, 0].numel()
    with torch.no_grad():
        learned = float(negative_elbo(model.eval()(seen), seen)["reconstruction"])
    assert learned < 0.75 * constant


def test_generic_loop_trains_evaluates_and_calibrates(prepared, params, tmp_path):
    model, spec = TASK.build_model({"model": "lstm_vae", **HPARAMS}, prepared)
    cfg = FitConfig(epochs=2, lr=3e-3, batch_size=8, weight_decay=0.0, seed=0, monitor="loss", mode="min")
    result = fit(TASK, model, TASK.dataset(prepared, "train"), TASK.dataset(prepared, "val"), cfg)
    assert {"val_loss", "val_reconstruction", "val_kl", "val_anomaly_score"} <= set(result.history[-1])
    with pytest.raises(SealedSplitError):  # evaluation reads the test split only where it is opened
        TASK.evaluate(model, prepared, params, tmp_path / "eval")
    with open_sealed_splits("test"):
        evaluation = TASK.evaluate(model, prepared, params, tmp_path / "eval")
    m, table = evaluation.metrics, evaluation.tables["window_scores"]
    assert m["serving_threshold"] > 0
    # The metrics recomputed from the per-window table: AUROC as the share of (abnormal, normal) pairs
    # ranked right (ties half), and the flags as score > serving threshold.
    score, label = table["score"].to_numpy(), table["label"].to_numpy()
    pos, neg = score[label == 1], score[label == 0]
    assert len(pos) and len(neg)
    diff = pos[:, None] - neg[None, :]
    assert m["test_auroc"] == pytest.approx(float(((diff > 0) + 0.5 * (diff == 0)).mean()))
    assert np.array_equal(table["flagged"].to_numpy(), score > m["serving_threshold"])
    assert m["test_detection_rate"] == pytest.approx((pos > m["serving_threshold"]).mean())
    assert m["test_false_alarm_rate"] == pytest.approx((neg > m["serving_threshold"]).mean())
    assert all(path.is_file() for path in evaluation.images.values())
    assert {"roc_curve.png", "score_timeline.png", "latent_embedding.png"} <= set(evaluation.images)
    assert len(evaluation.tables["window_scores"]) == 2 * (90 - 29)
    figures = compare_arms({"lstm_vae": evaluation.tables["window_scores"]}, tmp_path / "compare")
    assert set(figures) == {"roc_curves.png", "score_timelines.png"} and figures["roc_curves.png"].is_file()
    assert isinstance(TASK, Calibrates) and isinstance(TASK, ComparesArms)
    # The serving threshold is calibrated on the val split alone: outside the sealed block (where a read of the
    # test split raises) it comes out the same as the one evaluation reported.
    calibrated = TASK.calibrate(model, spec, prepared, params)
    assert calibrated.extra["threshold"] == evaluation.metrics["serving_threshold"]
    assert TASK.example_input(prepared).shape == (2, T, 28, 28)

    # The cases: one row per test window, grouped by test video, scored into exactly the reported metrics.
    cases = evaluation.cases
    assert len(cases) == len(table) and cases["case"].is_unique and set(cases["stratum"]) == {"test"}
    assert sorted(cases["group"].unique()) == ["test_01", "test_02"]
    assert (cases.groupby("group").size() == 90 - 29).all()
    assert cases["case"].iloc[0] == "test_01:0" and cases["case"].iloc[-1] == f"test_02:{90 - T}"
    assert np.array_equal(cases["label"], table["label"]) and np.array_equal(cases["flagged"], table["flagged"])
    scored = TASK.score(cases, params)
    assert {"test_auroc", "test_average_precision", "test_detection_rate", "test_false_alarm_rate"} <= set(scored)
    assert set(params.gates.min) | set(params.gates.max) <= set(scored)  # every gate has an interval
    for name, value in scored.items():
        assert value == pytest.approx(m[name], rel=1e-9, nan_ok=True), name
    # the windows evaluate scored carry the label the params name (the study's majority rule)
    with open_sealed_splits("test"):
        starts = load_array(prepared, "test", "starts")
        want, _ = window_labels(prepared, "test", starts, params.evaluate.window_label)
    assert params.evaluate.window_label == "majority" and np.array_equal(cases["label"], want)


def test_ranking_metrics_match_scikit_learn_and_resamples_score():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounded: many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), rel=1e-12)
    assert np.isnan(auroc(np.zeros(5), scores[:5])) and np.isnan(average_precision(np.ones(5), scores[:5]))
    cases = pd.DataFrame(
        {"case": [f"v{i % 4}:{i}" for i in range(400)], "group": [f"v{i % 4}" for i in range(400)],
         "stratum": "test", "label": labels, "score": scores, "flagged": scores > 0.8,
         "action": np.where(labels == 1, np.where(np.arange(400) % 2, "throw_trash", "dig_in_bin"), "normal")}
    )  # fmt: skip
    m = TASK.score(cases, tiny_params())
    flagged, abnormal = scores > 0.8, labels == 1
    assert m["test_detection_rate"] == pytest.approx(flagged[abnormal].mean())
    assert m["test_false_alarm_rate"] == pytest.approx(flagged[~abnormal].mean())
    assert m["test_precision"] == pytest.approx(abnormal[flagged].mean())
    assert m["test_f1"] == pytest.approx(2 * (flagged & abnormal).sum() / (flagged.sum() + abnormal.sum()))
    throw = abnormal & (cases["action"].to_numpy() == "throw_trash")
    assert m["test_detection_rate_throw_trash"] == pytest.approx(flagged[throw].mean())
    # a resample holding normal windows only (one video drawn twice) gives NaN, it does not raise
    normal = cases[~abnormal]
    again = TASK.score(pd.concat([normal, normal]), tiny_params())
    assert np.isnan(again["test_auroc"]) and np.isnan(again["test_detection_rate"])


def test_test_videos_are_workers_unseen_in_training(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["skeleton"]
    params = TASK.Params.model_validate(raw)
    assert params.simulate.n_test_videos >= 8  # the AUROC's interval is resampled over test videos
    # the repo's simulator settings with short videos: who is filmed does not depend on the length
    raw["simulate"].update(train_frames_per_video=31, test_frames_per_video=31, segment_seconds_min=0.2,
                           segment_seconds_max=0.4)  # fmt: skip
    small = TASK.Params.model_validate(raw)
    TASK.simulate(tmp_path, small, seed=0, progress=lambda _: None)
    videos = pd.read_csv(tmp_path / "videos.csv")
    test = videos[videos["split_role"] == "test"]
    assert len(test) == params.simulate.n_test_videos and test["person"].is_unique
    assert not set(test["person"]) & set(videos.loc[videos["split_role"] == "train", "person"])


def test_claim_names_the_experiment_arms():
    arms = load_experiment("skeleton", ROOT / "experiments").arms
    claim = TASK.claim
    assert {claim.better, claim.than} <= set(arms) and claim.metric == "test_auroc" and claim.higher_is_better


# --- serving -----------------------------------------------------------------------------------------------


@pytest.fixture()
def predictor(prepared, params, tmp_path) -> SkeletonPredictor:
    torch.manual_seed(0)
    model, spec = TASK.build_model({"model": "vae", **HPARAMS}, prepared)
    spec = TASK.calibrate(model, spec, prepared, params)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    return load(tmp_path / "weights.pt", json.loads(json.dumps(spec.to_json())))


def frames_json(n: int) -> list[dict]:
    return [openpose_document([figure((320.0 + 2 * i, 200.0))]) for i in range(n)]


def test_predictor_scores_openpose_json_zip_and_maps(predictor, spec):
    answer = predictor.predict_upload(json.dumps(frames_json(34)).encode(), "application/json")
    assert answer["n_windows"] == 34 - 29 == len(answer["scores"]) == len(answer["flags"])
    assert answer["window_end_frames"] == list(range(29, 34))
    assert answer["threshold"] == predictor.threshold
    assert base64.b64decode(answer["timeline_png"]).startswith(b"\x89PNG")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i, doc in reversed(list(enumerate(frames_json(34)))):  # order comes from the names
            archive.writestr(f"clip/clip_{i:012d}_keypoints.json", json.dumps(doc))
    zipped = predictor.predict_upload(buf.getvalue(), "application/zip")
    assert zipped["scores"] == answer["scores"]

    maps, _ = frames_to_maps([[figure((320.0 + 2 * i, 200.0))] for i in range(34)], spec)
    npy = io.BytesIO()
    np.save(npy, maps.astype(np.float32))
    from_maps = predictor.predict_upload(npy.getvalue(), "application/octet-stream")
    assert from_maps["scores"] == answer["scores"]
    assert predictor.predict_array(predictor.warmup_input()).shape == (1,)


def test_explain_false_answers_the_same_without_drawing_the_timeline(predictor, monkeypatch):
    data = json.dumps(frames_json(34)).encode()
    full = predictor.answer_upload(data, "application/json")

    def refuse(*args, **kwargs):
        raise AssertionError("explain=false drew the timeline")

    monkeypatch.setattr(plots, "score_timeline", refuse)
    plain = predictor.answer_upload(data, "application/json", explain=False)
    assert "timeline_png" not in plain
    full.pop("timeline_png")
    assert plain == full
    with pytest.raises(AssertionError, match="drew the timeline"):
        predictor.warm_up()  # model load draws one timeline: matplotlib is loaded then, not on a request


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _wrong_joints() -> bytes:
    frames = frames_json(40)
    frames[12]["people"][0]["pose_keypoints_2d"] = frames[12]["people"][0]["pose_keypoints_2d"][:54]
    return json.dumps(frames).encode()


@pytest.mark.parametrize(
    "data, status, message",
    [
        (json.dumps(frames_json(12)).encode(), 422, "12 frame"),
        (b'[{"people": [', 400, "malformed JSON"),
        (_wrong_joints(), 422, "frame 12, person 0: 54 numbers"),
        (json.dumps([{"people": [{"pose_keypoints_2d": ["a"] * 75}]}] * 30).encode(), 422, "non-numbers"),
        (json.dumps({"frames": 3}).encode(), 422, "list of per-frame"),
        (b"", 400, "empty upload"),
        (b"GIF89a....", 415, "not JSON"),
        (b"PK\x03\x04broken", 400, "corrupt zip"),
        (_npy(np.zeros((40, 32, 32), dtype=np.float32)), 422, "shape"),
        (_npy(np.full((40, 28, 28), 3.0, dtype=np.float32)), 422, "[0, 1]"),
    ],
    ids=["too-few-frames", "malformed", "wrong-joints", "non-numbers", "not-a-list", "empty", "foreign", "zip",
         "npy-shape", "npy-range"],
)  # fmt: skip
def test_predictor_rejects_bad_input_with_4xx(predictor, data, status, message):
    with pytest.raises(BadInput) as info:
        predictor.predict_upload(data, "application/json")
    assert info.value.status == status and 400 <= status < 500
    assert message in info.value.message


def test_predictor_without_a_calibrated_threshold_serves_scores_unflagged(prepared):
    model, spec = TASK.build_model({"model": "ae", **HPARAMS}, prepared)
    predictor = SkeletonPredictor(model, spec.to_json())
    answer = predictor.predict_upload(json.dumps(frames_json(30)).encode(), "application/json")
    assert answer["flags"] is None and len(answer["scores"]) == 1


# --- configuration ---------------------------------------------------------------------------------------


def test_params_section_and_experiment_of_repo_parse():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = TASK.Params.model_validate(raw["skeleton"])
    assert params.input.window == T and params.input.size == 28
    exp = load_experiment("skeleton", ROOT / "experiments")
    assert exp.objective.metric == "val_loss"
    assert {arm["model"] for arm in exp.arms.values()} == set(MODELS.names())
    for arm in exp.arms:  # every arm's fixed values + first choices build its model
        fixed, space = exp.arm_space(arm)
        hparams = {**{k: getattr(v, "choices", [getattr(v, "low", None)])[0] for k, v in space.items()}, **fixed}
        MODELS.build(hparams["model"], **model_kwargs(hparams["model"], hparams))


def test_limbs_reference_body25_joints():
    assert all(0 <= a < 25 and 0 <= b < 25 for a, b in BODY25_LIMBS) and len(BODY25_LIMBS) == 24


def test_model_spec_round_trips_through_json(prepared):
    _, spec = TASK.build_model({"model": "lstm_vae", **HPARAMS}, prepared)
    again = ModelSpec(**json.loads(json.dumps(spec.to_json())))
    assert again.extra["window"] == T and again.model_kwargs["hidden"] == 16


def test_a_degraded_model_is_refused_by_the_no_regression_gate(params, tmp_path):
    """The release's no-regression gate (what check_gates runs: ``differences``, then the gates' ``regressions``)
    with params.yaml's real gates and bootstrap, on real models: two frame VAEs from the same start and the same
    100 steps, the champion on normal training windows, the degraded one on the abnormal behaviour it should flag
    (a training-data mix-up: it reconstructs exactly what it must find unusual). Its AUROC falls far below the
    champion's on 6 test videos and the gate refuses it; the champion against itself passes. (Adding noise to
    the weights does not degrade this detector: a random VAE already ranks by how much skeleton a window draws.)"""
    params = params.model_copy(
        update={"simulate": params.simulate.model_copy(update={"n_test_videos": 6})}
    )  # 6 test workers: enough groups for a paired interval that excludes the tolerance
    TASK.simulate(tmp_path / "raw", params, seed=3, progress=lambda _: None)
    prepared = tmp_path / "prepared"
    TASK.prepare(tmp_path / "raw", prepared, params, seed=1)
    project = load_params(ROOT / "params.yaml")
    gates, boot, seed = project.task("skeleton").gates, project.base.bootstrap, project.base.seed

    def trained(windows: torch.Tensor) -> torch.nn.Module:
        torch.manual_seed(0)
        model, _ = TASK.build_model({"model": "vae", **HPARAMS, "width": 8, "hidden": 32, "free_bits": 1.0}, prepared)
        opt, criterion = torch.optim.Adam(model.parameters(), lr=5e-3), TASK.criterion(model)
        for _ in range(100):
            batch = windows[torch.randint(0, len(windows), (16,))]
            opt.zero_grad()
            criterion(model.train()(batch), batch).backward()
            opt.step()
        return model.eval()

    def windows(split: str) -> torch.Tensor:
        data = TASK.dataset(prepared, split)
        return torch.stack([data[i][0] for i in range(len(data))])

    champion = trained(windows("train"))
    with open_sealed_splits("a deliberately degraded model"):
        starts = load_array(prepared, "test", "starts")
        abnormal = torch.as_tensor(window_labels(prepared, "test", starts, "majority")[0]).bool()
        degraded = trained(windows("test")[abnormal])
    mine = evaluate_sealed(TASK, champion, prepared, params, tmp_path / "champion", reader="test").cases
    theirs = evaluate_sealed(TASK, degraded, prepared, params, tmp_path / "degraded", reader="test").cases
    assert mine["group"].nunique() == 6
    failed, verdicts = gates.regressions(differences(TASK, theirs, mine, params, boot, seed))
    print(*verdicts, sep="\n  ")
    assert failed and all("worse by more than" in f for f in failed), verdicts
    assert {f.split(":")[0] for f in failed} == set(gates.tolerance) == {"test_auroc"}
    failed, verdicts = gates.regressions(differences(TASK, mine, mine, params, boot, seed))
    assert not failed and all(v.endswith("indistinguishable") for v in verdicts), verdicts
