"""Generation-synchronous sweeps: the same study for any number of workers, on real storages and workers."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from mlops.tuning.generations import YIELDED, GenerationSampler, Ledger, logical_table, trial_seed
from mlops.tuning.space import make_sampler
from tests.test_sweep import sweep_setup, write_experiment  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def _sweep(sweep_setup, home, monkeypatch, workers: int, **experiment):  # noqa: F811
    from mlops.settings import Settings
    from mlops.tuning.storage import make_storage
    from mlops.tuning.sweep import run_sweep

    params, prepared, report, exp_dir, raw = sweep_setup
    monkeypatch.setenv("MLOPS_HOME", str(home))  # its own storage: the same study name starts afresh
    exp = write_experiment(exp_dir, **experiment)
    settings = Settings()
    options = {"experiments_dir": exp_dir, "show_progress": False, "arm": "custom_cnn"}
    result = run_sweep("fume_hood", params, exp, settings, prepared, raw, report, workers=workers, **options)
    study = optuna.load_study(study_name=result.study_name, storage=make_storage(settings.resolved_optuna_storage))
    pids = {t.user_attrs["worker_pid"] for t in study.get_trials() if "worker_pid" in t.user_attrs}
    return result, logical_table(study.get_trials()), pids


@pytest.mark.timeout(400)
def test_one_and_two_workers_make_the_same_study(sweep_setup, tmp_path, monkeypatch):  # noqa: F811
    """TPE after two random trials and a median pruner from the second generation, on a continuous objective
    (validation loss): params, states, values and the best trial agree exactly between one worker and two."""
    experiment = {
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "budget": {"n_trials": 6, "epochs_per_trial": 2, "generation_size": 2},
        "sampler": {"type": "tpe", "n_startup_trials": 2},
        "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    }
    one, one_table, _ = _sweep(sweep_setup, tmp_path / "one", monkeypatch, workers=1, **experiment)
    two, two_table, pids = _sweep(sweep_setup, tmp_path / "two", monkeypatch, workers=2, **experiment)
    assert len(pids) == 2, "both workers ran trials"
    assert [row["number"] for row in one_table] == list(range(6))
    assert two_table == one_table
    assert (two.best_trial, two.best_value, two.best_params) == (one.best_trial, one.best_value, one.best_params)
    assert {row["state"] for row in one_table} == {"COMPLETE", "PRUNED"}
    assert len({row["value"] for row in one_table}) == 6  # a continuous objective: a value cannot agree by chance


def _study() -> optuna.Study:
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")


def test_ledger_numbers_retries_and_given_back_trials_as_the_trial_they_repeat():
    """Storage order 0, 1, 2 (given back, then its copy 3), 4 (retry of 1), 5: logical numbers 0, 1, 2, 2, 1, 3."""
    study = _study()
    study.add_trial(create_trial(value=0.5))  # 0
    study.add_trial(create_trial(state=TrialState.FAIL))  # 1: its worker died
    study.add_trial(create_trial(state=TrialState.FAIL, system_attrs={YIELDED: True}))  # 2: given back
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 2}))  # 3: its copy
    study.add_trial(create_trial(value=0.7, system_attrs={"failed_trial": 1, "retry_history": [1]}))  # 4
    study.add_trial(create_trial(state=TrialState.RUNNING))  # 5
    ledger = Ledger.of(study.get_trials())
    assert ledger.logical == {0: 0, 1: 1, 2: 2, 3: 2, 4: 1, 5: 3}
    assert ledger.n_fresh == 4
    assert ledger.outcome(1).number == 4 and ledger.outcome(2).number == 3
    assert ledger.settled(1, max_retry=3) and not ledger.settled(2, max_retry=3)
    assert ledger.is_open(3, size=2, max_retry=3)  # generation 1 (2, 3) needs 0 and 1 only
    assert not ledger.is_open(4, size=2, max_retry=3)  # generation 2 needs 2 and 3
    assert ledger.next_to_run(n_trials=6) == 2  # the waiting copy comes before a fresh trial
    assert [(t.number, t.value) for t in ledger.history(3, size=2)] == [(0, 0.5), (1, 0.7)]
    assert [row["number"] for row in logical_table(study.get_trials())] == [0, 1, 2, 3]


def test_a_failed_trial_with_retries_left_is_not_settled():
    """A dead worker's trial failed by heartbeat: while a retry may still come it holds its generation back."""
    study = _study()
    study.add_trial(create_trial(state=TrialState.FAIL, system_attrs={"retry_history": []}))
    ledger = Ledger.of(study.get_trials())
    assert ledger.settled(0, max_retry=None)  # no retries on this storage: the failure is final
    assert ledger.settled(0, max_retry=0)
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 0, "retry_history": [0]}))
    assert not Ledger.of(study.get_trials()).settled(0, max_retry=1)


def test_sampler_draws_depend_on_the_logical_number_and_earlier_generations_only():
    """The same trial sampled in two studies whose later generations differ gets the same value; another logical
    number gets another seed."""
    from mlops.config import SamplerSpec

    spec = SamplerSpec(type="tpe", n_startup_trials=1)
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)

    def sample_trial_2(extra_values: list[float]) -> float:
        study = _study()
        for value in (0.2, 0.9):
            study.add_trial(create_trial(params={"x": value}, distributions={"x": dist}, value=value))
        study.add_trial(create_trial(state=TrialState.RUNNING))  # trial 2, generation 1
        for value in extra_values:  # same generation or later: must not matter
            study.add_trial(create_trial(params={"x": value}, distributions={"x": dist}, value=value))
        sampler = GenerationSampler(lambda seed: make_sampler(spec, seed), seed=42, generation_size=2)
        frozen = study.get_trials()[2]
        return sampler.sample_independent(study, frozen, "x", dist)

    assert sample_trial_2([]) == sample_trial_2([0.95, 0.99, 0.01])
    assert trial_seed(42, 2) != trial_seed(42, 3) and trial_seed(42, 2) == trial_seed(42, 2)


@pytest.mark.timeout(400)
def test_arms_swept_side_by_side_make_the_studies_they_make_one_after_another(sweep_setup, tmp_path, monkeypatch):  # noqa: F811
    """run_sweeps with two arms and two workers sweeps the arms at once (a process each, one worker each): every
    arm's trials, values and best configuration equal a one-worker run's, and the two arms' sweeps overlap."""
    import mlflow

    from mlops.settings import Settings
    from mlops.tracking.runs import connect
    from mlops.tuning.storage import make_storage
    from mlops.tuning.sweep import run_sweeps

    params, prepared, report, exp_dir, raw = sweep_setup
    exp = write_experiment(
        exp_dir,
        budget={"n_trials": 2, "epochs_per_trial": 1, "generation_size": 2},
        arms={"custom_cnn": {"model": "custom_cnn"}, "alexnet": {"model": "alexnet"}},
    )
    outcomes = {}
    for workers in (1, 2):
        monkeypatch.setenv("MLOPS_HOME", str(tmp_path / f"home-{workers}"))
        settings = Settings()
        results = run_sweeps(
            "fume_hood", params, exp, settings, prepared, raw, report, workers, exp_dir, show_progress=False
        )
        storage = make_storage(settings.resolved_optuna_storage)
        tables = {
            arm: logical_table(optuna.load_study(study_name=r.study_name, storage=storage).get_trials())
            for arm, r in results.items()
        }
        connect(settings)
        spans = {
            arm: (run.info.start_time, run.info.end_time)
            for arm, run in ((a, mlflow.get_run(r.parent_run_id)) for a, r in results.items())
        }
        best = {arm: (r.best_trial, r.best_value, r.best_params) for arm, r in results.items()}
        outcomes[workers] = (tables, best, spans)
    assert set(outcomes[2][0]) == {"custom_cnn", "alexnet"}
    assert outcomes[2][0] == outcomes[1][0] and outcomes[2][1] == outcomes[1][1]
    (start_a, end_a), (start_b, end_b) = outcomes[2][2].values()
    assert start_a < end_b and start_b < end_a, "the arms' sweeps ran side by side"
    (start_a, end_a), (start_b, end_b) = outcomes[1][2].values()
    assert end_a <= start_b, "one worker: one arm after the other"
