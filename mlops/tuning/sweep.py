"""A sweep: one Optuna study per task and configuration, run by N local worker processes.

The coordinator opens (or resumes) the study and the MLflow parent run, starts the workers, shows a
progress bar read from the shared storage, then logs the study's plots to the parent run. Each worker
(one torch thread) runs trials; each trial is an MLflow child run with its params, per-epoch metrics
and final state (complete / pruned / failed).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mlops.config import Experiment, Params, experiment_digest
from mlops.settings import Settings
from mlops.tasks import get_task
from mlops.tracking.lineage import TAG, dvc_hash, lineage_tags
from mlops.tracking.runs import connect, experiment_id
from mlops.training.loop import FitConfig, fit, seed_everything
from mlops.tuning.space import make_pruner, make_sampler, monitored_metric, suggest
from mlops.tuning.storage import make_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
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


def study_name_for(task: str, arm: str, exp: Experiment, params: Params, prepared_dir: Path) -> str:
    """Same search space, params and data -> same study, so a rerun resumes instead of restarting."""
    key = f"{experiment_digest(exp)}:{params.digest(task)}:{dvc_hash(prepared_dir)}"
    return f"{task}-{arm}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def open_study(job: SweepJob, exp: Experiment, worker_seed: int) -> optuna.Study:
    return optuna.create_study(
        storage=make_storage(job.storage_url),
        study_name=job.study_name,
        direction=exp.objective.direction,
        sampler=make_sampler(exp.sampler, worker_seed),
        pruner=make_pruner(exp.pruner),
        load_if_exists=True,
    )


def _objective(job: SweepJob, exp: Experiment, params: Params, settings: Settings):
    import mlflow

    task = get_task(job.task)
    prepared = Path(job.prepared_dir)
    train, val = task.dataset(prepared, "train"), task.dataset(prepared, "val")
    monitor, mode = monitored_metric(exp)
    tags = lineage_tags(
        job.task,
        Path(job.raw_dir),
        prepared,
        params.digest(job.task),
        Path(job.validation_report),
        job.study_name,
    )
    exp_id = experiment_id(settings, job.task)

    def objective(trial: optuna.Trial) -> float:
        fixed, space = exp.arm_space(job.arm)
        hp = {**fixed, **suggest(trial, space)}
        trial.set_user_attr("worker_pid", os.getpid())  # which worker ran it (audit of parallelism)
        run = mlflow.start_run(
            experiment_id=exp_id,
            run_name=f"{job.arm}-trial-{trial.number}",
            parent_run_id=job.parent_run_id,
            tags={**tags, f"{TAG}run_kind": "trial", f"{TAG}arm": job.arm, "optuna.trial_number": str(trial.number)},
        )
        try:
            mlflow.log_params(hp)
            seed_everything(job.seed + trial.number)  # initial weights reproducible per trial
            model, _ = task.build_model(hp, prepared)
            cfg = FitConfig(
                epochs=exp.budget.epochs_per_trial,
                lr=float(hp["lr"]),
                batch_size=int(hp["batch_size"]),
                weight_decay=float(hp.get("weight_decay", 0.0)),
                seed=job.seed + trial.number,
                monitor=monitor,
                mode=mode,
            )

            def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
                mlflow.log_metrics(metrics, step=epoch)
                trial.report(metrics[exp.objective.metric], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

            checkpoint = settings.checkpoint_dir / job.study_name / f"trial-{trial.number}.pt"
            result = fit(task, model, train, val, cfg, checkpoint=checkpoint, on_epoch=on_epoch)
            mlflow.log_metric(f"best_{exp.objective.metric}", result.best_value)
            mlflow.set_tag("optuna.state", "COMPLETE")
            mlflow.end_run("FINISHED")
            checkpoint.unlink(missing_ok=True)
            return result.best_value
        except optuna.TrialPruned:
            mlflow.set_tag("optuna.state", "PRUNED")
            mlflow.end_run("FINISHED")
            raise
        except BaseException:
            mlflow.set_tag("optuna.state", "FAIL")
            mlflow.end_run("FAILED")
            raise
        finally:
            del run

    return objective


def worker_main(job: SweepJob, worker_index: int) -> None:
    """Entry point of one local worker process (and of a Kubernetes worker pod)."""
    import torch

    from mlops.config import load_experiment, load_params

    torch.set_num_threads(1)  # N workers on N cores: no oversubscription
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = Settings()
    connect(settings)
    params = load_params(job.params_path)
    exp = load_experiment(job.task, job.experiments_dir)
    study = open_study(job, exp, worker_seed=job.seed * 1000 + worker_index)
    objective = _objective(job, exp, params, settings)
    while True:
        # Count in-flight trials too, so N workers stop together at the budget.
        trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if len(trials) >= exp.budget.n_trials:
            return
        study.optimize(objective, n_trials=1, catch=())


def _fail_stale_trials(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed local sweep can never finish: mark them failed."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(stale)


def _start_parent_run(settings: Settings, task: str, study_name: str, tags: dict[str, str]):
    """Start (or, when the study is resumed, reopen) the sweep's MLflow parent run."""
    import mlflow

    exp_id = experiment_id(settings, task)
    found = mlflow.search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG}run_kind` = 'sweep' AND tags.`{TAG}sweep_id` = '{study_name}'",
        output_format="list",
    )
    if found:
        return mlflow.start_run(run_id=found[0].info.run_id)
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
) -> SweepResult:
    """Sweep one arm of the experiment: its own study and MLflow parent run, ``n_trials`` trials."""
    import mlflow

    connect(settings)
    study_name = study_name_for(task_name, arm, exp, params, prepared_dir)
    tags = lineage_tags(task_name, raw_dir, prepared_dir, params.digest(task_name), validation_report, study_name)
    parent = _start_parent_run(settings, task_name, study_name, tags)
    mlflow.set_tag(f"{TAG}arm", arm)
    job = SweepJob(
        task=task_name,
        arm=arm,
        study_name=study_name,
        storage_url=settings.resolved_optuna_storage,
        prepared_dir=str(prepared_dir),
        raw_dir=str(raw_dir),
        validation_report=str(validation_report),
        parent_run_id=parent.info.run_id,
        params_path=str(params.path),
        experiments_dir=str(experiments_dir),
        seed=params.base.seed,
    )
    try:
        result = _run_workers(job, exp, workers, show_progress)
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")
    return result


def _run_workers(job: SweepJob, exp: Experiment, workers: int, show_progress: bool) -> SweepResult:
    import mlflow

    study_name, parent_id = job.study_name, job.parent_run_id
    study = open_study(job, exp, worker_seed=job.seed)
    _fail_stale_trials(study)

    context = mp.get_context("spawn")  # fresh interpreters: no forked torch/MLflow state
    procs = [context.Process(target=worker_main, args=(job, i)) for i in range(workers)]
    for proc in procs:
        proc.start()
    _follow(study, exp, procs, show_progress)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"{len(bad)} sweep worker(s) failed (exit codes {bad}); see their output above")

    finished = study.get_trials(deepcopy=False)
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"study {study_name} has no complete trial: widen the search space or the budget")
    best = study.best_trial
    result = SweepResult(
        arm=job.arm,
        study_name=study_name,
        parent_run_id=parent_id,
        best_params={**exp.arm_space(job.arm)[0], **best.params},
        best_value=float(best.value),
        best_trial=best.number,
        objective_metric=exp.objective.metric,
        direction=exp.objective.direction,
        n_complete=len(complete),
        n_pruned=sum(t.state == TrialState.PRUNED for t in finished),
        n_failed=sum(t.state == TrialState.FAIL for t in finished),
    )
    mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
    mlflow.log_metrics(
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
            trials = study.get_trials(deepcopy=False, states=FINISHED)
            values = [t.value for t in trials if t.state == TrialState.COMPLETE]
            best = (max if exp.objective.direction == "maximize" else min)(values) if values else None
            pruned = sum(t.state == TrialState.PRUNED for t in trials)
            label = f"best {exp.objective.metric}={best:.4f}, pruned {pruned}" if best is not None else ""
            progress.update(bar, completed=min(len(trials), exp.budget.n_trials), best=label)
            if not alive:
                break
            time.sleep(1.0)
    for proc in procs:
        proc.join()


def _log_study_plots(study: optuna.Study) -> None:
    """Optuna's optimisation history and parameter importances, as images on the parent run."""
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
    if len([t for t in study.trials if t.state == TrialState.COMPLETE]) >= 2:
        try:
            ax = ovm.plot_param_importances(study)
        except (RuntimeError, ValueError) as exc:  # e.g. every complete trial has the same value
            mlflow.set_tag("optuna.importance_skipped", str(exc)[:250])
        else:
            mlflow.log_figure(ax.figure, "optuna/param_importances.png")
            plt.close(ax.figure)


def select_arm(results: dict[str, SweepResult]) -> str:
    """The arm whose best validation objective is best (selection never looks at the test split)."""
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
    """Every arm of the experiment in turn, each with the same budget."""
    return {
        arm: run_sweep(
            task_name,
            params,
            exp,
            settings,
            prepared_dir,
            raw_dir,
            validation_report,
            workers,
            experiments_dir,
            show_progress,
            arm=arm,
        )
        for arm in exp.arms
    }


def write_sweeps(results: dict[str, SweepResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {"selected": select_arm(results), "arms": {arm: asdict(r) for arm, r in results.items()}}
    path.write_text(json.dumps(summary, indent=2, sort_keys=True))


def read_sweeps(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the sweep stage (`mlops sweep`) first")
    return json.loads(path.read_text())
