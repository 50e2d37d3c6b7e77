"""Outputs hold results only: what a stage writes into a DVC out does not say when or where it ran.

One check per output that used to (the whole pipeline twice: tests/test_repro_twice.py): the validation report
holds no time, models/<task> no run record (the train run is found by the weights' digest), registration.json
no registry version or run id, and two saves of the same weights or the same figure are the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from mlops.inference.model_files import WEIGHTS, save_model_dir, weights_digest
from mlops.params import load_params
from mlops.tasks import get_task
from mlops.tracking.lineage import WEIGHTS_TAG
from tests.conftest import tiny_params, write_params

TASK = get_task("fume_hood")


def test_validation_report_holds_no_time_and_its_history_record_does(tiny_raw, tmp_path, monkeypatch):
    from mlops.data.versions import folder_md5
    from mlops.tracking.lineage import lineage_tags
    from mlops.validation import ValidationReport, validate_dataset
    from mlops.validation.records import REPORT, validated_at, version_dir

    monkeypatch.chdir(tmp_path)  # relative paths, as dvc.yaml hands them to the stage
    raw = Path("raw/fume_hood")
    params = load_params(write_params(tmp_path, tiny_params())).task("fume_hood")
    reports, kept = [], []
    for name in ("first.json", "second.json"):
        report = validate_dataset(TASK, raw, params, history=Path("history"))
        report.write(tmp_path / name)
        reports.append((tmp_path / name).read_bytes())
        kept.append({p: p.read_bytes() for p in sorted(Path("history").rglob("*")) if p.is_file()})
        time.sleep(1.1)  # a timestamp (whole seconds) would differ
    assert reports[0] == reports[1]
    # The same version with the same result: its committed history record (time, GX result, page) is left as it was.
    assert kept[0] == kept[1] and len(kept[0]) >= 5
    written = json.loads(reports[0])
    assert "validated_at" not in written
    assert not any(isinstance(v, str) and v.startswith("/") for v in written.values()), written

    record = json.loads((version_dir(Path("history"), report.data_version) / REPORT).read_text())
    assert record["validated_at"] and validated_at(report) == record["validated_at"]
    assert ValidationReport.read(version_dir(Path("history"), report.data_version) / REPORT) == report
    tags = lineage_tags("fume_hood", raw, Path("prepared"), "p", tmp_path / "first.json")
    assert tags["mlops.validation.at"] == record["validated_at"]
    # the task's own raw folder, hashed as DVC hashes a folder (dvc.lock's validate dep; tests/test_pipeline.py)
    assert tags["mlops.data.task_raw_md5"] == report.data_version == folder_md5(raw)
    assert not any(k.startswith("mlops.dvc.") for k in tags)  # not inside `dvc exp run`
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lamb")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    tags = lineage_tags("fume_hood", raw, Path("prepared"), "p", tmp_path / "first.json")
    assert tags["mlops.dvc.exp_name"] == "lucky-lamb" and tags["mlops.dvc.exp_baseline"] == "a" * 40


def test_two_saves_of_the_same_weights_are_the_same_bytes(tmp_path):
    from mlops.tasks.base import ModelSpec

    model = TASK.models.build("custom_cnn", width=4, dropout=0.0)
    spec = ModelSpec("fume_hood", "custom_cnn", {"width": 4, "dropout": 0.0}, TASK.inference_module)
    digests = []
    for folder in ("a", "b"):
        save_model_dir(tmp_path / folder / "arm", model, spec)
        digests.append(hashlib.sha256((tmp_path / folder / "arm" / WEIGHTS).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert weights_digest(tmp_path / "a" / "arm") == weights_digest(tmp_path / "b" / "arm")


def test_an_evaluation_figure_carries_no_matplotlib_version(tmp_path):
    import numpy as np
    from PIL import Image

    from mlops.tasks.fume_hood.plots import confusion_matrix

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    a = confusion_matrix(np.array([0, 1, 2]), np.array([0, 2, 2]), 3, tmp_path / "a")
    b = confusion_matrix(np.array([0, 1, 2]), np.array([0, 2, 2]), 3, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    with Image.open(a) as img:
        assert "Software" not in img.info


@pytest.fixture()
def trained(tiny_raw, tmp_path, monkeypatch):
    """A fume_hood model folder and an MLflow train run (SQLite store in a temp MLOPS_HOME) that logged it."""
    import mlflow

    from mlops.settings import Settings
    from mlops.tracking.log_model import log_pyfunc
    from mlops.tracking.runs import connect, experiment_id
    from mlops.training.final import SELECTED_FILE

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    for key in ("MLOPS_TRACKING_URI", "MLFLOW_TRACKING_URI", "MLOPS_ARTIFACT_ROOT"):
        monkeypatch.delenv(key, raising=False)
    params_path = write_params(tmp_path, tiny_params())
    params = load_params(params_path)
    prepared = tmp_path / "prepared"
    TASK.prepare(tiny_raw, prepared, params.task("fume_hood"), seed=0)
    torch.manual_seed(0)
    model, spec = TASK.build_model({"model": "custom_cnn", "width": 4, "dropout": 0.0}, prepared)
    models = tmp_path / "models"
    save_model_dir(models / "custom_cnn", model, spec)
    (models / SELECTED_FILE).write_text(json.dumps({"arm": "custom_cnn"}))
    settings = Settings()
    connect(settings)
    digest = weights_digest(models / "custom_cnn")

    def train_run(weights: str = digest, arm: str = "custom_cnn") -> str:
        tags = {"mlops.task": "fume_hood", "mlops.run_kind": "train", "mlops.arm": arm, WEIGHTS_TAG: weights}
        with mlflow.start_run(experiment_id=experiment_id(settings, "fume_hood"), tags=tags) as run:
            log_pyfunc(models / "custom_cnn", TASK.example_input(prepared))
        return run.info.run_id

    return {"models": models, "params": params, "settings": settings, "digest": digest, "train_run": train_run}


@pytest.mark.integration
def test_the_train_run_is_found_by_its_weights_and_registered_without_run_ids_in_the_file(trained, tmp_path):
    from mlflow import MlflowClient

    from mlops.registry.register import register_model
    from mlops.training.final import arm_dirs, train_run_for

    models, train_run = trained["models"], trained["train_run"]
    older = train_run()
    train_run(weights="0" * 64)  # other weights
    train_run(arm="alexnet")  # same digest, another arm
    newest = train_run()
    assert arm_dirs(models) == {"custom_cnn": models / "custom_cnn"}
    assert train_run_for(models / "custom_cnn", "fume_hood").info.run_id == newest != older

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"test_accuracy": 0.5}))
    out = tmp_path / "registration.json"
    registration = register_model("fume_hood", trained["params"], trained["settings"], models, metrics, out)
    assert registration.run_id == newest and registration.challenger
    written = json.loads(out.read_text())
    assert "run_id" not in written and "version" not in written and newest not in out.read_text()
    assert written["weights_sha256"] == trained["digest"] and written["arm"] == "custom_cnn"
    version = MlflowClient().get_model_version("fume_hood", registration.version)
    assert version.tags[WEIGHTS_TAG] == trained["digest"] and version.run_id == newest
    assert version.tags["mlops.run_id"] == newest and version.tags["mlops.arm"] == "custom_cnn"


@pytest.mark.integration
def test_weights_without_their_train_run_fail_with_what_to_do(trained):
    from mlops.training.final import TrainRunMissing, train_run_for

    models = trained["models"]
    with pytest.raises(TrainRunMissing, match="mlops train fume_hood.*MLOPS_TRACKING_URI"):
        train_run_for(models / "custom_cnn", "fume_hood")  # no experiment yet
    trained["train_run"](weights="0" * 64)
    with pytest.raises(TrainRunMissing, match="no finished MLflow train run of fume_hood/custom_cnn has these weights"):
        train_run_for(models / "custom_cnn", "fume_hood")


@pytest.mark.timeout(180)
def test_a_stage_run_by_dvc_exp_run_names_its_experiment(tmp_path):
    """Real `dvc exp run` on a one-stage pipeline whose command records the tags a run would get: the experiment's
    name and baseline commit reach the stage (the variables DVC documents), and `dvc repro` gives none."""
    import subprocess
    import sys

    from tests.conftest import env_for, run

    env = env_for(tmp_path / "home")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(["git", "init", "-q"], tmp_path, env)
    run(["dvc", "init", "-q"], tmp_path, env)
    record = "import json; from mlops.tracking.lineage import dvc_experiment_tags as t; print(json.dumps(t()))"
    stage = {"stages": {"tags": {"cmd": f'{sys.executable} -c "{record}" > tags.json', "outs": ["tags.json"]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stage))
    (tmp_path / ".gitignore").write_text("tags.json\n")
    run([*git, "add", "-A"], tmp_path, env)
    run([*git, "commit", "-qm", "one stage"], tmp_path, env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    run(["dvc", "exp", "run", "-n", "lucky-lamb"], tmp_path, env)
    tags = json.loads((tmp_path / "tags.json").read_text())
    assert tags == {"mlops.dvc.exp_name": "lucky-lamb", "mlops.dvc.exp_baseline": head}, tags
    run(["dvc", "repro", "-f"], tmp_path, env)
    assert json.loads((tmp_path / "tags.json").read_text()) == {}
