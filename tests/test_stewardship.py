"""Every task's suite fails, with the right expectation and samples, on a dataset broken per expectation family.

Families: wrong shape, out-of-range values, duplicate samples, leakage across split groups, labels that
do not match the data; plus intensity drift against the previous accepted version (kept per version with
its Data Docs page). Real simulators, real Great Expectations, datasets of a few seconds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlops.params import parse_section
from mlops.tasks import get_task
from mlops.validation import validate_dataset
from mlops.validation.records import DOCS, GX_RESULT, INDEX, REPORT, SAMPLES, version_dir
from tests.conftest import tiny_params as fume_hood_section
from tests.test_fracture import tiny_section as fracture_section
from tests.test_gas_leak import _deep_update
from tests.test_skeleton import tiny_params as skeleton_params
from tests.test_ttubule import tiny_section as ttubule_section

SEED = 3


def _gas_leak_section() -> dict:
    import yaml

    from tests.conftest import ROOT
    from tests.test_gas_leak import FRAMES, RECORDED, SIZE

    tiny = {
        "simulate": {
            "n_sim": 16,
            "n_field": 4,
            "geometry": {"frames": RECORDED, "height": SIZE, "width": SIZE, "margin_px": 2.0, "seqs_per_scene": 2},
        },
        "validation": {"min_sequences": 10, "min_frames": FRAMES, "height": SIZE, "width": SIZE},
    }
    return _deep_update(yaml.safe_load((ROOT / "params.yaml").read_text())["gas_leak"], tiny)


def task_params(name: str):
    task = get_task(name)
    if name == "skeleton":
        return skeleton_params()
    section = {
        "fume_hood": lambda: fume_hood_section()["fume_hood"],
        "fracture": fracture_section,
        "gas_leak": _gas_leak_section,
        "ttubule": ttubule_section,
    }[name]()
    return parse_section(task.Params, section, Path("params.yaml"), name)


TASKS = ("fume_hood", "fracture", "gas_leak", "skeleton", "ttubule")


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, Path]:
    """One simulated dataset per task (made once; each test breaks a copy)."""
    root = tmp_path_factory.mktemp("clean")
    out = {}
    for name in TASKS:
        get_task(name).simulate(root / name, task_params(name), SEED, lambda _: None)
        out[name] = root / name
    return out


def _copy(clean: dict[str, Path], name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(clean[name], dest)
    return dest


# --- how to break each task's data, per family ----------------------------------------------------------
# Each breaker changes a copy and returns the sample id the suite must name (None: a dataset-level finding).


def _labels(raw: Path) -> pd.DataFrame:
    return pd.read_csv(raw / "labels.csv", dtype=str)


def _two_in_same_and_other_group(table: pd.DataFrame, id_col: str, group_col: str) -> tuple[str, str, str]:
    """(a, b in a's group, c in another group) sample ids."""
    a = table.iloc[0]
    same = table[(table[group_col] == a[group_col]) & (table[id_col] != a[id_col])]
    other = table[table[group_col] != a[group_col]]
    return a[id_col], same.iloc[0][id_col], other.iloc[0][id_col]


def _image(raw: Path, sample: str) -> Path:
    return next((raw / "images").glob(f"{sample}.*"))


def image_breakers(id_col: str, group_col: str, label_col: str) -> dict[str, Callable[[Path], str | None]]:
    def shape(raw):
        sample = _labels(raw)[id_col].iloc[1]
        path = _image(raw, sample)
        with Image.open(path) as img:
            img.resize((12, 9)).save(path)
        return sample

    def out_of_range(raw):
        sample = _labels(raw)[id_col].iloc[2]
        path = _image(raw, sample)
        with Image.open(path) as img:
            Image.new(img.mode, img.size, 0).save(path)  # a black frame: mean gray level 0
        return sample

    def duplicate(raw):
        a, b, _ = _two_in_same_and_other_group(_labels(raw), id_col, group_col)
        shutil.copyfile(_image(raw, a), _image(raw, b))
        return b

    def leakage(raw):
        a, _, c = _two_in_same_and_other_group(_labels(raw), id_col, group_col)
        shutil.copyfile(_image(raw, a), _image(raw, c))
        return c

    def label_mismatch(raw):
        table = _labels(raw)
        table.loc[3, label_col] = "9" if label_col == "rating" else "melted"
        table.to_csv(raw / "labels.csv", index=False)
        return table.loc[3, id_col]

    return locals()


def gas_leak_breakers() -> dict[str, Callable[[Path], str | None]]:
    def seq(raw, sample):
        return raw / "sequences" / f"{sample}.npy"

    def shape(raw):
        sample = _labels(raw)["seq_id"].iloc[1]
        frames = np.load(seq(raw, sample))
        np.save(seq(raw, sample), frames[:, : frames.shape[1] // 2, : frames.shape[2] // 2])
        return sample

    def out_of_range(raw):
        sample = _labels(raw)["seq_id"].iloc[2]
        np.save(seq(raw, sample), np.load(seq(raw, sample)) + 5.0)
        return sample

    def duplicate(raw):
        a, b, _ = _two_in_same_and_other_group(_labels(raw), "seq_id", "scene_id")
        shutil.copyfile(seq(raw, a), seq(raw, b))
        return b

    def leakage(raw):
        a, _, c = _two_in_same_and_other_group(_labels(raw), "seq_id", "scene_id")
        shutil.copyfile(seq(raw, a), seq(raw, c))
        return c

    def label_mismatch(raw):  # the source lies outside the frames it labels
        table = _labels(raw)
        table.loc[3, "x"] = "500"
        table.to_csv(raw / "labels.csv", index=False)
        return table.loc[3, "seq_id"]

    return locals()


def skeleton_breakers() -> dict[str, Callable[[Path], str | None]]:
    def frames(raw, video):
        return sorted((raw / video).glob("*_keypoints.json"))

    def videos(raw):
        return pd.read_csv(raw / "videos.csv", dtype=str)

    def frame_id(path: Path) -> str:
        return f"{path.parent.name}:{int(path.name.rsplit('_', 2)[1])}"

    def with_person(raw, video, skip=0):
        found = [p for p in frames(raw, video) if json.loads(p.read_text())["people"]]
        return found[skip]

    def rewrite(path, change):
        doc = json.loads(path.read_text())
        change(doc["people"][0]["pose_keypoints_2d"])
        path.write_text(json.dumps(doc))

    def shape(raw):  # 18 joints (COCO) instead of BODY_25's 25
        path = with_person(raw, videos(raw)["video"].iloc[0], 1)
        rewrite(path, lambda k: k.__delitem__(slice(18 * 3, None)))
        return frame_id(path)

    def out_of_range(raw):  # x beyond the 640-pixel frame
        path = with_person(raw, videos(raw)["video"].iloc[0], 2)
        rewrite(path, lambda k: k.__setitem__(0, 5000.0))
        return frame_id(path)

    def duplicate(raw):  # a frame copied over the next one of the same video
        video = videos(raw)["video"].iloc[0]
        src, dst = with_person(raw, video, 3), with_person(raw, video, 4)
        shutil.copyfile(src, dst)
        return frame_id(dst)

    def leakage(raw):  # a frame of one video inside another
        names = videos(raw)["video"]
        src, dst = with_person(raw, names.iloc[0], 5), with_person(raw, names.iloc[1], 5)
        shutil.copyfile(src, dst)
        return frame_id(dst)

    def label_mismatch(raw):  # an anomalous span on a training video (training holds normal behaviour only)
        table = videos(raw)
        train = table[table["split_role"] == "train"]["video"].iloc[0]
        spans = pd.read_csv(raw / "spans.csv", dtype=str)
        row = {"video": train, "start_frame": "0", "end_frame": "5", "action": "throw_trash"}
        pd.concat([spans, pd.DataFrame([row])]).to_csv(raw / "spans.csv", index=False)
        return f"{train}:0"

    return locals()


def ttubule_breakers() -> dict[str, Callable[[Path], str | None]]:
    import tifffile

    def volumes(raw):
        return sorted(p for p in raw.iterdir() if p.is_dir())

    def shape(raw):  # a volume smaller than the suite's minimum
        vol = volumes(raw)[0]
        for name in ("image.tif", "labels.tif", "instances.tif"):
            if (vol / name).is_file():
                tifffile.imwrite(vol / name, tifffile.imread(vol / name)[:, :16, :16])
        return f"{vol.name}:0000"

    def out_of_range(raw):  # a label value outside 0..3
        vol = volumes(raw)[1]
        labels = tifffile.imread(vol / "labels.tif")
        labels[2, 0, 0] = 7
        tifffile.imwrite(vol / "labels.tif", labels)
        return f"{vol.name}:0002"

    def duplicate(raw):  # a slice repeated (a section imaged twice)
        vol = volumes(raw)[0]
        image = tifffile.imread(vol / "image.tif")
        image[3] = image[2]
        tifffile.imwrite(vol / "image.tif", image)
        return f"{vol.name}:0003"

    def leakage(raw):  # a slice of one volume inside another
        a, b = volumes(raw)[:2]
        image = tifffile.imread(b / "image.tif")
        image[1] = tifffile.imread(a / "image.tif")[1]
        tifffile.imwrite(b / "image.tif", image)
        return f"{b.name}:0001"

    def label_mismatch(raw):  # a label stack that does not fit its image
        vol = volumes(raw)[2]
        tifffile.imwrite(vol / "labels.tif", tifffile.imread(vol / "labels.tif")[:-1])
        return f"{vol.name}:0000"

    return locals()


BREAKERS = {
    "fume_hood": image_breakers("photo_id", "lab_id", "rating"),
    "fracture": image_breakers("image_id", "source", "class"),
    "gas_leak": gas_leak_breakers(),
    "skeleton": skeleton_breakers(),
    "ttubule": ttubule_breakers(),
}

# (expectation type, column) that must fail, per task and family
EXPECTED = {
    "fume_hood": {
        "shape": ("expect_column_values_to_be_between", "width"),
        "out_of_range": ("expect_column_values_to_be_between", "mean_intensity"),
        "duplicate": ("expect_column_values_to_be_unique", "content_hash"),
        "leakage": ("expect_column_values_to_be_between", "groups_sharing_content"),
        "label_mismatch": ("expect_column_values_to_be_in_set", "rating"),
    },
    "fracture": {
        "shape": ("expect_column_values_to_be_between", "width"),
        "out_of_range": ("expect_column_values_to_be_between", "mean_intensity"),
        "duplicate": ("expect_column_values_to_be_unique", "content_hash"),
        "leakage": ("expect_column_values_to_be_between", "groups_sharing_content"),
        "label_mismatch": ("expect_column_values_to_be_in_set", "class"),
    },
    "gas_leak": {
        "shape": ("expect_column_values_to_be_in_set", "height"),
        "out_of_range": ("expect_column_values_to_be_between", "max_intensity"),
        "duplicate": ("expect_column_values_to_be_unique", "content_hash"),
        "leakage": ("expect_column_values_to_be_between", "groups_sharing_content"),
        "label_mismatch": ("expect_column_values_to_be_in_set", "label_in_frame"),
    },
    "skeleton": {
        "shape": ("expect_column_values_to_be_in_set", "n_joints"),
        "out_of_range": ("expect_column_values_to_be_between", "x_max"),
        "duplicate": ("expect_column_values_to_be_unique", "content_hash"),
        "leakage": ("expect_column_values_to_be_between", "groups_sharing_content"),
        "label_mismatch": ("expect_column_values_to_be_in_set", "abnormal_in_train"),
    },
    "ttubule": {
        "shape": ("expect_column_values_to_be_between", "vol_height"),
        "out_of_range": ("expect_column_values_to_be_between", "max_label"),
        "duplicate": ("expect_column_values_to_be_unique", "content_hash"),
        "leakage": ("expect_column_values_to_be_between", "groups_sharing_content"),
        "label_mismatch": ("expect_column_values_to_be_in_set", "shapes_match"),
    },
}

FAMILIES = ("shape", "out_of_range", "duplicate", "leakage", "label_mismatch")


@pytest.mark.parametrize("name", TASKS)
def test_every_suite_passes_its_simulated_data_and_profiles_it(name, clean):
    report = validate_dataset(get_task(name), clean[name], task_params(name))
    assert report.success, report.summary()
    assert report.data_version and report.data_version.endswith(".dir")
    prof = report.profile
    assert prof["n_samples"] == report.n_samples > 0
    assert prof.get("labels") or prof.get("label_shares")
    hist = prof["intensity"]
    assert hist["n"] > 0 and len(hist["hist_counts"]) == len(hist["hist_edges"]) - 1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", TASKS)
def test_a_broken_dataset_fails_with_the_right_expectation_and_sample(name, family, clean, tmp_path):
    raw = _copy(clean, name, tmp_path)
    sample = BREAKERS[name][family](raw)
    report = validate_dataset(get_task(name), raw, task_params(name))
    assert not report.success
    expectation, column = EXPECTED[name][family]
    hits = [f for f in report.failures if f.expectation == expectation and f.column == column]
    assert hits, f"{name}/{family}: expected {expectation} on {column} to fail; got:\n{report.summary()}"
    assert sample in hits[0].samples, f"{name}/{family}: {sample} not named in {hits[0].line()}"
    assert f"{expectation} on {column}" in report.summary() and sample in report.summary()


def test_drift_against_the_previous_accepted_version_is_bounded_and_kept_per_version(clean, tmp_path):
    name, params = "fume_hood", task_params("fume_hood")
    history = tmp_path / "history"
    first = validate_dataset(get_task(name), clean[name], params, history=history)
    assert first.success and first.baseline is None  # nothing accepted before: no drift bounds yet
    folder = version_dir(history, first.data_version)
    for kept in (REPORT, GX_RESULT, SAMPLES, DOCS):
        assert (folder / kept).is_file(), kept
    page = (folder / DOCS).read_text()
    assert "expect_column_values_to_be_unique" in page or "values must be unique" in page.lower()
    assert first.data_version.removesuffix(".dir") in (history / INDEX).read_text()
    assert len(json.loads((folder / SAMPLES).read_text())) == first.n_samples

    # The same photos a little darker (a new camera setting): every photo is in range, the whole set is not.
    darker = _copy(clean, name, tmp_path)
    for path in (darker / "images").iterdir():
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"), dtype=np.float32)
        Image.fromarray(np.clip(gray * 0.8, 0, 255).astype(np.uint8)).save(path)
    no_history = validate_dataset(get_task(name), darker, params)
    assert no_history.success, "each photo alone passes the static bounds"
    second = validate_dataset(get_task(name), darker, params, history=history)
    assert not second.success and second.baseline == first.data_version
    drift = [f for f in second.failures if f.column == "mean_intensity" and "relative to accepted version" in f.note]
    assert {f.expectation for f in drift} >= {"expect_column_mean_to_be_between"}
    assert first.data_version in second.summary()
    assert json.loads((version_dir(history, second.data_version) / REPORT).read_text())["success"] is False

    # A later version is measured against the last *accepted* one, not the rejected one.
    fixed = _copy(clean, name, tmp_path / "fixed")
    one = sorted((fixed / "images").iterdir())[0]
    with Image.open(one) as img:
        pixels = np.asarray(img).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(one)
    third = validate_dataset(get_task(name), fixed, params, history=history)
    assert third.success, third.summary()
    assert third.baseline == first.data_version != third.data_version
