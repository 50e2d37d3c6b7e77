"""ttubule: normalisation, augmentation, seamless tiling, instances, simulator, U-Net, validation, predictor."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import yaml

from mlops.data.arrays import SealedSplitError, load_array, open_sealed_splits, read_meta
from mlops.inference import BadInput
from mlops.params import load_params
from mlops.stats import bootstrap
from mlops.tasks import get_task
from mlops.tasks.ttubule.inference import TTubulePredictor, load
from mlops.tasks.ttubule.instances import (
    InstanceSettings,
    boundary_map,
    class_instances,
    instance_stats,
    split_instances,
)
from mlops.tasks.ttubule.layout import LABELS_FILE, META_FILE
from mlops.tasks.ttubule.layout import TTUBULE as TTUBULE_CLASS
from mlops.tasks.ttubule.metrics import (
    best_thresholds,
    mean_best_threshold,
    plain_loss,
    pooled_curves,
    score_cases,
    segmentation_loss,
    slice_counts,
)
from mlops.tasks.ttubule.model import LossConfig, UNet, predict_whole, sliding_window, with_loss_constants
from mlops.tasks.ttubule.normalize import PeakSettings, histogram_peaks, normalize_stack, piecewise_linear
from mlops.tasks.ttubule.params import AugmentParams, SimSettings, TTubuleParams
from mlops.tasks.ttubule.prepare import augment_pair
from mlops.tasks.ttubule.preprocess import peak_settings
from mlops.tasks.ttubule.simulate import simulate_volume, simulate_volumes
from mlops.training.scoring import differences, evaluate_sealed
from mlops.validation import validate_dataset
from tests.conftest import ROOT

TASK = get_task("ttubule")


def tiny_section() -> dict:
    """The ttubule section of params.yaml shrunk to volumes that simulate and prepare in about a second."""
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["ttubule"]
    section["simulate"].update(n_volumes=3, slices=6, height=64, width=64)
    section["validation"].update(min_slices=2, min_height=32, min_width=32, max_ttubule_fraction=0.06)
    section["augment"]["tiles_per_slice"] = 2
    section["input"].update(tile=32, infer_tile=128, depth=2)
    return section


#: params.yaml's ttubule.input: the peak finding and the loss constants every model trains with
INPUT = yaml.safe_load((ROOT / "params.yaml").read_text())["ttubule"]["input"]
PEAKS = peak_settings(INPUT)
LOSS_CONSTANTS = {"focal_gamma": INPUT["focal_gamma"], "tversky_alpha": INPUT["tversky_alpha"]}


@pytest.fixture()
def params() -> TTubuleParams:
    return TTubuleParams.model_validate(tiny_section())


@pytest.fixture()
def raw(tmp_path, params) -> Path:
    folder = tmp_path / "raw" / "ttubule"
    TASK.simulate(folder, params, seed=3, progress=lambda _: None)
    return folder


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


# --- normalisation -------------------------------------------------------------------------------------


def test_histogram_peaks_and_the_studys_formula_on_a_constructed_histogram():
    rng = np.random.default_rng(0)
    # Two peaks (mitochondria at 60, myofibrils at 150, the taller) over a thin spread of other levels.
    values = np.concatenate([np.full(3000, 60), np.full(5000, 150), rng.integers(0, 256, 2000)])
    image = rng.permutation(values).reshape(100, 100).astype(np.uint8)
    p1, p2 = histogram_peaks(image, PeakSettings(smoothing=2.0, min_separation=25))
    assert (p1, p2) == (60.0, 150.0)

    P1, P2 = 80.0, 160.0  # noqa: N806
    x = np.array([0, 30, 60, 105, 150, 200, 255], dtype=np.float32)
    out = piecewise_linear(x, p1, p2, P1, P2)
    expected = [0, 30 * 80 / 60, 80, 80 + 45 * 80 / 90, 160, 160 + 50 * 95 / 105, 255]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_normalisation_takes_out_slice_drift():
    rng = np.random.default_rng(1)
    base = np.where(rng.random((80, 80)) < 0.35, 70.0, 140.0) + rng.normal(0, 4, (80, 80))
    drifted = np.stack([base, base * 1.2 + 10, base * 0.85 - 5]).clip(0, 255).astype(np.uint8)
    out, skipped = normalize_stack(drifted, 80.0, 150.0, PEAKS)
    assert skipped == 0
    peaks = np.array([histogram_peaks(s, PEAKS) for s in out])
    assert np.abs(peaks - [80.0, 150.0]).max() <= 3
    blank, skipped = normalize_stack(np.zeros((1, 32, 32), np.uint8), 80.0, 150.0, PEAKS)
    assert skipped == 1 and not blank.any()  # no peaks: left as it is, counted


# --- augmentation --------------------------------------------------------------------------------------


def _augment_params(**overrides) -> AugmentParams:
    values = dict(
        tiles_per_slice=1,
        ttubule_tile_share=0.0,
        flips=True,
        rotations=True,
        elastic_alpha_px=4.0,
        elastic_sigma_px=6.0,
        gain_low=1.0,
        gain_high=1.0,
        offset_max=0.0,
        gamma_low=1.0,
        gamma_high=1.0,
        noise_std=0.0,
    )
    return AugmentParams(**(values | overrides))


def _coded_pair() -> tuple[np.ndarray, np.ndarray]:
    """Labels in 6-px blocks and an image whose gray level encodes the label (20 + 50 x class)."""
    rng = np.random.default_rng(2)
    blocks = rng.integers(0, 4, size=(12, 12))
    labels = np.kron(blocks, np.ones((6, 6), dtype=np.int64)).astype(np.uint8)
    boundary = boundary_map(labels[None].astype(np.int32))[0]
    return (20 + 50 * labels).astype(np.uint8), np.stack([labels, boundary])


def test_augmentation_moves_image_and_labels_together():
    image, target = _coded_pair()
    for seed in range(4):
        out_img, out_tgt = augment_pair(image, target, np.random.default_rng(seed), _augment_params())
        assert out_tgt.dtype == np.uint8 and set(np.unique(out_tgt[0])) <= {0, 1, 2, 3}
        decoded = np.clip(np.rint((out_img.astype(float) - 20) / 50), 0, 3)
        agreement = (decoded == out_tgt[0]).mean()
        assert agreement > 0.93, agreement  # only bilinear edges differ
        assert (out_tgt[0] != target[0]).mean() > 0.05  # it did transform
    # Without the elastic part (flips, quarter turns only) the coding is kept exactly.
    out_img, out_tgt = augment_pair(image, target, np.random.default_rng(9), _augment_params(elastic_alpha_px=0.0))
    np.testing.assert_array_equal(out_img, 20 + 50 * out_tgt[0])


def test_intensity_jitter_leaves_labels_alone():
    image, target = _coded_pair()
    a = _augment_params(elastic_alpha_px=0.0, flips=False, rotations=False, gain_low=0.7, gain_high=0.8, noise_std=5)
    out_img, out_tgt = augment_pair(image, target, np.random.default_rng(0), a)
    np.testing.assert_array_equal(out_tgt, target)
    assert not np.array_equal(out_img, image)


# --- sliding window ------------------------------------------------------------------------------------


def _random_unet(label_mode: str = "multi", depth: int = 2) -> UNet:
    torch.manual_seed(0)
    model = UNet(label_mode, width=4, depth=depth)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 1, 32, 32) * 2)  # move the BatchNorm running statistics off their defaults
    return model.eval()


@pytest.mark.parametrize("size", [(100, 150), (64, 200), (37, 41)])
def test_sliding_window_has_no_seams(size):
    model = _random_unet()
    x = torch.rand(2, 1, *size)
    tiled = sliding_window(model, x, tile=64)
    whole = predict_whole(model, x)
    assert tiled.shape == (2, 5, *size)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_sliding_window_rejects_a_tile_inside_the_receptive_field():
    with pytest.raises(ValueError, match="receptive field"):
        sliding_window(_random_unet(), torch.rand(1, 1, 200, 200), tile=32)


# --- instances -----------------------------------------------------------------------------------------


def test_instances_are_counted_and_touching_ones_split():
    truth = np.zeros((8, 48, 64), dtype=np.int32)
    truth[1:7, 4:16, 4:16] = 1
    truth[1:7, 4:16, 16:28] = 2  # touches instance 1 face to face: one connected component
    truth[2:6, 30:42, 40:52] = 3
    truth[0:8, 26:30, 8:30] = 4  # a tube-like bar through every slice
    voxel = (70.0, 50.0, 50.0)
    obj = (truth > 0).astype(np.float32)
    found = split_instances(
        obj, boundary_map(truth).astype(np.float32), InstanceSettings(mask_threshold=0.5, marker_threshold=0.5)
    )
    assert instance_stats(found, voxel).count == 4
    assert class_instances(truth > 0, True).max() == 3  # connected components merge the touching pair
    assert len(np.unique(found[1:7, 4:16, 4:28])) == 2  # ... which the boundary map splits
    stats, true_stats = instance_stats(found, voxel), instance_stats(truth, voxel)
    assert stats.volume_um3 == pytest.approx(true_stats.volume_um3)
    assert true_stats.volume_um3 == pytest.approx((truth > 0).sum() * 70 * 50 * 50 * 1e-9)
    assert true_stats.volume_fraction == pytest.approx((truth > 0).mean())


def test_the_threshold_is_the_mean_of_the_per_slice_best_thresholds():
    labels = np.zeros((3, 4, 4), dtype=np.uint8)
    labels[:2, :2] = 3  # slice 2 holds no T-tubule: it has no best threshold
    prob = np.full((3, 4, 4), 30 / 255)
    prob[0, :2], prob[1, :2] = 100 / 255, 200 / 255
    prob[1, 2:] = 150 / 255  # slice 1 separates only above 150
    best = best_thresholds(prob, labels, 3)
    assert best == [30, 150]  # the lowest threshold reaching each slice's best F
    assert mean_best_threshold(best) == 90 and mean_best_threshold([]) == 127
    curves = pooled_curves(prob, labels, 3)
    assert len(curves) == 256 and curves["f"].iloc[150] == pytest.approx(2 * 8 / (2 * 8 + 8))


def test_slice_counts_use_the_served_rounding():
    labels = np.zeros((2, 2, 2), dtype=np.uint8)
    labels[0, 0] = 3
    prob = np.array([[[0.5, 0.1], [0.9, 0.0]], [[0.2, 0.2], [0.2, 0.2]]])  # 0.5 -> 128 > 127
    tp, fp, fn = slice_counts(prob, labels, 3, threshold=127)
    assert tp.tolist() == [1, 0] and fp.tolist() == [1, 0] and fn.tolist() == [1, 0]


def _cases(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame(
        {"case": [f"v{i}:{i:04d}" for i in range(n)], "group": [f"v{i}" for i in range(n)], "stratum": "test"} | columns
    )


def test_the_studys_per_slice_mean_differs_from_the_pooled_f():
    # Slice 0: 100 T-tubule voxels, all found. Slice 1: 10, none found. Slice 2: no T-tubule, 5 false positives.
    cases = _cases(ttubule_tp=[100, 0, 0], ttubule_fp=[0, 0, 5], ttubule_fn=[0, 10, 0])
    m = score_cases(cases)
    assert m["test_ttubule_f"] == pytest.approx((1.0 + 0.0) / 2)  # slice 2 is skipped: no T-tubule in it
    assert m["test_ttubule_recall"] == pytest.approx(0.5)
    assert m["test_ttubule_precision"] == pytest.approx(0.5)  # slice 1 predicts none: precision 0, not 1
    assert m["test_ttubule_iou"] == pytest.approx(0.5)
    assert m["test_ttubule_pooled_f"] == pytest.approx(200 / (200 + 5 + 10))  # counts every slice's voxels
    assert m["test_ttubule_pooled_iou"] == pytest.approx(100 / (100 + 5 + 10))
    assert "test_mitochondria_f" not in m  # single-label cases: T-tubule columns only


def test_a_resample_without_the_class_scores_nan_not_an_error():
    cases = _cases(ttubule_tp=[50, 0, 0], ttubule_fp=[3, 0, 7], ttubule_fn=[5, 0, 0])
    without = score_cases(cases.iloc[[1, 2, 2]])  # a resample with a repeated slice and no T-tubule
    assert set(without) == set(score_cases(cases))
    assert all(math.isnan(v) for v in without.values())
    # The bootstrap over volumes draws such resamples (1 volume of 3 holds the class): no error, no interval.
    intervals = bootstrap(cases, score_cases, resamples=200, seed=0)
    assert intervals["test_ttubule_f"].value == pytest.approx(2 * 50 / (100 + 3 + 5))
    assert intervals["test_ttubule_f"].low is None


def test_compare_draws_both_arms_tubule_curves(tmp_path):
    labels = np.zeros((2, 8, 8), dtype=np.uint8)
    labels[:, 2:4] = 3
    rng = np.random.default_rng(0)
    tables = {
        arm: {
            "threshold_curves": pooled_curves(rng.random((2, 8, 8)), labels, 3).assign(**{"class": "ttubule"}),
            "class_metrics": pd.DataFrame([{"class": "ttubule", "val_threshold": t}]),
        }
        for arm, t in (("multi_label", 90), ("single_label", 60))
    }
    figures = TASK.compare(tables, tmp_path)
    assert list(figures) == ["ttubule_arms.png"] and figures["ttubule_arms.png"].stat().st_size > 0


# --- simulator, validation, prepare --------------------------------------------------------------------


def test_simulator_is_deterministic_and_writes_the_real_layout(tmp_path, params):
    s = SimSettings(**params.simulate.model_dump() | {"n_volumes": 2, "slices": 4})
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        simulate_volumes(tmp_path / name, s, seed)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    vol = tmp_path / "a" / "vol000"
    image, labels = tifffile.imread(vol / "image.tif"), tifffile.imread(vol / LABELS_FILE)
    assert image.shape == labels.shape == (4, 64, 64) and image.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert json.loads((vol / META_FILE).read_text())["voxel_size_nm"] == {"z": 70.0, "y": 50.0, "x": 50.0}


def test_simulated_lookalikes_are_background_off_the_z_lines_and_as_bright_as_tubes(params):
    s = SimSettings(**params.simulate.model_dump() | {"slices": 12, "height": 96, "width": 96})
    volumes = [simulate_volume(np.random.default_rng(seed), s) for seed in range(3)]
    for vol in volumes:
        tubes, looks = vol.labels == TTUBULE_CLASS, vol.lookalikes
        assert looks.any() and tubes.any()
        assert (vol.labels[looks] == 0).all()  # SR tubules and vesicles are background
        assert vol.zline_distance[looks].min() >= s.lookalike_zline_gap_nm
        # T-tubules lie on Z lines (within a thick tube's radius, the rim and the per-myofibril stagger).
        assert np.median(vol.zline_distance[tubes]) < 0.5 * s.tube_radius_high_nm
        assert vol.zline_distance[tubes].max() < s.lookalike_zline_gap_nm
        assert 0.002 < tubes.mean() < 0.012
    # Locally alike: the look-alikes' gray levels are those of the T-tubules (pooled over the volumes).
    tube_gray = np.concatenate([v.image[v.labels == TTUBULE_CLASS] for v in volumes]).astype(float)
    look_gray = np.concatenate([v.image[v.lookalikes] for v in volumes]).astype(float)
    assert abs(np.median(tube_gray) - np.median(look_gray)) < 0.25 * tube_gray.std() + 10
    cell = np.concatenate([v.image[v.labels == 2] for v in volumes]).astype(float)
    assert np.median(look_gray) > np.median(cell) + 25  # both stand out of the myofibrils alike


def test_validation_passes_on_simulated_data(raw, params):
    report = validate_dataset(TASK, raw, params)
    assert report.success, report.summary()


@pytest.mark.parametrize(
    "breakage, expectation, column",
    [
        ("label7", "expect_column_values_to_be_between", "max_label"),
        ("shape", "expect_column_values_to_be_in_set", "shapes_match"),
        ("voxel_size", "expect_column_values_to_not_be_null", "voxel_z_nm"),
        ("empty_slice", "expect_column_values_to_be_between", "slice_std"),
    ],
)
def test_validation_catches_a_broken_dataset(raw, params, breakage, expectation, column):
    vol = raw / "vol001"
    if breakage == "label7":
        labels = tifffile.imread(vol / LABELS_FILE)
        labels[2, 10, 10] = 7
        tifffile.imwrite(vol / LABELS_FILE, labels)
    elif breakage == "shape":
        tifffile.imwrite(vol / LABELS_FILE, tifffile.imread(vol / LABELS_FILE)[:-1])
    elif breakage == "voxel_size":
        (vol / META_FILE).write_text(json.dumps({"voxel_size_nm": {"z": 70.0}}))
    else:
        image = tifffile.imread(vol / "image.tif")
        image[3] = 0
        tifffile.imwrite(vol / "image.tif", image)
    report = validate_dataset(TASK, raw, params)
    assert not report.success
    failed = {(f.expectation, f.column) for f in report.failures}
    assert (expectation, column) in failed, report.summary()
    assert any(s.startswith("vol001") for f in report.failures for s in f.samples)


def test_prepare_splits_by_volume_normalises_and_keeps_whole_test_slices(raw, tmp_path, params):
    copy = tmp_path / "ingested"
    assert TASK.ingest(raw, copy) == 3
    sizes = TASK.prepare(copy, tmp_path / "prep", params, seed=0)
    prep = tmp_path / "prep"
    meta = read_meta(prep)
    assert sizes == {"train": 6 * 2, "val": 6, "test": 6}
    assert 0 < meta["P1"] < meta["P2"] < 255
    groups = meta["split_groups"]
    assert len({g for s in groups.values() for g in s}) == 3  # every volume in exactly one split
    assert load_array(prep, "train", "x").shape == (12, 32, 32)
    assert load_array(prep, "train", "y").shape == (12, 2, 32, 32)
    with open_sealed_splits("test"):
        assert load_array(prep, "test", "x").shape == (6, 64, 64)  # whole slices for sliding-window inference
    train = TASK.dataset(prep, "train")
    x, y = train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y.shape == (2, 32, 32)


# --- model ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label_mode", ["multi", "single"])
def test_unet_overfits_one_small_batch(label_mode):
    torch.manual_seed(0)
    labels = torch.full((4, 32, 32), 2, dtype=torch.uint8)
    labels[:, :, :8] = 1
    labels[:, 10:30, 20:23] = 3  # a thin bright bar: the rare class
    image = torch.where(labels == 3, 0.9, torch.where(labels == 1, 0.3, 0.55)) + 0.03 * torch.randn(4, 32, 32)
    boundary = torch.from_numpy(boundary_map(labels.numpy().astype(np.int32)))
    targets = torch.stack([labels, boundary], dim=1)
    model = UNet(label_mode, width=8, depth=2, loss="ce")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(120):
        optimizer.zero_grad()
        loss = plain_loss(model(image[:, None]), targets)
        loss.backward()
        optimizer.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 0.2 * first
    model.eval()
    with torch.no_grad():
        metrics = TASK.val_metrics(model(image[:, None]), targets)
    assert metrics["ttubule_f"] > 0.9
    assert ("mitochondria_f" in metrics) == (label_mode == "multi")


# Hand-checked losses on one 2 x 2 image, pixels in row order. Labels background, mitochondria, T-tubule,
# myofibril; boundary target 0, 1, 1, 0. The logits are logs of the probabilities written here, so each loss
# can be written down with math.log. Multi-label: softmax rows below; single-label: T-tubule sigmoid 0.2, 0.3,
# 0.8, 0.1 (target 0, 0, 1, 0, so its boundary target is 0, 0, 1, 0); boundary sigmoid 0.2, 0.9, 0.6, 0.5.
# The U-Net's defaults (rare_weight 10, boundary weight 0.5) and params.yaml's loss constants (focal gamma 2,
# Tversky alpha 0.3 on false positives).
HAND_LABELS = [[0, 1], [3, 2]]
HAND_BOUNDARY = [[0, 1], [1, 0]]
HAND_SOFTMAX = [[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]
HAND_TUBE, HAND_EDGE = [0.2, 0.3, 0.8, 0.1], [0.2, 0.9, 0.6, 0.5]
log = math.log
# Per class 1..3 (multi) over the 4 pixels, smoothed by 1: tp, fp, fn = (.5, .55, .5), (.25, .6, .75), (.4, .45, .6);
# single: tp, fp, fn = .8, .6, .2. Index = (tp + 1) / (tp + alpha fp + (1 - alpha) fn + 1).
MULTI_CE = (-log(0.7) - log(0.5) - log(0.4) - log(0.25)) / 4
SINGLE_CE = (-log(0.8) - log(0.7) - log(0.8) - log(0.9)) / 4
HAND_CLASS_LOSS = {
    ("ce", "multi"): MULTI_CE,
    ("weighted_ce", "multi"): (-log(0.7) - log(0.5) - 10 * log(0.4) - log(0.25)) / 13,
    ("focal", "multi"): (-(0.3**2) * log(0.7) - 0.5**2 * log(0.5) - 0.6**2 * log(0.4) - 0.75**2 * log(0.25)) / 4,
    ("dice", "multi"): MULTI_CE + ((1 - 1.5 / 2.025) + (1 - 1.25 / 1.925) + (1 - 1.4 / 1.925)) / 3,
    ("tversky", "multi"): MULTI_CE + ((1 - 1.5 / 2.015) + (1 - 1.25 / 1.955) + (1 - 1.4 / 1.955)) / 3,
    ("ce", "single"): SINGLE_CE,
    ("weighted_ce", "single"): (-log(0.8) - log(0.7) - 10 * log(0.8) - log(0.9)) / 4,
    ("focal", "single"): (-(0.2**2) * log(0.8) - 0.3**2 * log(0.7) - 0.2**2 * log(0.8) - 0.1**2 * log(0.9)) / 4,
    ("dice", "single"): SINGLE_CE + 1 - 1.8 / 2.2,
    ("tversky", "single"): SINGLE_CE + 1 - 1.8 / 2.12,
}
HAND_BOUNDARY_LOSS = {
    "multi": (-log(0.8) - log(0.9) - log(0.6) - log(0.5)) / 4,
    "single": (-log(0.8) - log(0.1) - log(0.6) - log(0.5)) / 4,  # the mitochondrion's contour is no target
}


def hand_outputs(label_mode: str) -> torch.Tensor:
    """(1, C + 1, 2, 2) logits whose softmax / sigmoids are the probabilities above."""
    edge = [log(q / (1 - q)) for q in HAND_EDGE]
    if label_mode == "multi":
        channels = [[log(p[c]) for p in HAND_SOFTMAX] for c in range(4)] + [edge]
    else:
        channels = [[log(p / (1 - p)) for p in HAND_TUBE], edge]
    return torch.tensor(channels, dtype=torch.float32).reshape(1, len(channels), 2, 2)


@pytest.mark.parametrize("loss", ["ce", "weighted_ce", "dice", "tversky", "focal"])
@pytest.mark.parametrize("label_mode", ["multi", "single"])
def test_every_loss_works_in_both_label_modes(loss, label_mode):
    model = with_loss_constants(UNet(label_mode, width=4, depth=2, loss=loss), **LOSS_CONSTANTS)
    assert model(torch.rand(1, 1, 16, 16)).shape == (1, 5 if label_mode == "multi" else 2, 16, 16)
    hand = LossConfig(loss, rare_weight=10.0, boundary_weight=0.5, focal_gamma=2.0, tversky_alpha=0.3)
    assert model.loss_config == hand  # the constants the values above were worked out with
    targets = torch.tensor([HAND_LABELS, HAND_BOUNDARY], dtype=torch.uint8)[None]
    outputs = hand_outputs(label_mode).requires_grad_()
    value = TASK.criterion(model)(outputs, targets)
    expected = HAND_CLASS_LOSS[loss, label_mode] + 0.5 * HAND_BOUNDARY_LOSS[label_mode]
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert torch.isfinite(outputs.grad).all() and outputs.grad.abs().sum() > 0
    plain = HAND_CLASS_LOSS["ce", label_mode] + 0.5 * HAND_BOUNDARY_LOSS[label_mode]
    assert float(plain_loss(outputs.detach(), targets)) == pytest.approx(plain, rel=1e-5)


def test_single_label_learns_no_mitochondrion_contours():
    labels = np.zeros((1, 16, 16), dtype=np.uint8)
    labels[0, 2:8, 2:8] = 1  # a mitochondrion
    labels[0, 10:12, 3:13] = 3  # a T-tubule
    ids = np.where(labels == 1, 1, np.where(labels == 3, 2, 0)).astype(np.int32)
    full = torch.from_numpy(np.stack([labels, boundary_map(ids)], axis=1))
    tubes_only = full.clone()
    tubes_only[:, 1] *= (full[:, 0] == 3).to(torch.uint8)
    assert (tubes_only[:, 1] != full[:, 1]).any()
    single = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(plain_loss(single, full)) == pytest.approx(float(plain_loss(single, tubes_only)))
    multi = torch.randn(1, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(plain_loss(multi, full)) != pytest.approx(float(plain_loss(multi, tubes_only)))


def test_the_criterion_is_the_loss_the_model_was_built_with():
    targets = torch.zeros(2, 2, 16, 16, dtype=torch.uint8)
    targets[:, 0, 4:6] = 3
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    values = {}
    for loss in ("ce", "weighted_ce", "dice", "focal"):
        torch.manual_seed(1)  # the same weights for every choice
        model = with_loss_constants(UNet("multi", width=4, depth=2, loss=loss, rare_weight=20.0), **LOSS_CONSTANTS)
        model.eval()
        with torch.no_grad():
            out = model(x)
            values[loss] = float(TASK.criterion(model)(out, targets))
            if loss == "ce":
                assert values[loss] == pytest.approx(float(plain_loss(out, targets)))
    assert len({round(v, 5) for v in values.values()}) == 4  # each choice is a different loss


def test_build_model_reads_the_arm_and_stores_the_normalisation(raw, tmp_path, params):
    TASK.prepare(raw, tmp_path / "prep", params, seed=0)
    model, spec = TASK.build_model({"model": "unet", "label_mode": "single", "width": 4}, tmp_path / "prep")
    assert model.label_mode == "single" and spec.model_kwargs["label_mode"] == "single"
    assert {"P1", "P2", "infer_tile", "voxel_size_nm", "max_upload_voxels"} <= set(spec.extra)
    # The depth and the loss constants are params.yaml's (ttubule.input, through the prepared data), for every model.
    assert model.depth == spec.model_kwargs["depth"] == params.input.depth
    assert (model.loss_config.focal_gamma, model.loss_config.tversky_alpha) == (
        params.input.focal_gamma,
        params.input.tversky_alpha,
    )
    with pytest.raises(ValueError, match="depth"):
        TASK.build_model({"model": "unet", "width": 4, "depth": 2}, tmp_path / "prep")


def test_a_loss_without_its_constant_is_refused():
    outputs, targets = torch.zeros(1, 5, 4, 4), torch.zeros(1, 2, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="focal_gamma"):
        TASK.criterion(UNet("multi", width=4, depth=2, loss="focal"))(outputs, targets)  # not built by build_model
    assert torch.isfinite(segmentation_loss(outputs, targets, LossConfig("ce", None, 0.5, None, None)))


@pytest.mark.parametrize("label_mode", ["multi", "single"])
def test_evaluate_reports_per_class_tables_and_instances(raw, tmp_path, params, label_mode):
    TASK.prepare(raw, tmp_path / "prep", params, seed=0)
    model, _ = TASK.build_model({"label_mode": label_mode, "width": 4}, tmp_path / "prep")
    with pytest.raises(SealedSplitError):  # outside the evaluate stage the test split is sealed
        TASK.evaluate(model.eval(), tmp_path / "prep", params, tmp_path / "eval")
    with open_sealed_splits("test"):
        evaluation = TASK.evaluate(model.eval(), tmp_path / "prep", params, tmp_path / "eval")
        test_ids = load_array(tmp_path / "prep", "test", "ids")
    m = evaluation.metrics
    for key in ("f", "precision", "recall", "iou", "pooled_f", "instances", "instances_true", "volume_um3"):
        assert f"test_ttubule_{key}" in m
    assert "val_ttubule_threshold" in m and not any("best_f" in k or k.startswith("test_ttubule_thr") for k in m)
    assert ("test_mitochondria_f" in m) == (label_mode == "multi")
    assert all(p.is_file() for p in evaluation.images.values())
    assert set(evaluation.tables) == {"class_metrics", "threshold_curves", "val_slice_thresholds", "instances"}
    # One row per test slice, grouped by its volume; score() gives back every headline metric exactly.
    cases = evaluation.cases
    assert sorted(cases["case"]) == sorted(str(i) for i in test_ids) and set(cases["stratum"]) == {"test"}
    assert (cases["group"] == cases["case"].str.split(":").str[0]).all()
    scored = TASK.score(cases, params)
    assert "test_ttubule_f" in scored and not any("instances" in k or "volume" in k for k in scored)
    for name, value in scored.items():
        assert value == pytest.approx(m[name], rel=1e-12, nan_ok=True), name


def test_evaluate_scores_test_at_the_validation_thresholds(raw, tmp_path, params):
    prep = tmp_path / "prep"
    TASK.prepare(raw, prep, params, seed=0)
    torch.manual_seed(0)
    model, spec = TASK.build_model({"label_mode": "multi", "width": 4}, prep)
    model.eval()
    calibrated = TASK.calibrate(model, spec, prep, params).extra["thresholds"]  # sealed: it reads val only
    with open_sealed_splits("test"):
        first = TASK.evaluate(model, prep, params, tmp_path / "a")
        y = load_array(prep, "test", "y")
    assert {n: int(first.metrics[f"val_{n}_threshold"]) for n in calibrated} == calibrated
    # Other test labels (the myofibril of the top 16 rows relabelled T-tubule): other scores, the same thresholds.
    changed = y.copy()
    top = changed[:, 0, :16]
    top[top == 2] = 3
    np.save(prep / "test" / "y.npy", changed)
    with open_sealed_splits("test"):
        second = TASK.evaluate(model, prep, params, tmp_path / "b")
    for name in calibrated:
        assert second.metrics[f"val_{name}_threshold"] == first.metrics[f"val_{name}_threshold"]
    assert math.isfinite(first.metrics["test_ttubule_f"])
    assert second.metrics["test_ttubule_f"] != first.metrics["test_ttubule_f"]
    assert second.tables["class_metrics"]["val_threshold"].tolist() == list(calibrated.values())


def test_calibrate_stores_the_validation_thresholds_the_predictor_then_uses(raw, tmp_path, params):
    TASK.prepare(raw, tmp_path / "prep", params, seed=0)
    model, spec = TASK.build_model({"label_mode": "multi", "width": 4}, tmp_path / "prep")
    spec = TASK.calibrate(model.eval(), spec, tmp_path / "prep", params)
    assert set(spec.extra["thresholds"]) == {"mitochondria", "myofibril", "ttubule"}
    assert all(0 <= t <= 255 for t in spec.extra["thresholds"].values())
    assert spec.extra["instances"]["min_instance_voxels"] == params.evaluate.min_instance_voxels

    served = _spec()
    served["extra"] |= {"thresholds": {"mitochondria": 200, "myofibril": 120, "ttubule": 50}}
    served["extra"]["instances"] = spec.extra["instances"]
    predictor = TTubulePredictor(_random_unet(), served)
    assert predictor.instances.mask_threshold == pytest.approx(50 / 255)
    probs = np.zeros((1, 5, 2, 2), dtype=np.float32)
    probs[0, :4] = np.array([0.1, 0.1, 0.5, 0.3])[:, None, None]  # argmax: myofibril; T-tubule at 0.3 = 77 > 50
    probs[0, 3, 0, 0] = 0.15  # 38: below the T-tubule threshold
    masks = predictor.masks(probs)
    assert masks[3].sum() == 3 and not masks[3][0, 0, 0]
    assert masks[2].all() and not masks[1].any()


# --- predictor -----------------------------------------------------------------------------------------


def _spec(label_mode: str = "multi", max_voxels: int = 4 * 64 * 64) -> dict:
    return {
        "task": "ttubule",
        "model": "unet",
        "model_kwargs": {"label_mode": label_mode, "width": 4, "depth": 2},
        "inference_module": "mlops.tasks.ttubule.inference",
        "extra": {
            "P1": 80.0,
            "P2": 145.0,
            "peak_smoothing": 3.0,
            "peak_min_separation": 25,
            "infer_tile": 64,
            "max_upload_voxels": max_voxels,
            "voxel_size_nm": [70.0, 50.0, 50.0],
        },
    }


@pytest.fixture()
def predictor(tmp_path) -> TTubulePredictor:
    torch.save(_random_unet().state_dict(), tmp_path / "weights.pt")
    return load(tmp_path / "weights.pt", _spec())


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, photometric="minisblack")
    return buf.getvalue()


def test_predictor_answers_a_stack_and_a_slice(predictor, raw):
    stack = tifffile.imread(raw / "vol000" / "image.tif")[:3]
    answer = predictor.predict_upload(_tiff(stack), "image/tiff")
    assert answer["shape"] == [3, 64, 64]
    assert set(answer["classes"]) == {"mitochondria", "myofibril", "ttubule"}
    png = base64_png(answer["classes"]["ttubule"]["masks_png"][0])
    assert png.size == (64, 64)
    assert set(answer["instances"]["ttubule"]) == {"count", "volume_um3", "volume_fraction"}
    one = predictor.predict_upload(_npy(stack[0]), "application/x-npy")
    assert one["shape"] == [1, 64, 64] and len(one["classes"]["myofibril"]["masks_png"]) == 1
    assert predictor.predict_upload(_npy(stack), "application/octet-stream")["shape"] == [3, 64, 64]
    assert predictor.predict_array(predictor.warmup_input()).shape == (1, 5, 64, 64)


def test_explain_false_answers_the_same_without_drawing_the_overlay(predictor, raw, monkeypatch):
    data = _tiff(tifffile.imread(raw / "vol000" / "image.tif")[:3])
    full = predictor.answer_upload(data, "image/tiff")
    assert base64_png(full["overlay_png"]).size == (64, 64)
    inference = sys.modules[type(predictor).__module__]

    def refuse(*args, **kwargs):
        raise AssertionError("explain=false drew the overlay")

    monkeypatch.setattr(inference, "class_overlay", refuse)
    plain = predictor.answer_upload(data, "image/tiff", explain=False)
    assert "overlay_png" not in plain and "overlay_slice" not in plain
    del full["overlay_png"], full["overlay_slice"]
    assert plain == full
    monkeypatch.undo()
    predictor.warm_up()  # one uniform slice runs the whole path at model load


def base64_png(text: str):
    import base64

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(text)))


@pytest.mark.parametrize(
    "payload, content_type, status, words",
    [
        (b"", "application/x-npy", 400, "empty"),
        (b"GIF89a....", "application/octet-stream", 415, "TIFF"),
        (_npy(np.zeros((2, 64, 64), np.float32)), "application/x-npy", 422, "dtype"),
        (_npy(np.zeros((1, 2, 64, 64), np.uint8)), "application/x-npy", 422, "rank"),
        # refused from the .npy header / the TIFF's page headers, before any pixel is read (a voxel is one value)
        (_npy(np.zeros((5, 64, 64), np.uint8)), "application/x-npy", 413, "(20480 values); the limit is 16384"),
        (_tiff(np.zeros((5, 64, 64), np.uint8)), "image/tiff", 413, "declare 20480 values; the limit is 16384"),
        (_npy(np.zeros((64, 64), np.uint8)), "image/tiff", 415, "declared"),
        (b"II*\x00" + b"\x00" * 40, "image/tiff", 422, "unreadable"),
        (_npy(np.zeros((8, 8), np.uint8)), "application/x-npy", 422, "too small"),
    ],
)
def test_predictor_rejects_bad_uploads(predictor, payload, content_type, status, words):
    with pytest.raises(BadInput) as err:
        predictor.predict_upload(payload, content_type)
    assert err.value.status == status
    assert words in err.value.message


def test_predictor_limit_follows_the_service_setting(predictor):
    predictor.max_pixels = 2 * 64 * 64
    with pytest.raises(BadInput, match=r"\(12288 values\); the limit is 8192$") as err:
        predictor.predict_upload(_npy(np.zeros((3, 64, 64), np.uint8)), "application/x-npy")
    assert err.value.status == 413


def test_single_label_predictor_returns_only_ttubules(tmp_path):
    torch.save(_random_unet("single").state_dict(), tmp_path / "w.pt")
    single = load(tmp_path / "w.pt", _spec("single"))
    answer = single.predict_upload(_npy(np.full((64, 64), 120, np.uint8)), "application/x-npy")
    assert list(answer["classes"]) == ["ttubule"]
    assert answer["normalisation"]["slices_without_two_peaks"] == 1


def test_slab_split_keeps_each_slab_whole(raw, tmp_path, params):
    section = tiny_section()
    section["split"].update(group="slab", slab_slices=3)
    slab_params = TTubuleParams.model_validate(section)
    TASK.prepare(raw, tmp_path / "prep", slab_params, seed=1)
    groups = read_meta(tmp_path / "prep")["split_groups"]
    assert sum(len(g) for g in groups.values()) == 6  # 3 volumes x 2 slabs, each in exactly one split
    for split in ("val", "test"):
        with open_sealed_splits("test"):
            ids = load_array(tmp_path / "prep", split, "ids")
            slabs = load_array(tmp_path / "prep", split, "groups")
        for slab in np.unique(slabs):
            zs = sorted(int(i.split(":")[1]) for i in ids[slabs == slab])
            assert len(zs) == 3 and zs == list(range(zs[0], zs[0] + 3))  # a contiguous, complete slab


def test_a_degraded_model_is_refused_by_the_no_regression_gate(tmp_path):
    """The release's no-regression gate (what check_gates runs: ``differences``, then the gates' ``regressions``)
    with params.yaml's real gates and bootstrap, on real models: a multi-label U-Net trained 120 steps on 16 small
    volumes (6 test volumes, the bootstrap's groups) is the champion; a copy with its output layer negated (a sign
    bug: every class's score inverted) is refused; the champion against itself passes."""
    section = tiny_section()
    section["simulate"].update(n_volumes=16, slices=4)
    section["split"]["slab_slices"] = 4
    params = TTubuleParams.model_validate(section)
    TASK.simulate(tmp_path / "raw", params, seed=3, progress=lambda _: None)
    prepared = tmp_path / "prepared"
    TASK.prepare(tmp_path / "raw", prepared, params, seed=0)
    project = load_params(ROOT / "params.yaml")
    gates, boot, seed = project.task("ttubule").gates, project.base.bootstrap, project.base.seed
    torch.manual_seed(0)
    champion, _ = TASK.build_model({"label_mode": "multi", "width": 8}, prepared)
    data = TASK.dataset(prepared, "train")
    x, y = (torch.stack([data[i][k] for i in range(len(data))]) for k in (0, 1))
    opt, criterion = torch.optim.Adam(champion.parameters(), lr=1e-2), TASK.criterion(champion)
    for _ in range(120):
        batch = torch.randint(0, len(x), (16,))
        opt.zero_grad()
        criterion(champion.train()(x[batch]), y[batch]).backward()
        opt.step()
    champion.eval()
    degraded = copy.deepcopy(champion)
    with torch.no_grad():
        degraded.head.weight.neg_(), degraded.head.bias.neg_()
    mine = evaluate_sealed(TASK, champion, prepared, params, tmp_path / "champion", reader="test").cases
    theirs = evaluate_sealed(TASK, degraded, prepared, params, tmp_path / "degraded", reader="test").cases
    assert mine["group"].nunique() == 6
    failed, verdicts = gates.regressions(differences(TASK, theirs, mine, params, boot, seed))
    print(*verdicts, sep="\n  ")
    assert failed and all("worse by more than" in f for f in failed), verdicts
    assert {f.split(":")[0] for f in failed} <= set(gates.tolerance)
    failed, verdicts = gates.regressions(differences(TASK, mine, mine, params, boot, seed))
    assert not failed and all(v.endswith("indistinguishable") for v in verdicts), verdicts
