"""fracture: simulator, validation suite, split + augmentation, CNN, evaluation and the predictor."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from mlops.data.arrays import SealedSplitError, load_array, open_sealed_splits
from mlops.data.split import split_groups
from mlops.inference.base import BadInput, load_predictor
from mlops.params import load_params, parse_section
from mlops.stats import bootstrap
from mlops.tasks import get_task
from mlops.tasks.fracture.evaluate import ood_photo_paths
from mlops.tasks.fracture.layout import CLASSES
from mlops.tasks.fracture.metrics import OUTLIER_WEIGHT, confidence_auroc, macro_f1, unknown_threshold
from mlops.tasks.fracture.model import MODELS, N_CLASSES, UNKNOWN, decide
from mlops.tasks.fracture.prepare import OUTLIER, augment_texture
from mlops.tasks.fracture.simulate import outlier_image, simulate_fractographs
from mlops.training.scoring import differences, evaluate_sealed
from mlops.validation import validate_dataset
from tests.conftest import ROOT, assert_cam_layer_is_spatial

TASK = get_task("fracture")
N_SPECIMENS, PER_SPECIMEN = 12, 3


def tiny_section() -> dict:
    """The repo's fracture params with every size shrunk so each test takes seconds."""
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["fracture"]
    section["simulate"].update(n_specimens=N_SPECIMENS, images_per_specimen=PER_SPECIMEN, min_size=64, max_size=96)
    section["validation"].update(min_images_per_class=2, min_width=32, min_height=32)
    section["input"].update(size=32)
    section["augment"].update(copies=2, outlier_share=0.2)
    section["evaluate"].update(gradcam_samples=4, ood_crops=1)
    return section


@pytest.fixture()
def params():
    return parse_section(TASK.Params, tiny_section(), Path("params.yaml"), "fracture")


@pytest.fixture()
def raw(tmp_path, params) -> Path:
    folder = tmp_path / "raw" / "fracture"
    TASK.simulate(folder, params, seed=3, progress=lambda _: None)
    return folder


def simulate_small(folder: Path, seed: int, n_specimens: int = 4) -> None:
    simulate_fractographs(folder, n_specimens, 2, 48, 64, (80, 175), (28, 55), 0.5, 1.2, seed)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


# --- simulator ------------------------------------------------------------------------------------


def test_simulator_is_deterministic_and_writes_the_real_layout(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, seed in ((a, 5), (b, 5), (c, 6)):
        simulate_small(folder, seed)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    labels = pd.read_csv(a / "labels.csv")
    assert list(labels.columns) == ["image_id", "class", "source", "magnification"]
    assert set(labels["class"]) == set(CLASSES)
    for iid in labels.image_id:
        with Image.open(a / "images" / f"{iid}.png") as img:
            assert img.mode == "L" and img.width == img.height and 48 <= img.width <= 64


def test_classes_are_not_separable_by_mean_intensity_or_image_size(tmp_path):
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    folder = tmp_path / "sim"
    simulate_fractographs(folder, 40, 3, 48, 72, (80, 175), (28, 55), 0.5, 1.2, seed=0)
    labels = pd.read_csv(folder / "labels.csv")
    images = [np.asarray(Image.open(folder / "images" / f"{i}.png"), dtype=np.float32) for i in labels.image_id]
    y, groups = labels["class"].to_numpy(), labels["source"].to_numpy()
    for cue in ([[im.mean()] for im in images], [[im.shape[0]] for im in images]):
        # A flexible classifier on the single cue, cross-validated by specimen: chance is 0.25.
        accuracy = cross_val_score(
            DecisionTreeClassifier(max_depth=3, random_state=0), np.asarray(cue), y, groups=groups, cv=GroupKFold(5)
        ).mean()
        assert accuracy < 0.4


def test_outlier_images_are_valid_and_varied():
    rng = np.random.default_rng(0)
    images = [outlier_image(rng, 32) for _ in range(6)]
    assert all(im.shape == (32, 32) and im.dtype == np.uint8 for im in images)
    assert len({im.tobytes() for im in images}) == 6 and all(im.std() > 3 for im in images)


# --- validation -----------------------------------------------------------------------------------


def test_validation_passes_on_simulated_data(raw, params):
    report = validate_dataset(TASK, raw, params)
    assert report.success, report.summary()


@pytest.mark.parametrize(
    "breakage, expectation",
    [
        ("unknown_class", "expect_column_values_to_be_in_set"),
        ("corrupt", "expect_column_values_to_be_in_set"),
        ("duplicate", "expect_column_values_to_be_unique"),
    ],
)
def test_validation_fails_on_broken_data_and_names_samples(raw, params, breakage, expectation):
    labels = pd.read_csv(raw / "labels.csv", dtype={"image_id": str})
    victim = labels.image_id[1]
    if breakage == "unknown_class":
        labels.loc[1, "class"] = "corrosion"
        labels.to_csv(raw / "labels.csv", index=False)
    elif breakage == "corrupt":
        (raw / "images" / f"{victim}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    else:
        (raw / "images" / f"{victim}.png").write_bytes((raw / "images" / f"{labels.image_id[0]}.png").read_bytes())
    report = validate_dataset(TASK, raw, params)
    assert not report.success
    assert expectation in {f.expectation for f in report.failures}
    assert any(victim in f.samples for f in report.failures), report.summary()


def test_ingest_copies_a_real_layout_and_refuses_missing_images(raw, tmp_path):
    out = tmp_path / "ingested"
    assert TASK.ingest(raw, out) == N_SPECIMENS * PER_SPECIMEN
    assert len(list((out / "images").glob("*.png"))) == N_SPECIMENS * PER_SPECIMEN
    next((raw / "images").glob("*.png")).unlink()
    with pytest.raises(ValueError, match="no file"):
        TASK.ingest(raw, tmp_path / "again")
    (raw / "labels.csv").unlink()
    with pytest.raises(ValueError, match="labels.csv"):
        TASK.ingest(raw, tmp_path / "again")


# --- prepare --------------------------------------------------------------------------------------


def test_split_by_source_leaks_nothing_and_augmentation_keeps_labels(raw, params, tmp_path):
    out = tmp_path / "prepared"
    sizes = TASK.prepare(raw, out, params, seed=1)
    with open_sealed_splits("test"):
        groups = {s: set(load_array(out, s, "groups")) - {"outlier"} for s in ("train", "val", "test")}
        assert OUTLIER not in load_array(out, "test", "y")
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]

    labels = pd.read_csv(raw / "labels.csv", dtype={"image_id": str}).set_index("image_id")
    ids, y = load_array(out, "train", "ids"), load_array(out, "train", "y")
    real = y != OUTLIER
    assert np.array_equal(np.asarray(CLASSES)[y[real]], labels.loc[ids[real], "class"].to_numpy())
    n_real = params.augment.copies * (N_SPECIMENS * PER_SPECIMEN - sizes["val"] - sizes["test"])
    assert real.sum() == n_real and sizes["train"] == len(y)
    assert 0 < (~real).sum() < len(y)  # outlier exposure is in training only
    assert OUTLIER not in load_array(out, "val", "y")
    x = load_array(out, "train", "x")
    assert x.shape == (len(y), 32, 32) and x.dtype == np.uint8
    first = np.flatnonzero(ids == ids[0])
    assert len(first) == params.augment.copies and not np.array_equal(x[first[0]], x[first[1]])


def test_split_by_source_stratified_by_class_keeps_sources_whole_and_every_class_in_every_split():
    groups = np.repeat([f"s{i}" for i in range(20)], 3)
    y = np.repeat(np.arange(20) % 4, 3)
    idx = split_groups(groups, 0.2, 0.2, seed=0, strata=y)
    assert sorted(np.concatenate(list(idx.values()))) == list(range(60))
    for split, rows in idx.items():
        assert set(y[rows]) == {0, 1, 2, 3}, split
        others = np.concatenate([r for s, r in idx.items() if s != split])
        assert not set(groups[rows]) & set(groups[others])


def test_augmentation_is_label_preserving_geometry_and_photometry(params):
    rng = np.random.default_rng(0)
    stripes = np.tile((np.arange(32) % 4 < 2).astype(np.uint8) * 200 + 20, (32, 1))  # vertical bands
    out = augment_texture(stripes, rng, params.augment)
    assert out.shape == stripes.shape and out.dtype == np.uint8
    # Still a banded texture of the same period (a rotation/flip moves bands, it does not destroy them).
    for _ in range(5):
        out = augment_texture(stripes, rng, params.augment)
        spectrum = np.abs(np.fft.fft2(out.astype(float) - out.mean()))
        fy, fx = np.unravel_index(np.argmax(spectrum), spectrum.shape)
        freq = np.fft.fftfreq(32, d=1 / 32)
        assert np.hypot(freq[fy], freq[fx]) == pytest.approx(8, abs=1.5)


def test_prepare_is_deterministic(raw, params, tmp_path):
    TASK.prepare(raw, tmp_path / "a", params, seed=2)
    TASK.prepare(raw, tmp_path / "b", params, seed=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


# --- model ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [3, 4, 5])
def test_model_forward_shape_and_gradcam_layer(depth):
    model = MODELS.build("cnn", width=4, depth=depth, dropout=0.0)
    assert model(torch.rand(3, 1, 32, 32)).shape == (3, N_CLASSES)
    assert_cam_layer_is_spatial(model, torch.rand(3, 1, 32, 32))


def test_model_is_invariant_to_brightness_and_contrast():
    model = MODELS.build("cnn", width=4, depth=3, dropout=0.0).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model(0.5 * x + 0.2), atol=1e-4)


def test_model_overfits_one_batch():
    torch.manual_seed(0)
    model = MODELS.build("cnn", width=8, depth=3, dropout=0.0)
    x, y = torch.rand(16, 1, 32, 32), torch.arange(16) % N_CLASSES
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = TASK.criterion(model)(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
    assert (model.eval()(x).argmax(1) == y).float().mean() > 0.9


def test_loss_pulls_outliers_towards_a_uniform_prediction():
    loss = TASK.criterion(MODELS.build("cnn", width=4, depth=3, dropout=0.0))
    flat = torch.zeros(2, N_CLASSES)
    assert float(loss(flat, torch.tensor([OUTLIER, OUTLIER]))) == pytest.approx(OUTLIER_WEIGHT * np.log(N_CLASSES))
    sure = torch.tensor([[9.0, 0, 0, 0], [9.0, 0, 0, 0]])
    assert float(loss(sure, torch.tensor([0, OUTLIER]))) > float(loss(sure, torch.tensor([0, 0])))
    metrics = TASK.val_metrics(sure, torch.tensor([0, OUTLIER]))  # outliers do not count in validation
    assert metrics["accuracy"] == 1.0


def test_macro_f1_averages_over_the_classes_present():
    # Class 0: tp 2, fp 2 -> F1 2/3; class 1 is never predicted -> 0; classes 2 and 3 appear nowhere and do not count.
    assert macro_f1(np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1])) == pytest.approx((2 / 3 + 0) / 2)
    # A class only predicted, never actual, scores 0 too.
    assert macro_f1(np.array([0, 3]), np.array([0, 0])) == pytest.approx((2 / 3 + 0) / 2)
    assert np.isnan(macro_f1(np.array([], dtype=np.int64), np.array([], dtype=np.int64)))
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        predicted, actual = rng.integers(0, 3, 30), rng.integers(0, 4, 30)
        assert macro_f1(predicted, actual) == pytest.approx(f1_score(actual, predicted, average="macro"))


def test_unknown_model_name_fails_loudly():
    with pytest.raises(KeyError, match="unknown model 'resnet'"):
        MODELS.build("resnet")


# --- evaluation and serving -----------------------------------------------------------------------


@pytest.fixture()
def trained(raw, params, tmp_path):
    """A prepared tiny dataset and a briefly trained model saved as weights + spec (the served form)."""
    prepared = tmp_path / "prepared"
    TASK.prepare(raw, prepared, params, seed=1)
    torch.manual_seed(0)
    model, spec = TASK.build_model({"model": "cnn", "width": 8, "depth": 3, "dropout": 0.0}, prepared)
    x, y = TASK.dataset(prepared, "train").tensors
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        opt.zero_grad()
        TASK.criterion(model)(model(x), y).backward()
        opt.step()
    spec = TASK.calibrate(model, spec, prepared, params)  # as the train stage does (the test split stays sealed)
    weights, spec_path = tmp_path / "weights.pt", tmp_path / "spec.json"
    torch.save(model.state_dict(), weights)
    spec_path.write_text(json.dumps(spec.to_json()))
    return {"model": model, "prepared": prepared, "weights": weights, "spec": spec_path, "built": spec}


@pytest.fixture()
def evaluation(trained, params, tmp_path):
    with open_sealed_splits("test"):
        return TASK.evaluate(trained["model"], trained["prepared"], params, tmp_path / "eval")


def test_evaluate_reports_metrics_calibration_and_out_of_domain(trained, evaluation, params):
    m = evaluation.metrics
    for key in ("test_accuracy", "test_macro_f1", "test_ece", "ood_mean_max_probability", "ood_unknown_share"):
        assert key in m
    assert all(f"test_recall_{c}" in m for c in CLASSES)
    assert 0 <= m["test_ece"] <= 1 and m["ood_images"] >= 2
    assert all(path.is_file() for path in evaluation.images.values())
    assert {"confusion_matrix.png", "reliability_diagram.png", "out_of_domain.png"} <= set(evaluation.images)
    assert len(evaluation.tables["out_of_domain"]) == m["ood_images"]

    # The numbers themselves, recomputed from the model's answers on the test split.
    from sklearn.metrics import f1_score

    with open_sealed_splits("test"):
        x, y = TASK.dataset(trained["prepared"], "test").tensors
    with torch.no_grad():
        probs = trained["model"].eval()(x).softmax(dim=1).numpy()
    predicted, actual, confidence = probs.argmax(axis=1), y.numpy(), probs.max(axis=1)
    correct = predicted == actual
    assert m["test_accuracy"] == pytest.approx(correct.mean())
    assert m["test_macro_f1"] == pytest.approx(f1_score(actual, predicted, average="macro"))
    for c, name in enumerate(CLASSES):
        want = (predicted[actual == c] == c).mean() if (actual == c).any() else float("nan")
        assert m[f"test_recall_{name}"] == pytest.approx(want, nan_ok=True), name
    n_bins = params.evaluate.calibration_bins  # equal-width bins [k/n, (k+1)/n), the last one closed
    ece = 0.0
    for k in range(n_bins):
        in_bin = (confidence >= k / n_bins) & ((confidence < (k + 1) / n_bins) | (k == n_bins - 1))
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    assert m["test_ece"] == pytest.approx(ece, abs=1e-6)
    # The "unknown" threshold is the served one, calibrated on validation: it withholds the share of validation
    # fractographs params.input asks for.
    threshold = json.loads(trained["spec"].read_text())["extra"]["unknown_threshold"]
    assert m["unknown_threshold"] == pytest.approx(threshold)
    x_val, _ = TASK.dataset(trained["prepared"], "val").tensors
    with torch.no_grad():
        val_confidence = trained["model"].eval()(x_val).softmax(dim=1).max(dim=1).values.numpy()
    assert (val_confidence < threshold).mean() <= params.input.unknown_val_share
    assert threshold == pytest.approx(np.sort(val_confidence)[int(params.input.unknown_val_share * len(x_val))])
    assert m["test_unknown_share"] == pytest.approx((confidence < threshold).mean())


def test_cases_hold_test_images_by_specimen_and_probe_photos_with_their_crops(evaluation, raw, params):
    cases = evaluation.cases
    assert {"case", "group", "stratum", "actual", "predicted", "confidence", "correct", "answered"} <= set(cases)
    assert cases["case"].is_unique and set(cases["stratum"]) == {"test", "probe"}
    test, probe = cases[cases["stratum"] == "test"], cases[cases["stratum"] == "probe"]
    labels = pd.read_csv(raw / "labels.csv", dtype={"image_id": str, "source": str}).set_index("image_id")
    assert test["group"].tolist() == labels.loc[test["case"], "source"].tolist()  # the specimen is the group
    assert (test["correct"] == (test["actual"] == test["predicted"])).all()
    # each probe photo is one group: the whole photo and its corner crops
    per_photo = probe.groupby("group")["case"].count()
    assert len(per_photo) == len(ood_photo_paths()) and (per_photo == 1 + params.evaluate.ood_crops).all()
    assert evaluation.metrics["ood_images"] == len(probe)


def test_metrics_are_scored_from_the_cases(evaluation, params):
    scored = TASK.score(evaluation.cases, params)
    assert {
        "test_accuracy",
        "test_macro_f1",
        "test_ece",
        "ood_auroc",
        "test_unknown_share",
        "ood_unknown_share",
    } <= set(scored)
    for name, value in scored.items():
        assert evaluation.metrics[name] == pytest.approx(value, rel=1e-9, nan_ok=True), name
    probe = evaluation.cases[evaluation.cases["stratum"] == "probe"]
    test = evaluation.cases[evaluation.cases["stratum"] == "test"]
    assert scored["ood_auroc"] == pytest.approx(
        confidence_auroc(test["confidence"].to_numpy(), probe["confidence"].to_numpy())
    )


def test_score_of_degenerate_resamples_is_nan_never_an_error(evaluation, params):
    cases = evaluation.cases
    assert all(np.isnan(v) for v in TASK.score(cases.iloc[:0], params).values())
    only_probe = TASK.score(cases[cases["stratum"] == "probe"], params)
    assert np.isnan(only_probe["test_accuracy"]) and np.isnan(only_probe["ood_auroc"])
    assert np.isfinite(only_probe["ood_unknown_share"])
    only_test = TASK.score(cases[cases["stratum"] == "test"], params)
    assert np.isnan(only_test["ood_auroc"]) and np.isfinite(only_test["test_ece"])
    one = TASK.score(cases.iloc[[0, 0]], params)  # one image twice: one class present
    assert np.isfinite(one["test_macro_f1"]) and sum(np.isnan(one[f"test_recall_{c}"]) for c in CLASSES) == 3
    intervals = bootstrap(cases, lambda c: TASK.score(c, params), resamples=200, seed=0)
    assert intervals["test_accuracy"].low is not None and intervals["ood_auroc"].low is not None


def test_unknown_threshold_is_calibrated_on_validation_and_never_reads_test(trained, params, tmp_path):
    # Calibration runs with the test split sealed (the fixture calibrated outside open_sealed_splits) ...
    model, prepared = trained["model"], trained["prepared"]
    first = TASK.calibrate(model, trained["built"], prepared, params).extra["unknown_threshold"]
    assert first == json.loads(trained["spec"].read_text())["extra"]["unknown_threshold"]
    # ... and the test split's content does not move it, nor the threshold evaluation reports.
    with open_sealed_splits("test"):
        before = TASK.evaluate(model, prepared, params, tmp_path / "before").metrics
    test_x = prepared / "test" / "x.npy"
    np.save(test_x, np.random.default_rng(0).integers(0, 256, np.load(test_x).shape, dtype=np.uint8))
    assert TASK.calibrate(model, trained["built"], prepared, params).extra["unknown_threshold"] == first
    with open_sealed_splits("test"):
        after = TASK.evaluate(model, prepared, params, tmp_path / "after").metrics
    assert after["unknown_threshold"] == before["unknown_threshold"] == pytest.approx(first)
    assert after["test_accuracy"] != before["test_accuracy"] or after["test_ece"] != before["test_ece"]
    # ... while a different validation split does.
    val_x = prepared / "val" / "x.npy"
    np.save(val_x, np.load(val_x)[:, ::2, ::2].repeat(2, axis=1).repeat(2, axis=2))
    assert TASK.calibrate(model, trained["built"], prepared, params).extra["unknown_threshold"] != first
    with pytest.raises(SealedSplitError):
        TASK.evaluate(model, prepared, params, tmp_path / "sealed")


def test_unknown_threshold_withholds_at_most_the_share():
    confidence = np.array([0.9, 0.3, 0.5, 0.7, 0.8, 0.4, 0.95, 0.6, 0.85, 0.65])
    assert unknown_threshold(confidence, 0.0) == 0.3  # nothing withheld
    assert unknown_threshold(confidence, 0.2) == 0.5  # 0.3 and 0.4 withheld
    assert unknown_threshold(confidence, 0.25) == 0.5
    for share in (0.0, 0.1, 0.33, 0.5, 0.99):
        assert (confidence < unknown_threshold(confidence, share)).mean() <= share
    with pytest.raises(ValueError, match="no in-domain"):
        unknown_threshold(np.array([]), 0.05)


def test_a_spec_without_a_calibrated_threshold_is_not_served(trained):
    spec = json.loads(trained["spec"].read_text())
    del spec["extra"]["unknown_threshold"]
    trained["spec"].write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="calibrated on validation"):
        load_predictor(trained["weights"], trained["spec"])


def test_a_degraded_model_is_refused_by_the_no_regression_gate(trained, params, tmp_path):
    """The release's no-regression gate (what check_gates runs: ``differences``, then the gates' ``regressions``)
    with params.yaml's real gates and bootstrap, on real models: a copy of the champion whose class head is negated
    (it answers the failure mode the champion finds least likely: a sign bug) is refused; the champion against
    itself is not."""
    started = time.perf_counter()
    project = load_params(ROOT / "params.yaml")
    gates, boot, seed = project.task("fracture").gates, project.base.bootstrap, project.base.seed
    champion, prepared = trained["model"].train(), trained["prepared"]
    # The fixture's 5 steps leave the model near chance on the 4 test specimens; trained on (30 steps in all) it
    # gets most of them right, a champion a regression can trail.
    x, y = TASK.dataset(prepared, "train").tensors
    opt = torch.optim.Adam(champion.parameters(), lr=3e-3)
    for _ in range(25):
        opt.zero_grad()
        TASK.criterion(champion)(champion(x), y).backward()
        opt.step()
    degraded = copy.deepcopy(champion)
    last = degraded.head[-1]
    with torch.no_grad():
        last.weight.neg_(), last.bias.neg_()
    mine = evaluate_sealed(TASK, champion, prepared, params, tmp_path / "champion", reader="test").cases
    theirs = evaluate_sealed(TASK, degraded, prepared, params, tmp_path / "degraded", reader="test").cases
    failed, verdicts = gates.regressions(differences(TASK, theirs, mine, params, boot, seed))
    groups = mine.groupby("stratum")["group"].nunique().to_dict()
    print(f"groups {groups}, {len(mine)} cases:", *verdicts, sep="\n  ")
    assert failed and all("worse by more than" in f for f in failed), verdicts
    assert {f.split(":")[0] for f in failed} <= set(gates.tolerance)
    failed, verdicts = gates.regressions(differences(TASK, mine, mine, params, boot, seed))
    assert not failed and all(v.endswith("indistinguishable") for v in verdicts), verdicts
    print(f"  {time.perf_counter() - started:.1f} s")


def test_gated_metrics_are_scored_and_have_a_tolerance(evaluation):
    section = parse_section(
        TASK.Params, yaml.safe_load((ROOT / "params.yaml").read_text())["fracture"], ROOT, "fracture"
    )
    gates = section.gates
    assert {"test_accuracy", "test_macro_f1", "ood_auroc"} <= set(gates.min) and "test_ece" in gates.max
    assert set(gates.min) | set(gates.max) == set(gates.tolerance)
    assert set(gates.tolerance) <= set(TASK.score(evaluation.cases, section))


def test_confidence_auroc_and_decision():
    assert confidence_auroc(np.array([0.9, 0.8]), np.array([0.3, 0.5])) == 1.0
    assert confidence_auroc(np.array([0.5]), np.array([0.5])) == 0.5
    assert decide(np.array([0.1, 0.7, 0.1, 0.1]), 0.6) == CLASSES[1]
    assert decide(np.array([0.1, 0.5, 0.2, 0.2]), 0.6) == UNKNOWN


def test_predictor_answers_a_good_upload_with_probabilities_and_heatmap(trained):
    predictor = load_predictor(trained["weights"], trained["spec"])
    assert predictor.predict_array(predictor.warmup_input()).shape == (1, N_CLASSES)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (80, 100), dtype=np.uint8)
    for fmt, kind in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        result = predictor.predict_upload(png_bytes(image, fmt), kind)
        assert result["class"] in (*CLASSES, UNKNOWN)
        assert result["most_likely"] in CLASSES
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert base64.b64decode(result["heatmap_png"]).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "data, status",
    [(b"", 400), (b"hello, this is text", 415), (b"\x89PNG\r\n\x1a\n" + b"broken" * 20, 422)],
)
def test_predictor_refuses_bad_uploads_with_4xx(trained, data, status):
    predictor = load_predictor(trained["weights"], trained["spec"])
    with pytest.raises(BadInput) as info:
        predictor.predict_upload(data, "image/png")
    assert info.value.status == status


def test_predictor_answers_unknown_on_an_out_of_domain_photo_under_a_high_threshold(trained):
    photos = ood_photo_paths()
    assert photos, "scikit-learn ships china.jpg/flower.jpg"
    spec = json.loads(trained["spec"].read_text())
    spec["extra"]["unknown_threshold"] = 0.99
    trained["spec"].write_text(json.dumps(spec))
    predictor = load_predictor(trained["weights"], trained["spec"])
    result = predictor.predict_upload(photos[0].read_bytes(), "image/jpeg")
    assert result["class"] == UNKNOWN and result["confidence"] < 0.99
    assert "below" in result["explanation"]


def test_params_section_of_repo_parses_and_task_is_registered():
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["fracture"]
    parsed = parse_section(TASK.Params, section, ROOT / "params.yaml", "fracture")
    assert parsed.input.size >= 16 and 0 <= parsed.input.unknown_val_share < 1
    assert TASK.name == "fracture" and MODELS.names() == ["cnn"]
