"""A sweep: one Optuna study per task and configuration, run by N local worker processes.

The coordinator opens (or resumes) the study and the MLflow parent run, starts the workers, shows a
progress bar read from the shared storage, then logs the study's plots to the parent run. Each worker
(one torch thread) runs trials; each trial is an MLflow child run with its params, per-epoch metrics
and final state (complete / pruned / failed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mlops.config import Experiment
from mlops.fit.loop import FitConfig, fit, seed_everything
from mlops.params import Params, experiment_digest
from mlops.settings import Settings
from mlops.tasks import get_task
from mlops.tracking import runs as tracking
from mlops.tracking.lineage import TAG, dvc_hash, lineage_tags
from mlops.tracking.runs import connect, experiment_id, run_url
from mlops.tuning.generations import YIELDED, GenerationPruner, GenerationSampler, Ledger, logical_table
from mlops.tuning.space import make_pruner, make_sampler, monitored_metric, suggest
from mlops.tuning.storage import is_server_database, make_storage, retried_trial_number, retry_callback, retry_history

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
FINISHED_NAMES = tuple(state.name for state in FINISHED)
#: MLflow tag on every attempt's run of one trial: the number of its first attempt
ROOT_TAG = "optuna.root_trial"
#: MLflow tag: the trial's logical number (mlops/tuning/generations.py), the same in every run of the study
LOGICAL_TAG = f"{TAG}trial"
#: seconds between looks at the storage while a worker waits for a generation to settle
POLL_S = 0.5
#: MLflow tag of a trial's run: Optuna's final state of the trial (COMPLETE, PRUNED, FAIL)
STATE_TAG = "optuna.state"
#: How a trial's final Optuna state shows in MLflow's runs table: the run's status and a suffix of its name. A pruned
#: trial was stopped on purpose (KILLED), not finished; a failed one FAILED.
RUN_ENDS = {"COMPLETE": ("FINISHED", ""), "PRUNED": ("KILLED", " (pruned)"), "FAIL": ("FAILED", " (failed)")}
#: Optuna user attributes (the dashboard shows them on each trial and study): the MLflow run and, when the tracking
#: URI is a server, its UI page
RUN_ID_ATTR, RUN_URL_ATTR = "mlflow_run_id", "mlflow_run_url"
#: Parameter importances are drawn from at least this many complete trials whose objective and parameters vary:
#: fANOVA's forest over fewer points ranks noise (a 4-trial budget would show one parameter at ~100 %).
MIN_TRIALS_FOR_IMPORTANCE = 10


class GenerationNotOpen(Exception):
    """A worker got a trial whose generation has not settled yet: it gave the trial back (see ``_give_back``)."""


TRAINING_KEYS = ("lr", "batch_size", "weight_decay")


@dataclass(frozen=True)
class SweepJob:
    """Everything a worker needs, as plain values (it crosses a process boundary)."""

    task: str
    arm: str
    study_name: str
    storage_url: str
    prepared_dir: str
    raw_dir: str
    validation_report: str
    parent_run_id: str
    params_path: str
    experiments_dir: str
    seed: int
    #: lineage tags computed by the launcher; a cluster pod has neither git nor the validation report
    lineage: dict[str, str] | None = None
    #: log to MLflow (parent and child runs, lineage); off only to measure the tracking overhead (bench/)
    track: bool = True


class _Untracked:
    """Stands in for the ``mlflow`` module in an untracked sweep: every logging call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def study_name_for(task: str, arm: str, exp: Experiment, params: Params, prepared_dir: Path) -> str:
    """Same search space, params and data -> same study, so a rerun resumes instead of restarting."""
    key = f"{experiment_digest(exp)}:{params.digest(task)}:{dvc_hash(prepared_dir)}"
    return f"{task}-{arm}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def heartbeats_enabled(storage_url: str, settings: Settings) -> bool:
    """Trials on a database server send heartbeats, so a trial whose worker died is noticed and retried."""
    return is_server_database(storage_url) and settings.heartbeat_interval > 0


def sweep_storage(storage_url: str, settings: Settings) -> optuna.storages.BaseStorage:
    """The study's storage with this worker's connection pool and, on a database server, heartbeats."""
    on = heartbeats_enabled(storage_url, settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable enough
        return make_storage(
            storage_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            heartbeat_interval=settings.heartbeat_interval if on else None,
            grace_period=settings.heartbeat_grace_period if on else None,
            stale_trial_callback=StaleTrialRetry(settings.trial_max_retry) if on else None,
        )


class StaleTrialRetry:
    """A trial whose worker died (no heartbeat): queue a retry; out of retries, close its MLflow run.

    The retry (Optuna's retry callback) keeps the params, user attributes and intermediate values; it
    finds the original's checkpoint and MLflow run through ``retried_trial_number``.
    """

    def __init__(self, max_retry: int):
        self.max_retry = max_retry
        self._retry = retry_callback(max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry(study, trial)
        if len(retry_history(trial)) + 1 > self.max_retry:  # the callback queued no retry
            root = retried_trial_number(trial)
            _close_trial_runs(study.study_name, trial.number if root is None else root, "FAIL")


def _trial_runs(study_name: str, root: int) -> list:
    """MLflow runs of every attempt of one trial (oldest first), across experiments."""
    import mlflow

    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{TAG}sweep_id` = '{study_name}' AND tags.`{ROOT_TAG}` = '{root}'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )


def _close_trial_runs(study_name: str, root: int, state: str) -> None:
    """Mark the runs of a dead trial that nothing will continue as FAILED (none stays RUNNING)."""
    import mlflow

    try:
        client = mlflow.MlflowClient()
        for run in _trial_runs(study_name, root):
            if run.info.status == "RUNNING":
                status, suffix = RUN_ENDS[state]
                client.set_tag(run.info.run_id, STATE_TAG, state)
                client.set_tag(run.info.run_id, "mlflow.runName", run.info.run_name + suffix)
                client.set_terminated(run.info.run_id, status)
    except Exception as exc:  # the study must go on even when the tracking server hiccups
        warnings.warn(f"could not close the MLflow run of trial {root} of {study_name}: {exc}", stacklevel=2)


def open_study(job: SweepJob, exp: Experiment, worker_seed: int, settings: Settings | None = None) -> optuna.Study:
    """Create or load the job's study with the experiment's sampler and pruner.

    In generations (``budget.generation_size`` > 0) both see only earlier generations and each trial's sampler
    is seeded from the study seed and its logical number, so ``worker_seed`` is unused; free-running, the
    worker's sampler is seeded with it.
    """
    size = exp.budget.generation_size
    if size > 0:
        sampler = GenerationSampler(lambda seed: make_sampler(exp.sampler, seed), job.seed, size)
        pruner = GenerationPruner(make_pruner(exp.pruner), size)
    else:
        sampler, pruner = make_sampler(exp.sampler, worker_seed), make_pruner(exp.pruner)
    study = optuna.create_study(
        storage=sweep_storage(job.storage_url, settings or Settings()),
        study_name=job.study_name,
        direction=exp.objective.direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    # The objective's name (the dashboard and trials_dataframe show it instead of "Objective 0"). A study attribute:
    # no sampler or pruner reads it. Written once; later openers find it set.
    if study.metric_names != [exp.objective.metric]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since 3.2
            study.set_metric_names([exp.objective.metric])
    return study


def link_run(target: optuna.Study | optuna.Trial, run_id: str, experiment: str) -> None:
    """User attributes of a study (its sweep's parent run) or trial (its child run) that lead to the MLflow run:
    the run id, and the UI page when the tracking URI is a server (:func:`run_url`). Nothing an objective, sampler
    or pruner reads."""
    target.set_user_attr(RUN_ID_ATTR, run_id)
    url = run_url(run_id, experiment)
    if url:
        target.set_user_attr(RUN_URL_ATTR, url)


def max_retry(job: SweepJob, settings: Settings) -> int | None:
    """Retries a dead worker's trial gets (None: a failed trial is never retried, it is final at once)."""
    return settings.trial_max_retry if heartbeats_enabled(job.storage_url, settings) else None


def _give_back(study: optuna.Study, trial: optuna.Trial, this: optuna.trial.FrozenTrial, root: int | None) -> None:
    """Fail this attempt and queue an identical one (same logical number, same fixed params) to run later.

    The copy is queued before the attempt fails, so no worker ever sees the logical trial failed with nothing
    to come. It does not count as a retry of a dead worker (``retry_history`` is carried, not extended).
    """
    attrs = {"failed_trial": this.number if root is None else root}
    for key in ("fixed_params", "retry_history"):
        if key in this.system_attrs:
            attrs[key] = this.system_attrs[key]
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=attrs))
    study._storage.set_trial_system_attr(trial._trial_id, YIELDED, True)


def _objective(job: SweepJob, exp: Experiment, params: Params, settings: Settings):
    import mlflow

    task = get_task(job.task)
    prepared = Path(job.prepared_dir)
    train, val = task.dataset(prepared, "train"), task.dataset(prepared, "val")
    monitor, mode = monitored_metric(exp)
    retries = max_retry(job, settings)
    log = tracking  # every value goes through the tracking module's rounding
    if not job.track:
        mlflow, log, tags, exp_id = _Untracked(), _Untracked(), {}, ""
    else:
        if job.lineage:
            tags = dict(job.lineage)
        else:
            report = Path(job.validation_report)
            tags = lineage_tags(job.task, Path(job.raw_dir), prepared, params.digest(job.task), report, job.study_name)
        exp_id = experiment_id(settings, job.task)

    def objective(trial: optuna.Trial) -> float:
        ledger = Ledger.of(trial.study.get_trials(deepcopy=False))  # one read: this trial's stored state and the rest
        this = next(t for t in ledger.trials if t.number == trial.number)
        number = ledger.logical[trial.number]
        root = retried_trial_number(this)
        if number >= exp.budget.n_trials:  # two workers raced for the last trial: this one is surplus
            trial.study._storage.set_trial_system_attr(trial._trial_id, YIELDED, True)
            raise GenerationNotOpen(f"trial {number} is beyond the budget")
        if not ledger.is_open(number, exp.budget.generation_size, retries):
            _give_back(trial.study, trial, this, root)
            raise GenerationNotOpen(f"generation of trial {number} is not open")
        fixed, space = exp.arm_space(job.arm)
        hp = {**fixed, **suggest(trial, space)}
        trial.set_user_attr("worker_pid", os.getpid())  # which worker ran it (audit of parallelism)
        # A retry of a trial whose worker died is the same trial: same seed, checkpoint and MLflow run.
        root = trial.number if root is None else root
        run = _start_trial_run(job, exp_id, tags, trial.number, root, number) if job.track else None
        try:
            if run is not None:  # the dashboard's way from the trial to its MLflow run
                link_run(trial, run.info.run_id, exp_id)
            if root == trial.number:
                log.log_params(hp)
            seed_everything(job.seed + number)  # initial weights follow the logical trial, not the worker's turn
            model, _ = task.build_model(hp, prepared)
            cfg = FitConfig.from_hparams(
                hp, epochs=exp.budget.epochs_per_trial, seed=job.seed + number, monitor=monitor, mode=mode
            )

            def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
                log.log_metrics(metrics, step=epoch)
                trial.report(metrics[exp.objective.metric], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

            checkpoint = settings.checkpoint_dir / job.study_name / f"trial-{root}.pt"
            if job.track:
                _report_checkpointed_epochs(trial, this, checkpoint, exp.objective.metric)
            result = fit(task, model, train, val, cfg, checkpoint=checkpoint, on_epoch=on_epoch)
            log.log_metrics({f"best_{exp.objective.metric}": result.best_value})
            _end_trial_run(mlflow, run, "COMPLETE")
            checkpoint.unlink(missing_ok=True)
            return result.best_value
        except optuna.TrialPruned:
            _end_trial_run(mlflow, run, "PRUNED")
            checkpoint.unlink(missing_ok=True)  # final state: on a shared cluster volume they add up
            raise
        except BaseException:
            _end_trial_run(mlflow, run, "FAIL")
            raise
        finally:
            del run

    return objective


def _end_trial_run(mlflow, run, state: str) -> None:
    """End the active trial run as its Optuna ``state`` reads in the runs table: tag, status and a name suffix."""
    status, suffix = RUN_ENDS[state]
    mlflow.set_tag(STATE_TAG, state)
    if suffix and run is not None:
        mlflow.set_tag("mlflow.runName", run.info.run_name + suffix)
    mlflow.end_run(status)


def trial_run_name(arm: str, logical: int) -> str:
    return f"{arm}-trial-{logical}"


def _start_trial_run(job: SweepJob, exp_id: str, tags: dict[str, str], number: int, root: int, logical: int):
    """A trial's MLflow child run; a retry reopens the run its earlier attempt started."""
    import mlflow

    if root != number:
        earlier = _trial_runs(job.study_name, root)
        if earlier:
            run = mlflow.start_run(run_id=earlier[0].info.run_id)
            # the earlier attempt's end (" (failed)") no longer holds: the run is this attempt's now
            name = trial_run_name(job.arm, logical)
            mlflow.set_tags({"optuna.trial_number": str(number), "optuna.retry_of": str(root), "mlflow.runName": name})
            return mlflow.get_run(run.info.run_id)
    return mlflow.start_run(
        experiment_id=exp_id,
        run_name=trial_run_name(job.arm, logical),
        parent_run_id=job.parent_run_id,
        tags={
            **tags,
            f"{TAG}run_kind": "trial",
            f"{TAG}arm": job.arm,
            "optuna.trial_number": str(number),
            ROOT_TAG: str(root),
            LOGICAL_TAG: str(logical),
        },
    )


def _report_checkpointed_epochs(trial: optuna.Trial, this: optuna.trial.FrozenTrial, checkpoint: Path, metric: str):
    """Epochs an earlier attempt checkpointed but died before reporting: report and log them now.

    ``fit`` resumes after the checkpoint's last epoch and only reports the epochs it trains. What the
    earlier attempt did report is kept (inherited intermediate values, the run's metric history).
    """
    import mlflow
    import torch

    if not checkpoint.is_file():
        return
    history = torch.load(checkpoint, map_location="cpu", weights_only=True)["history"]
    run_id = mlflow.active_run().info.run_id
    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, metric)}
    for row in history:
        epoch = int(row["epoch"])
        metrics = {k: float(v) for k, v in row.items() if k != "epoch"}
        if epoch not in logged:
            tracking.log_metrics(metrics, step=epoch)
        if epoch not in this.intermediate_values:
            trial.report(metrics[metric], epoch)


#: seconds a local worker waits at the start line for the others (a worker that died starting does not hold them)
START_TIMEOUT_S = 300


def worker_main(job: SweepJob, worker_index: int, start_line=None) -> None:
    """Entry point of one local worker process (and of a Kubernetes worker pod).

    ``start_line`` (a ``multiprocessing.Barrier`` of the local workers): no worker takes a trial before all have
    started, so a worker whose interpreter took longer to start still gets its share of the first generation. It
    changes who runs what, never the results.
    """

    from mlops.fit.loop import deterministic_torch
    from mlops.params import load_experiment, load_params

    deterministic_torch(threads=1)  # N workers on N cores: no oversubscription; the same numbers every run
    # ERROR, not WARNING: a trial given back to its generation (GenerationNotOpen) is logged as a failed trial by
    # Optuna; real failures re-raise (catch=()) and stop the worker loudly anyway.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    settings = Settings()
    connect(settings)
    params = load_params(job.params_path)
    exp = load_experiment(job.task, job.experiments_dir)
    study = open_study(job, exp, worker_seed=job.seed * 1000 + worker_index, settings=settings)
    objective = _objective(job, exp, params, settings)
    if start_line is not None:
        with contextlib.suppress(threading.BrokenBarrierError):
            start_line.wait(timeout=START_TIMEOUT_S)
    _work(study, objective, exp, max_retry(job, settings), heartbeats_enabled(job.storage_url, settings))


def _work(study: optuna.Study, objective, exp: Experiment, retries: int | None, heartbeats: bool) -> None:
    """Run trials until the budget is spent: each when its generation is open, waiting retries first.

    With heartbeats a worker does not leave while another trial is running: if that trial's worker is dead,
    its heartbeat stops, it is failed after the grace period and its retry must still be run. Without, a
    worker leaves once every trial of the budget has been handed out.
    """
    size, n_trials = exp.budget.generation_size, exp.budget.n_trials
    while True:
        if heartbeats:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # dead workers' trials -> FAIL + WAITING retries
        ledger = Ledger.of(study.get_trials(deepcopy=False))
        upcoming = ledger.next_to_run(n_trials)
        if upcoming is None:
            if not heartbeats or not any(t.state == TrialState.RUNNING for t in ledger.trials):
                return
        elif ledger.is_open(upcoming, size, retries):
            # takes a waiting trial first; GenerationNotOpen: another worker took the trial this one expected
            with contextlib.suppress(GenerationNotOpen):
                study.optimize(objective, n_trials=1, catch=())
            continue
        time.sleep(POLL_S)


def _fail_stale_trials(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed local sweep can never finish: fail each and queue its retry.

    The retry is the same logical trial (same params, seed, checkpoint and MLflow run), so a resumed sweep
    ends with the study an uninterrupted one makes.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    retry = retry_callback(None)
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        retry(study, trial)
    return len(stale)


def find_parent_run(exp_id: str, study_name: str):
    """The sweep's MLflow parent run from an earlier sweep of the same study, or ``None``."""
    import mlflow

    found = mlflow.search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG}run_kind` = 'sweep' AND tags.`{TAG}sweep_id` = '{study_name}'",
        output_format="list",
    )
    return found[0] if found else None


def _start_parent_run(settings: Settings, task: str, study_name: str, tags: dict[str, str]):
    """Start (or, when the study is resumed, reopen) the sweep's MLflow parent run."""
    import mlflow

    exp_id = experiment_id(settings, task)
    found = find_parent_run(exp_id, study_name)
    if found:
        return mlflow.start_run(run_id=found.info.run_id)
    return mlflow.start_run(
        experiment_id=exp_id, run_name=f"sweep-{study_name}", tags={**tags, f"{TAG}run_kind": "sweep"}
    )


@dataclass
class SweepResult:
    arm: str
    study_name: str
    parent_run_id: str
    #: the arm's fixed hyperparameters merged with the best trial's suggestions
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    objective_metric: str
    direction: str
    n_complete: int
    n_pruned: int
    n_failed: int


def run_sweep(
    task_name: str,
    params: Params,
    exp: Experiment,
    settings: Settings,
    prepared_dir: Path,
    raw_dir: Path,
    validation_report: Path,
    workers: int,
    experiments_dir: Path = Path("experiments"),
    show_progress: bool = True,
    arm: str = "default",
    track: bool = True,
) -> SweepResult:
    """Sweep one arm of the experiment: its own study and MLflow parent run, ``n_trials`` trials.

    ``track=False`` logs nothing to MLflow (no runs, no lineage): only for measuring the tracking overhead.
    """
    import mlflow

    connect(settings)
    study_name = study_name_for(task_name, arm, exp, params, prepared_dir)
    parent_id = ""
    if track:
        tags = lineage_tags(task_name, raw_dir, prepared_dir, params.digest(task_name), validation_report, study_name)
        parent_id = _start_parent_run(settings, task_name, study_name, tags).info.run_id
        mlflow.set_tag(f"{TAG}arm", arm)
    job = SweepJob(
        task=task_name,
        arm=arm,
        study_name=study_name,
        storage_url=settings.resolved_optuna_storage,
        prepared_dir=str(prepared_dir),
        raw_dir=str(raw_dir),
        validation_report=str(validation_report),
        parent_run_id=parent_id,
        params_path=str(params.path),
        experiments_dir=str(experiments_dir),
        seed=params.base.seed,
        track=track,
    )
    try:
        result = _run_workers(job, exp, workers, show_progress)
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")
    return result


def enqueue_start(study: optuna.Study, exp: Experiment, arm: str) -> None:
    """Queue the experiment's ``start_with`` configurations once (a resumed study already holds them)."""
    searched = exp.arm_space(arm)[1]
    for config in exp.start_with:
        # skip_if_exists: a rerun, or a second Kubernetes init container racing this one, adds no duplicate
        study.enqueue_trial({k: v for k, v in config.items() if k in searched}, skip_if_exists=True)


def _run_workers(job: SweepJob, exp: Experiment, workers: int, show_progress: bool) -> SweepResult:
    study = open_study(job, exp, worker_seed=job.seed)
    if job.track:
        link_parent_run(study, job.parent_run_id)
    enqueue_start(study, exp, job.arm)
    if not heartbeats_enabled(job.storage_url, Settings()):
        _fail_stale_trials(study)  # with heartbeats, workers fail (and retry) only trials really dead

    context = mp.get_context("spawn")  # fresh interpreters: no forked torch/MLflow state
    start_line = context.Barrier(workers)
    procs = [context.Process(target=worker_main, args=(job, i, start_line)) for i in range(workers)]
    for proc in procs:
        proc.start()
    _follow(study, exp, procs, show_progress)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"{len(bad)} sweep worker(s) failed (exit codes {bad}); see their output above")
    return summarize_study(study, exp, job.arm, job.parent_run_id, log=job.track)


def link_parent_run(study: optuna.Study, parent_run_id: str) -> None:
    """The study's user attributes lead to its sweep's MLflow parent run (:func:`link_run`)."""
    import mlflow

    if parent_run_id:
        link_run(study, parent_run_id, mlflow.get_run(parent_run_id).info.experiment_id)


def summarize_study(study: optuna.Study, exp: Experiment, arm: str, parent_id: str, log: bool = True) -> SweepResult:
    """The finished study's best trial and counts, logged with its plots to the active (parent) run."""
    import mlflow

    study_name = study.study_name
    table = logical_table(study.get_trials(deepcopy=False))
    complete = [row for row in table if row["state"] == "COMPLETE"]
    if not complete:
        raise RuntimeError(f"study {study_name} has no complete trial: widen the search space or the budget")
    # The best value, ties to the lowest logical number: the same pick however the workers were scheduled.
    sign = -1.0 if exp.objective.direction == "maximize" else 1.0
    best = min(complete, key=lambda row: (sign * row["value"], row["number"]))
    result = SweepResult(
        arm=arm,
        study_name=study_name,
        parent_run_id=parent_id,
        best_params={**exp.arm_space(arm)[0], **best["params"]},
        best_value=float(best["value"]),
        best_trial=best["number"],
        objective_metric=exp.objective.metric,
        direction=exp.objective.direction,
        n_complete=len(complete),
        n_pruned=sum(row["state"] == "PRUNED" for row in table),
        n_failed=sum(row["state"] == "FAIL" for row in table),
    )
    if not log:
        return result
    # The best configuration under the very names the trials (child runs) and the train run log (``lr``, not
    # ``best.lr``): MLflow's runs table then shows the parent's best in the same column as each trial's value, so the
    # best can be compared with and sorted among its trials; the tags say the values are the best trial's.
    tracking.log_params(result.best_params)
    mlflow.set_tags({f"{TAG}params_from": "best trial", f"{TAG}best_trial": str(result.best_trial)})
    note = (  # the run page's description
        f"Optuna study `{study_name}`, arm `{arm}`: {result.n_complete} complete, {result.n_pruned} pruned, "
        f"{result.n_failed} failed trials (each a child run; pruned ones KILLED). The parameters here are the best "
        f"trial's: trial {result.best_trial}, {exp.objective.metric}={result.best_value:.4g}."
    )
    mlflow.set_tag("mlflow.note.content", note)
    tracking.log_metrics(
        {
            f"best_{exp.objective.metric}": result.best_value,
            "n_complete": result.n_complete,
            "n_pruned": result.n_pruned,
            "n_failed": result.n_failed,
        }
    )
    _log_study_plots(study)
    return result


def _follow(study: optuna.Study, exp: Experiment, procs: list, show_progress: bool) -> None:
    """Progress bar of trials done and the best value so far, read from the shared storage."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("sweep {task.fields[study]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[best]}"),
    )
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        bar = progress.add_task("trials", total=exp.budget.n_trials, study=study.study_name, best="")
        while True:
            alive = any(p.is_alive() for p in procs)
            trials = [row for row in logical_table(study.get_trials(deepcopy=False)) if row["state"] in FINISHED_NAMES]
            values = [row["value"] for row in trials if row["state"] == "COMPLETE"]
            best = (max if exp.objective.direction == "maximize" else min)(values) if values else None
            pruned = sum(row["state"] == "PRUNED" for row in trials)
            label = f"best {exp.objective.metric}={best:.4f}, pruned {pruned}" if best is not None else ""
            progress.update(bar, completed=min(len(trials), exp.budget.n_trials), best=label)
            if not alive:
                break
            time.sleep(1.0)
    for proc in procs:
        proc.join()


def importance_skipped(study: optuna.Study) -> str | None:
    """Why parameter importances would mislead for this study (None: draw them): too few complete trials, an
    objective that never varied, or no parameter that did."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return f"{len(complete)} complete trials; importances need at least {MIN_TRIALS_FOR_IMPORTANCE}"
    if len({t.value for t in complete}) < 2:
        return "every complete trial has the same objective value"
    names = {k for t in complete for k in t.params}
    if not any(len({repr(t.params.get(name)) for t in complete}) > 1 for name in names):
        return "no parameter took more than one value among the complete trials"
    return None


#: MLflow tag of a sweep's parent run when it has no importance plot: why
IMPORTANCE_SKIPPED_TAG = f"{TAG}importance_skipped"


def _log_study_plots(study: optuna.Study) -> None:
    """Optuna's optimisation history and, when meaningful (:func:`importance_skipped`), parameter importances, as
    images on the parent run. Without the importance plot the run says why (``IMPORTANCE_SKIPPED_TAG``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as ovm

    warnings.simplefilter("ignore", ExperimentalWarning)  # the matplotlib backend is stable enough for us
    ax = ovm.plot_optimization_history(study)
    mlflow.log_figure(ax.figure, "optuna/optimization_history.png")
    plt.close(ax.figure)
    why = importance_skipped(study)
    if why is None:
        try:
            ax = ovm.plot_param_importances(study)
        except (RuntimeError, ValueError) as exc:
            why = str(exc)[:250]
        else:
            mlflow.log_figure(ax.figure, "optuna/param_importances.png")
            plt.close(ax.figure)
    if why is not None:
        mlflow.set_tag(IMPORTANCE_SKIPPED_TAG, why)


def select_arm(results: dict[str, SweepResult], fixed: str | None = None) -> str:
    """``fixed`` if given, else the arm whose best validation objective is best (never the test split)."""
    if fixed is not None:
        return fixed
    pick = max if next(iter(results.values())).direction == "maximize" else min
    return pick(results, key=lambda arm: results[arm].best_value)


def run_sweeps(
    task_name: str,
    params: Params,
    exp: Experiment,
    settings: Settings,
    prepared_dir: Path,
    raw_dir: Path,
    validation_report: Path,
    workers: int,
    experiments_dir: Path = Path("experiments"),
    show_progress: bool = True,
) -> dict[str, SweepResult]:
    """Every arm of the experiment, each with the same budget.

    With several arms and several workers the arms' studies run side by side, a process per arm and the workers
    shared out between them, instead of one arm after another on all workers. Each arm's start-up (interpreters,
    MLflow and study set-up: 15-20 s on 2 cores) then overlaps the others', and a core that finished its trial does
    not wait for its generation's slowest one. A study's trials do not depend on how many workers ran it
    (generations), so the results are the same either way (tests/test_deterministic_sweep.py).
    """
    arms = list(exp.arms)
    common = (task_name, params, exp, settings, prepared_dir, raw_dir, validation_report)
    if workers < 2 or len(arms) < 2:
        return {arm: run_sweep(*common, workers, experiments_dir, show_progress, arm=arm) for arm in arms}
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # The store and the experiment made here first: processes creating a new SQLite store at once race on its
    # migrations ("duplicate column").
    connect(settings)
    experiment_id(settings, task_name)
    per_arm = max(1, workers // len(arms))
    with ProcessPoolExecutor(min(workers, len(arms)), mp_context=get_context("spawn")) as pool:
        jobs = {arm: pool.submit(run_sweep, *common, per_arm, experiments_dir, False, arm=arm) for arm in arms}
        results = {}
        for arm, job in jobs.items():
            results[arm] = job.result()
            if show_progress:
                r = results[arm]
                print(f"sweep {r.study_name}: {r.n_complete} complete, {r.n_pruned} pruned", flush=True)
    return results


def write_sweeps(results: dict[str, SweepResult], path: Path, register_arm: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    selected = select_arm(results, register_arm)
    # Results only: the MLflow parent run id differs on every run (it stays on the MLflow runs themselves).
    arms = {arm: {k: v for k, v in asdict(r).items() if k != "parent_run_id"} for arm, r in results.items()}
    summary = {"selected": selected, "arms": arms}
    path.write_text(json.dumps(summary, indent=2, sort_keys=True))


def read_sweeps(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the sweep stage (`mlops sweep`) first")
    return json.loads(path.read_text())
