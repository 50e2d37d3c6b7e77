"""`dvc repro` on tiny params in a temporary copy of the repo: real dvc, real MLflow, real Optuna."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run

pytestmark = pytest.mark.integration


def test_repro_runs_every_stage_then_does_no_work(pipeline_repo):
    first, second = pipeline_repo["first"].stdout, pipeline_repo["second"].stdout
    for stage in ("validate", "prepare", "sweep", "train", "evaluate", "register"):
        assert f"Running stage '{stage}@fume_hood'" in first
    assert "Running stage" not in second
    repo = pipeline_repo["repo"]
    metrics = json.loads((repo / "reports/fume_hood/metrics.json").read_text())
    assert {"test_accuracy", "test_within_one_accuracy", "pointing_game_hit_rate"} <= set(metrics)
    arms = {"custom_cnn", "alexnet"}  # the study's comparison: one arm per architecture
    assert set(metrics["arms"]) == arms and metrics["selected_arm"] in arms
    for arm in arms:
        assert (repo / f"reports/fume_hood/eval/{arm}/gradcam_overlays.png").stat().st_size > 1000
        assert (repo / f"models/fume_hood/{arm}/weights.pt").is_file()
        assert (repo / f"reports/fume_hood/history/{arm}.csv").is_file()
    comparison = (repo / "reports/fume_hood/tables/comparison.csv").read_text()
    assert comparison.startswith("arm,") and "alexnet" in comparison
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, pipeline_repo["env"]).stdout)
    [listed] = [entry["data"] for entry in shown.values()]
    # DVC lists the headline only: the gated metrics with their intervals, named by task (not ~100 bare names)
    assert list(listed) == ["reports/fume_hood/headline.json"]
    headline = listed["reports/fume_hood/headline.json"]["data"]
    assert set(headline) == {"fume_hood"}
    gated = yaml.safe_load((repo / "params.yaml").read_text())["fume_hood"]["gates"]["tolerance"]
    assert set(headline["fume_hood"]) == {f"{m}{end}" for m in gated for end in ("", "_ci_low", "_ci_high")}
    assert headline["fume_hood"]["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    # the arms' learning curves: one chart, a line per arm, named in the legend (.dvc/plots/arms.json)
    drawn = json.loads(run(["dvc", "plots", "show", "--json"], repo, pipeline_repo["env"]).stdout)["data"]
    [chart] = drawn["reports/fume_hood/curves.csv"]
    assert chart["content"]["encoding"]["color"]["field"] == "arm"
    assert {point["arm"] for point in chart["content"]["data"]["values"]} == arms


def test_mlflow_store_holds_sweep_trials_lineage_and_a_challenger(pipeline_repo, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from mlops.inference.model_files import weights_digest
    from mlops.settings import Settings
    from mlops.tracking.lineage import WEIGHTS_TAG, dvc_hash
    from mlops.tracking.runs import connect

    monkeypatch.setenv("MLOPS_HOME", str(pipeline_repo["home"]))
    monkeypatch.chdir(pipeline_repo["repo"])
    uri = Settings().resolved_tracking_uri
    connect(Settings())  # tracking and registry URIs: earlier tests in this process pointed elsewhere
    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name("fume_hood")
    # What the pipeline made (tests on this session's pipeline may add versions made from altered weights).
    runs = [r for r in client.search_runs([exp.experiment_id]) if "tests.altered_from" not in r.data.tags]
    kinds = [r.data.tags.get("mlops.run_kind") for r in runs]
    assert kinds.count("sweep") == 2 and kinds.count("trial") == 4 and kinds.count("train") == 2
    sweeps = {r.data.tags["mlops.arm"]: r.info.run_id for r in runs if r.data.tags["mlops.run_kind"] == "sweep"}
    trials = [r for r in runs if r.data.tags.get("mlops.run_kind") == "trial"]
    assert all(t.data.tags["mlflow.parentRunId"] == sweeps[t.data.tags["mlops.arm"]] for t in trials)
    assert all(r.info.status == "FINISHED" for r in runs)

    repo = pipeline_repo["repo"]
    registration = json.loads((repo / "reports/fume_hood/registration.json").read_text())
    assert registration["challenger"] is True and registration["gate_failures"] == []
    # The file holds results only; the version is found by the digest of the registered weights.
    assert "version" not in registration and "run_id" not in registration
    selected = json.loads((repo / "models/fume_hood/selected.json").read_text())["arm"]
    assert registration["arm"] == selected
    assert registration["weights_sha256"] == weights_digest(repo / "models/fume_hood" / selected)
    found = client.search_model_versions("name='fume_hood'")
    version = max(
        (v for v in found if v.tags.get(WEIGHTS_TAG) == registration["weights_sha256"]), key=lambda v: int(v.version)
    )
    assert version.run_id == version.tags["mlops.run_id"]
    if len(client.search_model_versions("name='fume_hood'")) == 1:  # nothing registered since: the alias is there
        assert client.get_model_version_by_alias("fume_hood", "challenger").version == version.version
    train = next(
        r for r in runs if r.data.tags["mlops.run_kind"] == "train" and r.info.run_id == version.tags["mlops.run_id"]
    )
    assert train.data.tags["mlops.arm"] == version.tags["mlops.arm"]
    assert train.data.tags[WEIGHTS_TAG] == registration["weights_sha256"]
    tags = train.data.tags
    assert len(tags["mlops.git_commit"]) == 40
    assert tags["mlops.git_dirty"] in ("true", "false")
    assert tags["mlops.data.raw_md5"] == dvc_hash("data/raw/fume_hood") != "untracked"
    lock = yaml.safe_load(Path("dvc.lock").read_text())["stages"]
    validated = next(d["md5"] for d in lock["validate@fume_hood"]["deps"] if d["path"] == "data/raw/fume_hood")
    assert tags["mlops.data.task_raw_md5"] == validated  # the per-task hash dvc.lock and the audit show
    assert tags["mlops.data.prepared_md5"] == dvc_hash("data/prepared/fume_hood") != "untracked"
    assert tags["mlops.validation.success"] == "true"
    assert tags["mlops.validation.at"].startswith("20")  # from the validation history (validation.json has no time)
    assert len(tags["mlops.params_hash"]) == 16
    assert "test_accuracy" in train.data.metrics
    inputs = train.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == tags["mlops.data.prepared_md5"][:36]

    assert version.tags["mlops.git_commit"] == tags["mlops.git_commit"]
    assert version.tags["mlops.data.prepared_md5"] == tags["mlops.data.prepared_md5"]
    assert version.tags["mlops.gates"] == "passed"
    model = mlflow.pyfunc.load_model(f"models:/fume_hood/{version.version}")
    assert model.metadata.signature is not None


def test_promote_then_status(pipeline_repo):
    repo, env = pipeline_repo["repo"], pipeline_repo["env"]
    refused = run(
        ["mlops", "registry", "promote", "fume_hood", "99", "--approver", "a", "--reason", "r"], repo, env, check=False
    )
    assert refused.returncode == 2 and "no version 99" in refused.stderr
    # Another module on this session's pipeline may have registered and promoted versions before this test.
    before = json.loads(run(["mlops", "registry", "status", "--json"], repo, env).stdout)
    challenger = next(r for r in before if r["task"] == "fume_hood")["challenger"]
    assert challenger is not None
    run(["mlops", "registry", "promote", "fume_hood", "challenger", "--approver", "rm", "--reason", "first"], repo, env)
    status = json.loads(run(["mlops", "registry", "status", "--json"], repo, env).stdout)
    row = next(r for r in status if r["task"] == "fume_hood")
    # promoting the challenger's version moves `champion` there and clears `challenger` (docs: aliases)
    assert row["champion"] == challenger and row["challenger"] is None
    assert row["champion_promoted_by"] == "rm"


def test_training_refuses_data_that_failed_validation(pipeline_repo, tmp_path):
    repo, env = pipeline_repo["repo"], pipeline_repo["env"]
    bad = tmp_path / "validation.json"
    report = json.loads((repo / "reports/fume_hood/validation.json").read_text())
    report.update(success=False, failed=1)
    bad.write_text(json.dumps(report))
    proc = run(
        [
            "mlops",
            "data",
            "prepare",
            "fume_hood",
            "--raw",
            "data/raw/fume_hood",
            "--validation",
            str(bad),
            "--out",
            str(tmp_path / "p"),
        ],
        repo,
        env,
        check=False,
    )
    assert proc.returncode == 2 and "refusing to use data that failed validation" in proc.stderr
