"""Sweeps on real Optuna storages with real worker processes and a real MLflow store."""

from __future__ import annotations

import pytest
import yaml

from mlops.params import load_experiment, load_params
from mlops.settings import Settings
from mlops.tasks import get_task
from mlops.validation import validate_dataset
from tests.conftest import tiny_experiment, tiny_params, write_params

pytestmark = pytest.mark.integration


@pytest.fixture()
def sweep_setup(tiny_raw, tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    for key in ("MLOPS_TRACKING_URI", "MLOPS_OPTUNA_STORAGE", "MLOPS_ARTIFACT_ROOT"):
        monkeypatch.delenv(key, raising=False)
    params = load_params(write_params(tmp_path, tiny_params()))
    task = get_task("fume_hood")
    prepared = tmp_path / "prepared"
    task.prepare(tiny_raw, prepared, params.task("fume_hood"), seed=0)
    report = tmp_path / "validation.json"
    validate_dataset(task, tiny_raw, params.task("fume_hood")).write(report)
    exp_dir = tmp_path / "experiments"
    exp_dir.mkdir()
    return params, prepared, report, exp_dir, tiny_raw


def write_experiment(exp_dir, **changes):
    exp = tiny_experiment()
    exp.update(changes)
    (exp_dir / "fume_hood.yaml").write_text(yaml.safe_dump(exp))
    return load_experiment("fume_hood", exp_dir)


def test_two_workers_share_a_study_with_a_pruned_trial_and_child_runs(sweep_setup):
    import mlflow
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from mlops.tuning.storage import make_storage
    from mlops.tuning.sweep import run_sweep, study_name_for

    params, prepared, report, exp_dir, raw = sweep_setup
    exp = write_experiment(
        exp_dir,
        # generation 0: the two trials added below and trials 2, 3 (one per worker); generation 1: trial 4
        budget={"n_trials": 5, "epochs_per_trial": 2, "generation_size": 4},
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    )
    settings = Settings()
    # Two finished trials that were perfect at every epoch: the median of generation 0 at epoch 0 is then above any
    # real trial's value, so trial 4 (generation 1) is pruned at epoch 0.
    name = study_name_for("fume_hood", "custom_cnn", exp, params, prepared)
    study = optuna.create_study(
        storage=make_storage(settings.resolved_optuna_storage), study_name=name, direction="maximize"
    )
    space = exp.search_space
    for _ in range(2):
        study.add_trial(
            optuna.trial.create_trial(
                params={
                    "lr": 1e-3,
                    "batch_size": 32,
                    "width": 16,
                    "dropout": 0.1,
                    "weight_decay": 1e-5,
                },
                distributions={
                    "lr": FloatDistribution(space["lr"].low, space["lr"].high, log=True),
                    "batch_size": CategoricalDistribution(space["batch_size"].choices),
                    "width": CategoricalDistribution(space["width"].choices),
                    "dropout": FloatDistribution(space["dropout"].low, space["dropout"].high),
                    "weight_decay": FloatDistribution(space["weight_decay"].low, space["weight_decay"].high, log=True),
                },
                value=1.0,
                intermediate_values={0: 1.0, 1: 1.0},
            )
        )
    result = run_sweep(
        "fume_hood",
        params,
        exp,
        settings,
        prepared,
        raw,
        report,
        workers=2,
        experiments_dir=exp_dir,
        show_progress=False,
        arm="custom_cnn",
    )
    assert result.n_pruned >= 1
    study = optuna.load_study(study_name=name, storage=make_storage(settings.resolved_optuna_storage))
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == 5
    pids = {t.user_attrs.get("worker_pid") for t in trials if t.user_attrs.get("worker_pid")}
    assert len(pids) == 2, "both worker processes ran trials"

    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    parent = mlflow.get_run(result.parent_run_id)
    assert parent.data.tags["mlops.run_kind"] == "sweep"
    assert parent.info.status == "FINISHED"
    children = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    assert len(children) == 3
    assert {c.data.tags["optuna.state"] for c in children} <= {"PRUNED", "COMPLETE"}
    assert "PRUNED" in {c.data.tags["optuna.state"] for c in children}
    # a pruned trial was stopped on purpose: KILLED in the runs table, beside the finished ones
    assert all(c.info.status == ("KILLED" if c.data.tags["optuna.state"] == "PRUNED" else "FINISHED") for c in children)
    assert all(c.data.tags["mlops.validation.success"] == "true" for c in children)
    assert "optuna/optimization_history.png" in {
        a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "optuna")
    }


def test_rerun_resumes_the_same_study(sweep_setup):
    from mlops.tuning.sweep import run_sweep

    params, prepared, report, exp_dir, raw = sweep_setup
    exp = write_experiment(exp_dir, budget={"n_trials": 2, "epochs_per_trial": 1, "generation_size": 2})
    settings = Settings()
    args = ("fume_hood", params, exp, settings, prepared, raw, report)
    options = {"workers": 1, "experiments_dir": exp_dir, "show_progress": False, "arm": "custom_cnn"}
    first = run_sweep(*args, **options)
    again = run_sweep(*args, **options)
    assert again.study_name == first.study_name
    assert again.parent_run_id == first.parent_run_id
    assert again.n_complete + again.n_pruned == 2  # nothing re-run: the budget was already spent


def test_start_with_is_tried_first_and_once(sweep_setup):
    import optuna

    from mlops.tuning.storage import make_storage
    from mlops.tuning.sweep import run_sweep

    params, prepared, report, exp_dir, raw = sweep_setup
    start = {"width": 32, "lr": 0.005}
    exp = write_experiment(
        exp_dir, budget={"n_trials": 2, "epochs_per_trial": 1, "generation_size": 2}, start_with=[start]
    )
    settings = Settings()
    args = ("fume_hood", params, exp, settings, prepared, raw, report)
    options = {"workers": 1, "experiments_dir": exp_dir, "show_progress": False, "arm": "custom_cnn"}
    first = run_sweep(*args, **options)
    run_sweep(*args, **options)  # a rerun resumes: the start configuration is not queued again
    study = optuna.load_study(study_name=first.study_name, storage=make_storage(settings.resolved_optuna_storage))
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert len(trials) == 2 and all(t.state != optuna.trial.TrialState.WAITING for t in trials)
    assert {k: trials[0].params[k] for k in start} == start, "the queued configuration ran first"
    assert "dropout" in trials[0].params, "parameters it leaves open are still sampled"


def test_unreachable_postgres_storage_is_a_clear_error():
    from mlops.tuning.storage import make_storage

    with pytest.raises(ConnectionError, match="MLOPS_OPTUNA_STORAGE"):
        make_storage("postgresql+psycopg2://nobody@127.0.0.1:1/none")
