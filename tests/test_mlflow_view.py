"""MLflow and the Optuna dashboard as a user reads them, on real stores (MLflow on SQLite, Optuna on a journal file).

The logged model carries the kept epoch's metrics; values are rounded; the sweep's parent shares its parameter names
with its trials; pruned and failed trials read as such in the runs table; importances only when meaningful; the model
card is the version's description; a promoted challenger is champion only; `registry status` flags alias moves made
outside the tools; studies and trials link to their MLflow runs; `mlops info` prints what optuna-dashboard opens.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from mlops.params import load_experiment, load_params
from mlops.settings import Settings
from mlops.tasks import get_task
from mlops.validation import validate_dataset
from tests.conftest import tiny_experiment, tiny_params, write_params

pytestmark = pytest.mark.integration
TASK, ARM = "fume_hood", "custom_cnn"
#: validation accuracy by epoch of the fake fit: the best (kept) epoch is 2, neither the first nor the last
ACCURACY = [0.24, 0.4, 0.56, 0.48]
BEST_EPOCH = 2


@pytest.fixture()
def setup(tiny_raw, tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    for key in ("MLOPS_TRACKING_URI", "MLOPS_OPTUNA_STORAGE", "MLOPS_ARTIFACT_ROOT", "MLOPS_HISTORY_URI"):
        monkeypatch.delenv(key, raising=False)
    params_path = write_params(tmp_path, tiny_params())
    params = load_params(params_path)
    task = get_task(TASK)
    prepared = tmp_path / "prepared"
    task.prepare(tiny_raw, prepared, params.task(TASK), seed=0)
    report = tmp_path / "validation.json"
    validate_dataset(task, tiny_raw, params.task(TASK)).write(report)
    exp_dir = tmp_path / "experiments"
    exp_dir.mkdir()
    return {"params": params, "params_path": params_path, "prepared": prepared, "report": report,
            "exp_dir": exp_dir, "raw": tiny_raw, "tmp": tmp_path}  # fmt: skip


def write_experiment(exp_dir, **changes):
    exp = tiny_experiment()
    exp.update(changes)
    (exp_dir / f"{TASK}.yaml").write_text(yaml.safe_dump(exp))
    return load_experiment(TASK, exp_dir)


def float32(value: float) -> float:
    """What a metric computed in float32 reads as in Python: 0.56 -> 0.5600000023841858."""
    return float(np.float32(value))


def fake_fit(task, model, train, val, cfg, checkpoint=None, on_epoch=None):
    """Four epochs with float32-noisy metrics, the best at epoch 2 (the model is left as built: weights do not
    matter here, only what is logged about them)."""
    from mlops.fit.loop import FitResult

    history = []
    for epoch, accuracy in enumerate(ACCURACY):
        metrics = {"train_loss": float32(1.0 / (epoch + 1)), "val_accuracy": float32(accuracy),
                   "val_loss": float32(1.3 - accuracy)}  # fmt: skip
        history.append({"epoch": epoch, **metrics})
        on_epoch(epoch, metrics)
    return FitResult(history[BEST_EPOCH]["val_accuracy"], BEST_EPOCH, history)


def train_fake(s, monkeypatch) -> dict:
    """The train stage's arm fit (``final._train_arm``: MLflow run, metrics, pyfunc) around :func:`fake_fit`."""
    from mlops.training import final

    monkeypatch.setattr(final, "fit", fake_fit)
    exp = write_experiment(s["exp_dir"])
    # weight_decay as a float32 scalar: a parameter with float32 noise (9.999999747378752e-06)
    hp = {"model": ARM, "width": 16, "dropout": 0.0, "lr": 1e-3, "batch_size": 32, "weight_decay": np.float32(1e-5)}
    out, history = s["tmp"] / "models", s["tmp"] / "history"
    record = final._train_arm(TASK, ARM, {"best_params": hp, "study_name": "view"}, s["params"], exp, Settings(),
                              s["prepared"], s["raw"], s["report"], out, history, show_progress=False)  # fmt: skip
    (out / final.SELECTED_FILE).write_text(json.dumps({"arm": ARM}))
    return {**record, "model_dir": out}


def test_logged_model_has_the_kept_epochs_metrics_rounded(setup, monkeypatch):
    from mlflow import MlflowClient

    record = train_fake(setup, monkeypatch)
    client = MlflowClient()
    run = client.get_run(record["run_id"])
    (output,) = run.outputs.model_outputs
    assert output.step == BEST_EPOCH
    model = client.get_logged_model(output.model_id)
    linked = {m.key: m for m in model.metrics}
    assert {m.step for m in linked.values()} == {BEST_EPOCH}, "the model's metrics are the kept epoch's"
    assert linked["val_accuracy"].value == 0.56  # not epoch 0's 0.24, and without float32 noise
    assert linked["val_loss"].value == 0.74
    assert linked["best_val_accuracy"].value == 0.56 and linked["best_epoch"].value == BEST_EPOCH
    logged = sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)
    history = [m.value for m in logged]
    assert history == ACCURACY  # every logged value rounded: 0.24, not 0.23999999463558197
    assert run.data.params["weight_decay"] == "1e-05" and run.data.params["lr"] == "0.001"
    assert model.params["weight_decay"] == "1e-05"


def test_card_is_the_description_a_promoted_challenger_is_champion_only_and_status_flags_outside_moves(
    setup, monkeypatch
):
    import mlflow
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from mlops.cli import app
    from mlops.registry.cards import model_card
    from mlops.registry.register import register_model
    from mlops.registry.release import promote, verify
    from mlops.registry.versions import ALIASES_DOC, CHALLENGER, CHAMPION, alias_version

    s = setup
    record = train_fake(s, monkeypatch)
    settings, params = Settings(), s["params"]
    metrics = s["tmp"] / "metrics.json"
    metrics.write_text(json.dumps({"test_accuracy": 0.5}))
    first = register_model(TASK, params, settings, record["model_dir"], metrics, s["tmp"] / "registration.json")
    assert first.challenger, first.gate_failures
    client = MlflowClient()
    version = client.get_model_version(TASK, first.version)
    assert version.description == model_card(TASK, first.version, params)
    assert "Aliases: challenger" in version.description
    assert client.get_registered_model(TASK).description == ALIASES_DOC

    promote(TASK, CHALLENGER, settings, params, "rm", "first release")
    assert alias_version(client, TASK, CHAMPION) == first.version
    assert alias_version(client, TASK, CHALLENGER) is None, "the promoted challenger is the champion, no longer both"
    card = client.get_model_version(TASK, first.version).description
    assert "Aliases: champion;" in card and "promoted by / at | rm /" in card  # republished after the promotion
    with open(mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path="model_card.md")) as f:
        assert f.read() == card

    second = register_model(TASK, params, settings, record["model_dir"], metrics, s["tmp"] / "registration.json")
    assert alias_version(client, TASK, CHALLENGER) == second.version
    runner = CliRunner()
    status_cmd = ["registry", "status", "--json", "--params", str(s["params_path"])]
    shown = runner.invoke(app, status_cmd)
    assert shown.exit_code == 0, shown.output
    row = next(r for r in json.loads(shown.stdout) if r["task"] == TASK)
    assert row["problems"] == [] and verify(settings, [TASK]) == []

    client.set_registered_model_alias(TASK, CHAMPION, second.version)  # the UI's alias editor: no gate, no history
    shown = runner.invoke(app, status_cmd)
    row = next(r for r in json.loads(shown.stdout) if r["task"] == TASK)
    expected = [
        f"{TASK}: registry champion is v{second.version} but the history says v{first.version}",
        f"{TASK}: challenger is on champion v{second.version}; promoting a challenger removes the alias",
    ]
    assert row["problems"] == expected
    assert verify(settings, [TASK]) == expected  # the same check as `registry verify`
    table = runner.invoke(app, status_cmd[:2] + status_cmd[3:], env={"COLUMNS": "240"})
    assert table.exit_code == 0 and "MOVED/BROKEN" in table.stdout
    assert f"INCONSISTENT: {expected[0]}" in table.stderr

    client.set_registered_model_alias(TASK, CHAMPION, first.version)
    client.set_model_version_tag(TASK, second.version, "mlops.gates", "test_accuracy=0.1 < 0.5")
    assert verify(settings, [TASK]) == [
        f"{TASK}: challenger is on v{second.version}, whose gates did not pass (test_accuracy=0.1 < 0.5); the register "
        "stage sets it only on a version that passes them"
    ]


def test_sweep_runs_share_names_pruned_trials_read_as_such_and_link_to_optuna(setup, tmp_path):
    import mlflow
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from mlops.tuning.storage import dashboard_storage, make_storage
    from mlops.tuning.sweep import IMPORTANCE_SKIPPED_TAG, RUN_ID_ATTR, RUN_URL_ATTR, run_sweep, study_name_for

    s = setup
    # generation 0: two trials perfect at every epoch (added below) and trial 2; generation 1: trial 3, pruned at
    # epoch 0 (the median of generation 0 there is 1.0, above any real trial's value)
    exp = write_experiment(
        s["exp_dir"],
        budget={"n_trials": 4, "epochs_per_trial": 2, "generation_size": 3},
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    )
    settings = Settings()
    name = study_name_for(TASK, ARM, exp, s["params"], s["prepared"])
    storage = make_storage(settings.resolved_optuna_storage)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    space = exp.search_space
    distributions = {
        "lr": FloatDistribution(space["lr"].low, space["lr"].high, log=True),
        "batch_size": CategoricalDistribution(space["batch_size"].choices),
        "width": CategoricalDistribution(space["width"].choices),
        "dropout": FloatDistribution(space["dropout"].low, space["dropout"].high),
        "weight_decay": FloatDistribution(space["weight_decay"].low, space["weight_decay"].high, log=True),
    }
    config = {"lr": 1e-3, "batch_size": 32, "width": 16, "dropout": 0.1, "weight_decay": 1e-5}
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(params=config, distributions=distributions, value=1.0,
                                                  intermediate_values={0: 1.0, 1: 1.0}))  # fmt: skip
    result = run_sweep(TASK, s["params"], exp, settings, s["prepared"], s["raw"], s["report"], workers=1,
                       experiments_dir=s["exp_dir"], show_progress=False, arm=ARM)  # fmt: skip
    assert result.n_pruned == 1 and result.best_trial == 0

    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    parent = mlflow.get_run(result.parent_run_id)
    children = mlflow.search_runs([parent.info.experiment_id], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")  # fmt: skip
    by_state = {c.data.tags["optuna.state"]: c for c in children}
    assert set(by_state) == {"COMPLETE", "PRUNED"}
    pruned, complete = by_state["PRUNED"], by_state["COMPLETE"]
    assert (pruned.info.status, pruned.info.run_name) == ("KILLED", f"{ARM}-trial-3 (pruned)")
    assert (complete.info.status, complete.info.run_name) == ("FINISHED", f"{ARM}-trial-2")

    # One parameter name per hyperparameter: the parent's best configuration sits in its trials' columns.
    assert set(parent.data.params) == set(complete.data.params) == {"model", *config}
    assert parent.data.params["lr"] == "0.001" and parent.data.tags["mlops.best_trial"] == "0"
    assert parent.data.tags["mlops.params_from"] == "best trial"
    assert "1 pruned" in parent.data.tags["mlflow.note.content"]  # the run page's description
    # Importances from 3 complete trials would rank noise: no plot, and the run says why.
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "optuna")}
    assert artifacts == {"optuna/optimization_history.png"}
    assert "3 complete trials; importances need at least" in parent.data.tags[IMPORTANCE_SKIPPED_TAG]
    # Rounded metrics in every trial run.
    values = [m.value for m in mlflow.MlflowClient().get_metric_history(complete.info.run_id, "val_loss")]
    assert values and all(v == float(f"{v:.7g}") for v in values)

    # The Optuna side: the objective's name, and the way from a study or trial to its MLflow run.
    study = optuna.load_study(study_name=name, storage=make_storage(settings.resolved_optuna_storage))
    assert study.metric_names == ["val_accuracy"]
    assert study.user_attrs[RUN_ID_ATTR] == parent.info.run_id
    runs = {int(c.data.tags["optuna.trial_number"]): c.info.run_id for c in children}
    trials = {t.number: t for t in study.get_trials()}
    assert {n: trials[n].user_attrs[RUN_ID_ATTR] for n in runs} == runs
    assert all(RUN_URL_ATTR not in t.user_attrs for t in trials.values())  # a SQLite store has no UI address

    # ... as the real optuna-dashboard shows it, opened on the storage string `mlops info` prints
    header, rows = dashboard_csv(dashboard_storage(settings.resolved_optuna_storage), name, tmp_path)
    assert "val_accuracy" in header and "Value" not in header and "Objective 0" not in header, header
    linked = [r[header.index(f"UserAttribute {RUN_ID_ATTR}")] for r in rows if r[header.index("State")] != "WAITING"]
    assert set(runs.values()) <= set(linked), (runs, linked)


def dashboard_csv(storage: str, study_name: str, tmp_path) -> tuple[list[str], list[list[str]]]:
    """The study's trials table as a running `optuna-dashboard STORAGE` serves it (its CSV download)."""
    import csv
    import io

    import httpx

    from tests.conftest import BIN, free_port, start_process, stop_process, wait_ready

    port = free_port()
    cmd = [str(BIN / "optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(port)]
    proc = start_process(cmd, tmp_path, dict(os.environ), tmp_path / "optuna-dashboard.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, "/api/studies", seconds=60)
        studies = httpx.get(f"{base}/api/studies", timeout=10).json()["study_summaries"]
        study_id = next(s["study_id"] for s in studies if s["study_name"] == study_name)
        table = list(csv.reader(io.StringIO(httpx.get(f"{base}/csv/{study_id}", timeout=30).text)))
    finally:
        stop_process(proc)
    return table[0], table[1:]


def test_a_dead_trials_run_is_failed_by_name_and_status(setup):
    import mlflow

    from mlops.tracking.runs import connect, experiment_id
    from mlops.tuning.sweep import ROOT_TAG, _close_trial_runs

    settings = Settings()
    connect(settings)
    tags = {"mlops.sweep_id": "study", ROOT_TAG: "4"}
    run = mlflow.MlflowClient().create_run(experiment_id(settings, TASK), tags=tags, run_name=f"{ARM}-trial-4")
    _close_trial_runs("study", 4, "FAIL")  # its worker died, out of retries
    closed = mlflow.get_run(run.info.run_id)
    assert (closed.info.status, closed.info.run_name) == ("FAILED", f"{ARM}-trial-4 (failed)")
    assert closed.data.tags["optuna.state"] == "FAIL"


@pytest.mark.parametrize(
    ("values", "skipped"),
    [
        ([0.1 * (i % 5) for i in range(12)], None),
        ([0.5] * 12, "every complete trial has the same objective value"),
        ([0.1 * i for i in range(9)], "9 complete trials; importances need at least 10"),
    ],
)
def test_importances_only_when_meaningful(setup, values, skipped):
    import mlflow
    import optuna
    from optuna.distributions import FloatDistribution

    from mlops.tracking.runs import connect, experiment_id
    from mlops.tuning.sweep import IMPORTANCE_SKIPPED_TAG, _log_study_plots

    settings = Settings()
    connect(settings)
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate(values):
        params = {"lr": 1e-4 * (i + 1), "dropout": 0.03 * (i % 3)}
        distributions = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "dropout": FloatDistribution(0.0, 0.4)}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    with mlflow.start_run(experiment_id=experiment_id(settings, TASK)) as run:
        _log_study_plots(study)
    logged = mlflow.get_run(run.info.run_id)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "optuna")}
    assert ("optuna/param_importances.png" in artifacts) == (skipped is None)
    assert logged.data.tags.get(IMPORTANCE_SKIPPED_TAG) == skipped


def test_run_url_only_for_a_tracking_server():
    from mlops.tracking.runs import run_url

    url = run_url("abc", "3", "https://user:secret@mlflow.example.org:5000/")
    assert url == "https://mlflow.example.org:5000/#/experiments/3/runs/abc"
    assert run_url("abc", "3", "http://10.0.0.7:5000") == "http://10.0.0.7:5000/#/experiments/3/runs/abc"
    assert run_url("abc", "3", "sqlite:////tmp/mlflow.db") is None


def test_info_prints_what_optuna_dashboard_opens(tmp_path, monkeypatch):
    import os
    import shlex

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from typer.testing import CliRunner

    from mlops.cli import app
    from mlops.tuning.storage import make_storage

    def dashboard_arg() -> str:
        shown = CliRunner().invoke(app, ["info"])
        assert shown.exit_code == 0, shown.output
        line = next(x for x in shown.stderr.splitlines() if "optuna-dashboard " in x)
        return shlex.split(line.split("optuna-dashboard ", 1)[1])[0]

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home dir"))
    monkeypatch.delenv("MLOPS_OPTUNA_STORAGE", raising=False)
    settings = Settings()
    optuna.create_study(storage=make_storage(settings.resolved_optuna_storage), study_name="s")
    path = dashboard_arg()
    # optuna-dashboard opens an existing file as a journal (it does not know the `journal:` prefix)
    assert not path.startswith("journal:") and os.path.isfile(path)
    assert optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path))).study_name == "s"

    monkeypatch.setenv("MLOPS_OPTUNA_STORAGE", "postgresql://optuna@db:5432/optuna")
    assert dashboard_arg() == "postgresql://optuna@db:5432/optuna"  # an RDB URL as it is


#: Direct MLflow logging calls, per file, not yet routed through ``mlops/tracking/runs.py`` (its ``log_metrics`` and
#: ``log_params`` round the values): the evaluate stage's test metrics and `mlops repeats`' summary. Their files'
#: owners switch them to the helpers; no other file may log around the rounding.
NOT_YET_ROUTED: dict[str, int] = {}


def test_metrics_and_params_are_logged_through_one_place():
    import re

    from tests.conftest import ROOT

    direct = re.compile(r"\bmlflow\.log_(?:metric|metrics|param|params)\(")
    found = {}
    for path in sorted((ROOT / "mlops").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name != "mlops/tracking/runs.py" and (count := len(direct.findall(path.read_text()))):
            found[name] = count
    assert {name: n for name, n in found.items() if n > NOT_YET_ROUTED.get(name, 0)} == {}
