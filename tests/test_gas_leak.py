"""gas_leak: simulator, label-correct augmentation, both heads, validation and the upload predictor.

Everything runs on tiny sizes (16x16 frames, a few dozen sequences) with one torch thread.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mlops.data.arrays import SealedSplitError, load_array, open_sealed_splits
from mlops.inference import BadInput, load_predictor
from mlops.inference.model_files import save_model_dir
from mlops.params import load_experiment, load_params, parse_section
from mlops.tasks import get_task
from mlops.tasks.gas_leak.model import MODELS, N_ANSWER, decode_peak
from mlops.tasks.gas_leak.params import AugmentParams
from mlops.tasks.gas_leak.prepare import augment_sequence
from mlops.tasks.gas_leak.preprocess import centre_crop, to_channels
from mlops.training.scoring import differences, evaluate_sealed
from mlops.validation.runner import validate_dataset

ROOT = Path(__file__).resolve().parents[1]
SIZE, FRAMES, RECORDED = 16, 8, 10

torch.set_num_threads(1)


def _deep_update(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and key in out else value
    return out


@pytest.fixture(scope="module")
def task():
    return get_task("gas_leak")


@pytest.fixture(scope="module")
def params(task):
    """The params.yaml section (so it must parse) shrunk to test sizes."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["gas_leak"]
    tiny = {
        "simulate": {
            "n_sim": 24,
            "n_field": 6,
            "geometry": {"frames": RECORDED, "height": SIZE, "width": SIZE, "margin_px": 2.0, "seqs_per_scene": 2},
        },
        "validation": {"min_sequences": 10, "min_frames": FRAMES, "height": SIZE, "width": SIZE},
        "split": {"val_fraction": 0.2, "test_fraction": 0.2},
        "input": {"frames": FRAMES},
        "augment": {"copies": 2},
        "evaluate": {"overlay_samples": 2},
    }
    return parse_section(task.Params, _deep_update(raw, tiny), Path("params.yaml"), "gas_leak")


@pytest.fixture(scope="module")
def raw_dir(task, params, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    task.simulate(out, params, seed=7, progress=lambda _: None)
    return out


@pytest.fixture(scope="module")
def prepared(task, params, raw_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    task.prepare(raw_dir, out, params, seed=7)
    return out


def _build(task, prepared: Path, head: str):
    torch.manual_seed(0)
    return task.build_model({"model": head, "width": 4, "dropout": 0.0}, prepared)


# --- simulator ------------------------------------------------------------------------------------


def test_simulator_is_deterministic(task, params, raw_dir, tmp_path):
    again = tmp_path / "again"
    task.simulate(again, params, seed=7, progress=lambda _: None)
    assert (again / "labels.csv").read_text() == (raw_dir / "labels.csv").read_text()
    for path in sorted((raw_dir / "sequences").glob("*.npy")):
        np.testing.assert_array_equal(np.load(path), np.load(again / "sequences" / path.name))
    other = tmp_path / "other"
    task.simulate(other, params, seed=8, progress=lambda _: None)
    assert (other / "labels.csv").read_text() != (raw_dir / "labels.csv").read_text()


def test_simulator_writes_the_real_data_layout(raw_dir, params):
    labels = pd.read_csv(raw_dir / "labels.csv")
    assert list(labels.columns[:6]) == ["seq_id", "x", "y", "z", "domain", "occluded"]
    assert (labels["domain"] == "sim").sum() == params.simulate.n_sim
    assert (labels["domain"] == "field").sum() == params.simulate.n_field
    assert labels["x"].between(0, SIZE - 1).all() and labels["y"].between(0, SIZE - 1).all()
    assert labels["z"].abs().max() <= params.validation.z_abs_max
    assert labels["occluded"].isin([0, 1]).all() and labels["occluded"].sum() > 0
    frames = np.load(raw_dir / "sequences" / f"{labels['seq_id'][0]}.npy")
    assert frames.shape == (RECORDED, SIZE, SIZE) and frames.dtype == np.float32


def test_ingest_accepts_the_layout_and_refuses_a_missing_sequence(task, raw_dir, tmp_path):
    import shutil

    n = task.ingest(raw_dir, tmp_path / "copy")
    assert n == len(pd.read_csv(raw_dir / "labels.csv"))
    assert sorted(p.name for p in (tmp_path / "copy" / "sequences").iterdir()) == sorted(
        p.name for p in (raw_dir / "sequences").iterdir()
    )
    broken = tmp_path / "broken"
    shutil.copytree(raw_dir, broken)
    next((broken / "sequences").glob("*.npy")).unlink()
    with pytest.raises(ValueError, match="no sequences/<seq_id>.npy"):
        task.ingest(broken, tmp_path / "refused")


# --- augmentation ---------------------------------------------------------------------------------

PLAIN = {"copies": 2, "noise_std": 0.0, "gain_low": 1.0, "gain_high": 1.0, "gain_tilt": 0.0, "shake_px": 0.0}


def test_flip_mirrors_x():
    frames = np.zeros((RECORDED, SIZE, SIZE), dtype=np.float32)
    frames[:, 5, 3] = 1.0  # a marker at the source (row y=5, column x=3)
    label = np.array([3.0, 5.0, 1.5], dtype=np.float32)
    a = AugmentParams(flip_probability=1.0, max_time_shift=0, **PLAIN)
    out, new = augment_sequence(frames, label, np.random.default_rng(0), FRAMES, a)
    row, col = np.unravel_index(np.argmax(out[0]), out[0].shape)
    assert (col, row) == (SIZE - 1 - 3, 5)
    np.testing.assert_allclose(new, [SIZE - 1 - 3, 5.0, 1.5])
    np.testing.assert_array_equal(label, [3.0, 5.0, 1.5])  # the caller's label is not modified


def test_temporal_crop_keeps_labels():
    frames = np.arange(RECORDED, dtype=np.float32)[:, None, None] * np.ones((1, SIZE, SIZE), dtype=np.float32)
    label = np.array([4.0, 9.0, -2.0], dtype=np.float32)
    a = AugmentParams(flip_probability=0.0, max_time_shift=1, **PLAIN)
    starts = set()
    for seed in range(20):
        out, new = augment_sequence(frames, label, np.random.default_rng(seed), FRAMES, a)
        np.testing.assert_array_equal(new, label)
        start = int(out[0, 0, 0])
        np.testing.assert_array_equal(out[:, 0, 0], np.arange(start, start + FRAMES))  # consecutive frames
        starts.add(start)
    assert starts == {0, 1, 2}  # centre start 1, shifted by -1..+1


def test_noise_gain_and_shake_keep_labels():
    rng = np.random.default_rng(1)
    frames = rng.uniform(0.3, 0.7, (RECORDED, SIZE, SIZE)).astype(np.float32)
    label = np.array([6.0, 2.0, 3.0], dtype=np.float32)
    a = AugmentParams(
        copies=2,
        flip_probability=0.0,
        max_time_shift=0,
        noise_std=0.02,
        gain_low=0.8,
        gain_high=1.2,
        gain_tilt=0.1,
        shake_px=0.3,
    )
    out, new = augment_sequence(frames, label, rng, FRAMES, a)
    np.testing.assert_array_equal(new, label)
    assert out.shape == (FRAMES, SIZE, SIZE) and out.dtype == np.float32
    assert not np.allclose(out, frames[1 : 1 + FRAMES])


def test_prepare_keeps_groups_apart_and_field_separate(prepared, params):
    from mlops.data.arrays import load_array, read_meta

    with open_sealed_splits("test"):
        groups = {s: set(load_array(prepared, s, "groups")) for s in ("train", "val", "test", "field")}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert all(g.startswith("gf") for g in groups["field"]) and not any(g.startswith("gf") for g in groups["train"])
    meta = read_meta(prepared)
    assert meta["sizes"]["field"] == params.simulate.n_field
    assert load_array(prepared, "train", "x").shape[1:] == (FRAMES, SIZE, SIZE)


# --- models ---------------------------------------------------------------------------------------


def test_heads_forward_shapes(task, prepared):
    x = task.dataset(prepared, "val").tensors[0][:3]
    assert x.shape == (3, 2, FRAMES, SIZE, SIZE)
    numeric, _ = _build(task, prepared, "numeric")
    heatmap, _ = _build(task, prepared, "heatmap")
    assert numeric.eval()(x).shape == (3, N_ANSWER)
    assert heatmap.eval()(x).shape == (3, N_ANSWER + SIZE * SIZE)


def test_decode_peak_finds_the_argmax_with_subpixel_refinement():
    logits = torch.full((2, SIZE, SIZE), -20.0)
    logits[0, 4, 11] = 5.0
    logits[1, 7, 2] = logits[1, 7, 3] = 5.0  # two equal neighbours: the centroid lies between them
    xy = decode_peak(logits)
    torch.testing.assert_close(xy, torch.tensor([[11.0, 4.0], [2.5, 7.0]]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("head", ["numeric", "heatmap"])
def test_each_head_overfits_one_batch(task, prepared, head):
    x, y = task.dataset(prepared, "train")[:8]
    model, _ = _build(task, prepared, head)
    criterion = task.criterion(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    with torch.no_grad():
        first = float(criterion(model(x), y))
    for _ in range(60):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
    # The heat-map loss is a cross-entropy against a Gaussian target: its floor is the target's entropy.
    maps = y[:, N_ANSWER:]
    floor = float(-(maps * maps.clamp_min(1e-12).log()).sum(dim=1).mean()) if head == "heatmap" else 0.0
    assert float(criterion(out, y)) - floor < 0.25 * (first - floor)
    assert task.val_metrics(out, y)["xy_error"] < 1.0


def test_val_metrics_hold_the_sweep_objective(task, prepared):
    objective = load_experiment("gas_leak", ROOT / "experiments").objective.metric
    model, _ = _build(task, prepared, "heatmap")
    x, y = task.dataset(prepared, "val")[:4]
    with torch.no_grad():
        names = task.val_metrics(model.eval()(x), y)
    assert objective.removeprefix("val_") in names


@pytest.fixture(scope="module")
def evaluation(task, prepared, params, tmp_path_factory):
    model, _ = _build(task, prepared, "heatmap")
    with open_sealed_splits("test"):
        return model, task.evaluate(model, prepared, params, tmp_path_factory.mktemp("eval"))


def test_evaluate_reports_both_domains_split_by_occlusion(task, prepared, evaluation):
    model, evaluation = evaluation
    m, both_subsets = evaluation.metrics, []
    for split in ("test", "field"):
        # Each error recomputed from the model's own answers, the split's labels and its occlusion flags.
        with open_sealed_splits("test"):
            x, y = task.dataset(prepared, split).tensors
            occluded = load_array(prepared, split, "occluded").astype(bool)
        with torch.no_grad():
            err = (model.eval()(x)[:, :N_ANSWER] - y[:, :N_ANSWER]).abs().numpy()
        both_subsets.append(occluded.any() and not occluded.all())
        for i, q in enumerate(("x", "y", "z")):
            assert m[f"{split}_{q}_mae"] == pytest.approx(float(err[:, i].mean()), rel=1e-5)
            for subset, mask in (("visible", ~occluded), ("occluded", occluded)):
                want = float(err[mask, i].mean()) if mask.any() else float("nan")
                assert m[f"{split}_{subset}_{q}_mae"] == pytest.approx(want, rel=1e-5, nan_ok=True), (split, subset)
            assert m[f"{split}_visible_n"] == (~occluded).sum() and m[f"{split}_occluded_n"] == occluded.sum()
        # The study's baseline for Z: the error of answering Z = 0 on the same sequences, and the skill against it.
        zero = float(np.abs(y[:, 2].numpy()).mean())
        assert m[f"{split}_z_mae_zero"] == pytest.approx(zero, rel=1e-6)
        assert m[f"{split}_z_skill"] == pytest.approx(1 - float(err[:, 2].mean()) / zero, rel=1e-5)
        assert evaluation.images[f"heatmap_overlays_{split}.png"].is_file()
    assert any(both_subsets)  # else a swapped occlusion mask could go unseen
    assert list(evaluation.tables["error_table"]["quantity"]) == ["X mean error", "Y mean error", "Z mean error"]


def test_evaluate_reads_the_sealed_splits_only_when_opened(task, prepared, params, tmp_path):
    model, _ = _build(task, prepared, "numeric")
    with pytest.raises(SealedSplitError):
        task.evaluate(model, prepared, params, tmp_path)


def test_cases_hold_one_row_per_sequence_grouped_by_scene(prepared, evaluation):
    cases = evaluation[1].cases
    assert {"case", "group", "stratum", "occluded", "x", "y", "z", "pred_x", "pred_y", "pred_z"} <= set(cases)
    assert cases["case"].is_unique
    for split in ("test", "field"):
        rows = cases[cases["stratum"] == split]
        with open_sealed_splits("test"):
            ids, groups = load_array(prepared, split, "ids"), load_array(prepared, split, "groups")
        assert list(rows["case"]) == list(ids) and list(rows["group"]) == list(groups)
        assert rows["group"].nunique() > 1 and rows.groupby("group").size().max() > 1  # scenes, not sequences
    assert set(cases["stratum"]) == {"test", "field"}


def test_score_of_the_cases_is_what_evaluate_reports(task, params, evaluation):
    _, evaluation = evaluation
    scored = task.score(evaluation.cases, params)
    assert {"test_x_mae", "test_y_mae", "test_z_mae", "test_xy_error", "field_x_mae", "test_z_skill"} <= set(scored)
    assert set(params.gates.min) | set(params.gates.max) <= set(scored)  # every gate has an interval
    for name, value in scored.items():
        assert value == pytest.approx(evaluation.metrics[name], rel=1e-9, nan_ok=True), name
    # A resample of scenes (one repeated, the field footage dropped) scores without raising: field gives NaN.
    test = evaluation.cases[evaluation.cases["stratum"] == "test"]
    first = test["group"].iloc[0]
    resample = pd.concat([test, test[test["group"] == first]], ignore_index=True)
    again = task.score(resample, params)
    assert np.isnan(again["field_x_mae"]) and np.isfinite(again["test_x_mae"])
    err = np.abs(resample["pred_x"] - resample["x"]).mean()
    assert again["test_x_mae"] == pytest.approx(err, rel=1e-9)


def test_z_baseline_is_the_error_of_answering_zero(task, params):
    cases = pd.DataFrame(
        {
            "case": ["a", "b", "c", "d"],
            "group": ["g1", "g1", "g2", "g2"],
            "stratum": "test",
            "occluded": [0, 1, 0, 1],
            "x": 1.0,
            "y": 1.0,
            "z": [2.0, -4.0, 6.0, -8.0],
            "pred_x": 1.0,
            "pred_y": 1.0,
            "pred_z": 0.0,
        }
    )
    scored = task.score(cases, params)
    assert scored["test_z_mae_zero"] == scored["test_z_mae"] == 5.0
    assert scored["test_z_skill"] == 0.0  # predicting zero has no skill
    cases["pred_z"] = cases["z"] * 0.5
    assert task.score(cases, params)["test_z_skill"] == pytest.approx(0.5)
    assert task.score(cases, params)["test_occluded_z_mae"] == pytest.approx(3.0)


def test_a_degraded_model_is_refused_by_the_no_regression_gate(task, prepared, params, tmp_path):
    """The release's no-regression gate (what check_gates runs: ``differences``, then the gates' ``regressions``)
    with params.yaml's real gates and bootstrap, on real models: a copy of a trained champion with Gaussian noise
    of each parameter tensor's own spread added to every parameter is refused; the champion against itself is not.
    """
    started = time.perf_counter()
    project = load_params(ROOT / "params.yaml")
    gates, boot, seed = project.task("gas_leak").gates, project.base.bootstrap, project.base.seed
    # The file's evaluated model is untrained: the champion is that model trained briefly on the training split
    # (X error 2.4 -> 1.7 px, Z skill 0 -> 0.5 on the test split).
    champion, _ = _build(task, prepared, "heatmap")
    x, y = task.dataset(prepared, "train").tensors
    criterion, opt = task.criterion(champion), torch.optim.Adam(champion.parameters(), lr=3e-3)
    champion.train()
    for _ in range(40):
        opt.zero_grad()
        criterion(champion(x), y).backward()
        opt.step()
    degraded, noise = copy.deepcopy(champion), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in degraded.parameters():
            if p.numel() > 1:  # a single number has no spread to scale by
                p.add_(torch.randn(p.shape, generator=noise) * p.std())
    mine = evaluate_sealed(task, champion, prepared, params, tmp_path / "champion", reader="test").cases
    theirs = evaluate_sealed(task, degraded, prepared, params, tmp_path / "degraded", reader="test").cases
    failed, verdicts = gates.regressions(differences(task, theirs, mine, params, boot, seed))
    groups = mine.groupby("stratum")["group"].nunique().to_dict()
    print(f"groups {groups}, {len(mine)} cases:", *verdicts, sep="\n  ")
    assert failed and all("worse by more than" in f for f in failed), verdicts
    assert {f.split(":")[0] for f in failed} <= set(gates.tolerance)
    failed, verdicts = gates.regressions(differences(task, mine, mine, params, boot, seed))
    assert not failed and all(v.endswith("indistinguishable") for v in verdicts), verdicts
    print(f"  {time.perf_counter() - started:.1f} s")


def test_claim_names_the_experiment_arms(task):
    arms = load_experiment("gas_leak", ROOT / "experiments").arms
    assert {task.claim.better, task.claim.than} <= set(arms)
    assert task.claim.metric.startswith("test_") and not task.claim.higher_is_better


# --- validation -----------------------------------------------------------------------------------


def test_validation_passes_clean_data_and_catches_a_broken_dataset(task, params, raw_dir, tmp_path):
    assert validate_dataset(task, raw_dir, params).success

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(raw_dir, broken)
    labels = pd.read_csv(broken / "labels.csv", dtype={"seq_id": str})
    ids = labels["seq_id"].tolist()
    frames = np.load(broken / "sequences" / f"{ids[0]}.npy")
    frames[3] = np.nan  # a dropped frame
    np.save(broken / "sequences" / f"{ids[0]}.npy", frames)
    labels.loc[1, "x"] = SIZE + 5  # a source outside the frame
    labels.loc[2, "z"] = 10 * params.validation.z_abs_max
    shutil.copy2(broken / "sequences" / f"{ids[4]}.npy", broken / "sequences" / f"{ids[5]}.npy")  # duplicate
    labels.to_csv(broken / "labels.csv", index=False)

    report = validate_dataset(task, broken, params)
    assert not report.success
    failed = {(f.expectation, f.column): f.samples for f in report.failures}
    assert ids[0] in failed[("expect_column_values_to_be_in_set", "finite")]
    assert ids[1] in failed[("expect_column_values_to_be_in_set", "label_in_frame")]
    assert ids[2] in failed[("expect_column_values_to_be_between", "z")]
    assert ("expect_column_values_to_be_unique", "content_hash") in failed


# --- predictor ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["numeric", "heatmap"])
def predictor(request, task, prepared, tmp_path_factory):
    model, spec = _build(task, prepared, request.param)
    out = tmp_path_factory.mktemp(f"model-{request.param}")
    save_model_dir(out, model.eval(), spec)
    return load_predictor(out / "weights.pt", out / "spec.json")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _stack(raw_dir: Path) -> np.ndarray:
    return np.load(sorted((raw_dir / "sequences").glob("*.npy"))[0])


def test_predictor_answers_a_good_npy_and_npz(predictor, raw_dir):
    stack = _stack(raw_dir)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, frames=stack)
    for data, kind in ((_npy(stack), "application/x-npy"), (buffer.getvalue(), "application/zip")):
        assert kind in predictor.accepted_content_types
        result = predictor.predict_upload(data, kind)
        assert {"x", "y", "z", "heatmap_png", "explanation"} <= set(result)
        # the model's own answer for the stack's middle FRAMES frames, rounded as served
        want = predictor.predict_array(to_channels(centre_crop(stack, FRAMES))[None])[0]
        assert [result[k] for k in ("x", "y", "z")] == pytest.approx([round(float(v), 4) for v in want], abs=6e-4)
        assert base64.b64decode(result["heatmap_png"]).startswith(b"\x89PNG")
    assert predictor.predict_array(to_channels(stack[:FRAMES])[None]).shape == (1, N_ANSWER)
    assert predictor.predict_array(predictor.warmup_input()).shape == (1, N_ANSWER)


def test_explain_false_answers_the_same_without_computing_the_heat_map(predictor, raw_dir, monkeypatch):
    data = _npy(_stack(raw_dir))
    full = predictor.answer_upload(data, "application/x-npy")
    inference = sys.modules[type(predictor).__module__]

    def refuse(*args, **kwargs):
        raise AssertionError("explain=false computed the explanation")

    monkeypatch.setattr(inference, "explain_batch", refuse)
    monkeypatch.setattr(inference, "heatmap_overlay_png", refuse)
    plain = predictor.answer_upload(data, "application/x-npy", explain=False)
    assert "heatmap_png" not in plain
    full.pop("heatmap_png")
    assert plain == full
    monkeypatch.undo()
    predictor.warm_up()  # a zero stack runs the whole path at model load


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda s: _npy(s[0]), 422),  # rank 2: one frame
        (lambda s: _npy(s[None]), 422),  # rank 4
        (lambda s: _npy(np.where(np.arange(s.size).reshape(s.shape) == 7, np.nan, s)), 422),
        (lambda s: _npy(np.where(np.arange(s.size).reshape(s.shape) == 7, np.inf, s)), 422),
        (lambda s: _npy((s * 1000).astype(np.int32)), 422),  # wrong dtype
        (lambda s: _npy(s[:, :, :-1]), 422),  # wrong frame size
        (lambda s: _npy(s[: FRAMES - 1]), 422),  # too few frames
        (lambda s: _npy(np.zeros((600, SIZE, SIZE), np.float32)), 413),  # oversized
        (lambda s: _npy(np.array([{"a": 1}], dtype=object)), 422),  # pickled objects are never loaded
        (lambda s: b"this is not an array at all", 415),
        (lambda s: b"\x93NUMPY garbage after the magic", 422),
        (lambda s: b"PK\x03\x04 broken zip", 422),
        (lambda s: b"", 400),
    ],
)
def test_predictor_rejects_bad_uploads_with_4xx(predictor, raw_dir, make, status):
    with pytest.raises(BadInput) as info:
        predictor.predict_upload(make(_stack(raw_dir)), "application/octet-stream")
    assert info.value.status == status
    if status == 422 and "dtype" in info.value.message:
        assert f"(frames, {SIZE}, {SIZE})" in info.value.message


def test_predictor_names_the_expected_shape(predictor, raw_dir):
    with pytest.raises(BadInput) as info:
        predictor.predict_upload(_npy(_stack(raw_dir)[0]), "application/npy")
    assert f"(frames, {SIZE}, {SIZE})" in info.value.message and "float" in info.value.message


def test_npz_with_several_unnamed_arrays_is_refused(predictor, raw_dir):
    buffer = io.BytesIO()
    stack = _stack(raw_dir)
    np.savez(buffer, a=stack, b=stack)
    with pytest.raises(BadInput) as info:
        predictor.predict_upload(buffer.getvalue(), "application/zip")
    assert info.value.status == 422 and "'frames'" in info.value.message


def test_spec_is_plain_json(prepared, task, tmp_path):
    model, spec = _build(task, prepared, "heatmap")
    save_model_dir(tmp_path, model, spec)
    spec_json = json.loads((tmp_path / "spec.json").read_text())
    assert spec_json["model"] == "heatmap" and spec_json["extra"]["frames"] == FRAMES
    assert MODELS.names() == ["heatmap", "numeric"]


def test_channels_last_fit_is_repeatable_and_hands_back_the_default_layout(task, prepared):
    """The opt-in channels-last fit (mlops/fit/loop.py): two fits give bit-identical weights, the model comes back
    in the default layout (what save, export and serving expect), and the layout changes only the rounding:
    the same fit in the default layout ends at the same validation error to float tolerance."""
    from mlops.fit.loop import FitConfig, fit

    cfg = FitConfig(epochs=2, lr=3e-3, batch_size=8, weight_decay=0.0, seed=3, monitor="xy_error", mode="min")
    train, val = task.dataset(prepared, "train"), task.dataset(prepared, "val")

    def fitted(channels_last: bool):
        model, _ = _build(task, prepared, "heatmap")
        assert model.channels_last  # the class opts in
        model.channels_last = channels_last
        return model, fit(task, model, train, val, cfg)

    (first, result), (second, _), (default, reference) = fitted(True), fitted(True), fitted(False)
    for name, weight in first.state_dict().items():
        assert torch.equal(weight, second.state_dict()[name]), name
        assert weight.is_contiguous(), f"{name} came back in channels-last layout"
    assert result.best_value == pytest.approx(reference.best_value, rel=1e-3)
    assert any(not torch.equal(w, default.state_dict()[k]) for k, w in first.state_dict().items())
