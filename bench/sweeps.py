"""Benchmarks 3-5: the real sweep (``mlops.tuning.sweep.run_sweep``, worker processes, Optuna journal
storage) on a prepared fume_hood dataset (demo image sizes, half the photos), with a fixed small budget.

3. ``tracking``: the same sweep with MLflow logging on and off (``run_sweep(track=False)``): wall-time ratio.
4. ``pruning``: the same sampler and budget with the median pruner and without: time to reach the unpruned
   sweep's best value, and the best values.
5. ``workers``: 1 vs 2 local worker processes: trials per hour.

Every sweep gets a fresh store (``MLOPS_HOME``), so no study is resumed.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.report import ROOT, Section, median, ratio

TASK = "fume_hood"
ARM = "custom_cnn"
#: every trial costs the same (one batch size, one width) where only the wall time is compared
FIXED_COST_SPACE = {
    "batch_size": {"type": "categorical", "choices": [32]},
    "width": {"type": "categorical", "choices": [16]},
}  # noqa: E501


@dataclass
class SweepData:
    work: Path
    params_path: Path
    prepared: Path
    raw: Path
    report: Path
    n_train: int


def sweep_data(work: Path, quick: bool) -> SweepData:
    """Simulate, validate and prepare fume_hood: the demo params' image and model input sizes, fewer photos."""
    from mlops.params import load_params
    from mlops.tasks import get_task
    from mlops.validation import validate_dataset

    raw_params = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = raw_params[TASK]
    # Half the demo's photos and copies (a sweep of minutes); --quick: a third of that.
    section["simulate"].update(n_photos=40 if quick else 60, n_labs=14 if quick else 22)
    section["augment"]["copies"] = 5 if quick else 10
    params_path = work / "params.yaml"
    params_path.write_text(
        yaml.safe_dump({k: raw_params[k] for k in ("base", "sweep")} | {"tasks": [TASK], TASK: section})
    )
    params = load_params(params_path)
    task = get_task(TASK)
    raw, prepared, report = work / "raw" / TASK, work / "prepared" / TASK, work / "validation.json"
    start = time.perf_counter()
    task.simulate(raw, params.task(TASK), seed=params.base.seed, progress=lambda _: None)
    validate_dataset(task, raw, params.task(TASK)).write(report)
    task.prepare(raw, prepared, params.task(TASK), seed=params.base.seed)
    n_train = len(task.dataset(prepared, "train"))
    print(f"prepared {TASK} ({n_train} training samples) in {time.perf_counter() - start:.0f} s", flush=True)
    return SweepData(work, params_path, prepared, raw, report, n_train)


def experiment(data: SweepData, name: str, **changes):
    """The repo's fume_hood experiment with ``changes``, written to its own folder and loaded strictly."""
    from mlops.params import load_experiment

    exp = yaml.safe_load((ROOT / "experiments" / f"{TASK}.yaml").read_text())
    space = changes.pop("space", {})
    exp.update(changes)
    exp["search_space"] = {**exp["search_space"], **space}
    folder = data.work / "experiments" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(exp))
    return load_experiment(TASK, folder), folder


@dataclass
class Sweep:
    seconds: float
    study: object
    result: object


def sweep(data: SweepData, exp, exp_dir: Path, label: str, workers: int, track: bool = True) -> Sweep:
    """One sweep of the arm in a fresh store; wall time from start to its result."""
    import optuna

    from mlops.params import load_params
    from mlops.settings import Settings
    from mlops.tuning.storage import make_storage
    from mlops.tuning.sweep import run_sweep

    home = Path(tempfile.mkdtemp(prefix=f"home-{label}-", dir=data.work))
    os.environ["MLOPS_HOME"] = str(home)  # the worker processes read their Settings from the environment
    for key in ("MLOPS_TRACKING_URI", "MLOPS_OPTUNA_STORAGE", "MLOPS_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI"):
        os.environ.pop(key, None)
    settings = Settings()
    params = load_params(data.params_path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if track:  # a store in use already has its tables: creating them (once per store) is not per-sweep work
        from mlops.tracking.runs import experiment_id

        experiment_id(settings, TASK)
    start = time.perf_counter()
    result = run_sweep(
        TASK,
        params,
        exp,
        settings,
        data.prepared,
        data.raw,
        data.report,
        workers,
        experiments_dir=exp_dir,
        show_progress=False,
        arm=ARM,
        track=track,
    )
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name=result.study_name, storage=make_storage(settings.resolved_optuna_storage))
    print(
        f"  {label}: {seconds:.1f} s, {result.n_complete} complete, {result.n_pruned} pruned, "
        f"best {result.objective_metric}={result.best_value:.4f}",
        flush=True,
    )
    return Sweep(seconds, study, result)


def _setup(quick: bool) -> SweepData:
    work = Path(tempfile.mkdtemp(prefix="mlops-bench-sweeps-"))
    return sweep_data(work, quick)


def bench_tracking(quick: bool = False, data: SweepData | None = None) -> Section:
    section = Section("tracking", "3. Tracking overhead: the same sweep with MLflow logging on vs off")
    data = data or _setup(quick)
    n_trials, epochs, reps = (4, 3, 1) if quick else (6, 3, 2)
    exp, exp_dir = experiment(
        data,
        "tracking",
        budget={"n_trials": n_trials, "epochs_per_trial": epochs, "generation_size": 2},
        sampler={"type": "random"},
        pruner={"type": "nop"},
        space=FIXED_COST_SPACE,
    )
    table = section.table(
        f"wall time (s) of a {n_trials}-trial × {epochs}-epoch sweep, 2 workers, {data.n_train} training samples",
        ["repeat", "tracking off s", "tracking on s", "on / off"],
    )
    offs, ons = [], []
    for rep in range(reps):
        order = (False, True) if rep % 2 == 0 else (True, False)
        got = {track: sweep(data, exp, exp_dir, f"track-{'on' if track else 'off'}-{rep}", 2, track) for track in order}
        offs.append(got[False].seconds)
        ons.append(got[True].seconds)
        table.add(rep + 1, got[False].seconds, got[True].seconds, ratio(got[True].seconds, got[False].seconds))
    if reps > 1:
        table.add("median", median(offs), median(ons), ratio(median(ons), median(offs)))
    section.note(
        "Tracking on = what the pipeline does: a parent run with lineage tags (git, DVC hashes, validation), a child "
        "run per trial with params, per-epoch metrics and final state, the study's plots on the parent; MLflow on "
        "SQLite in the sweep's store (its tables created before the clock starts). Off = `run_sweep(track=False)`: "
        "Optuna only. Random sampler, no pruner, one batch size and width, so both sweeps train the same trials. "
        "The ratio shrinks as trials get longer: the logging cost is per run and per epoch, not per sample."
    )
    return section


def _time_to_reach(study, target: float, maximize: bool) -> float | None:
    """Seconds from the first trial's start until a finished trial reached ``target`` (None: never)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials if t.datetime_start)
    hits = [
        t.datetime_complete
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.value is not None
        and (t.value >= target if maximize else t.value <= target)
    ]
    return (min(hits) - start).total_seconds() if hits else None


def _trial_span(study) -> float:
    """Seconds from the first trial's start to the last trial's end (the sweep without process start-up)."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    return (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()


def bench_pruning(quick: bool = False, data: SweepData | None = None) -> Section:
    section = Section("pruning", "4. Pruning: the same sampler and budget with and without the median pruner")
    data = data or _setup(quick)
    n_trials, epochs = (6, 4) if quick else (10, 5)
    budget = {"n_trials": n_trials, "epochs_per_trial": epochs, "generation_size": 2}
    sampler = {"type": "tpe", "n_startup_trials": 3}
    base, base_dir = experiment(data, "unpruned", budget=budget, sampler=sampler, pruner={"type": "nop"})
    pruned, pruned_dir = experiment(
        data,
        "pruned",
        budget=budget,
        sampler=sampler,
        pruner={"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1},
    )
    table = section.table(
        f"{n_trials} trials × {epochs} epochs, TPE (3 start-up trials, seeded), 1 worker, {data.n_train} training "
        "samples; times from the first trial's start",
        [
            "pruner",
            "wall s",
            "trials s",
            "complete / pruned",
            "best val_accuracy",
            "s to reach unpruned best",
            "time to best vs unpruned",
            "wall vs unpruned",
        ],
    )
    a = sweep(data, base, base_dir, "unpruned", 1)
    b = sweep(data, pruned, pruned_dir, "pruned", 1)
    target, maximize = a.result.best_value, a.result.direction == "maximize"
    reach_a = _time_to_reach(a.study, target, maximize)
    reach_b = _time_to_reach(b.study, target, maximize)
    table.add(
        "none (NopPruner)",
        a.seconds,
        _trial_span(a.study),
        f"{a.result.n_complete} / {a.result.n_pruned}",
        a.result.best_value,
        reach_a,
        1.0,
        1.0,
    )
    table.add(
        "median (3 start-up trials, 1 warm-up epoch)",
        b.seconds,
        _trial_span(b.study),
        f"{b.result.n_complete} / {b.result.n_pruned}",
        b.result.best_value,
        reach_b if reach_b is not None else "not reached",
        ratio(reach_b, reach_a),
        ratio(b.seconds, a.seconds),
    )
    section.note(
        "Both sweeps start from the same seeded TPE sampler; once a trial is pruned the sampler sees different "
        "history, so the later trials differ. Validation accuracy on the simulated data moves in coarse steps."
    )
    return section


def bench_workers(quick: bool = False, data: SweepData | None = None) -> Section:
    section = Section("workers", "5. Parallel workers: 1 vs 2 local worker processes")
    data = data or _setup(quick)
    n_trials, epochs, reps = (4, 3, 1) if quick else (8, 3, 2)
    exp, exp_dir = experiment(
        data,
        "workers",
        budget={"n_trials": n_trials, "epochs_per_trial": epochs, "generation_size": 2},
        sampler={"type": "random"},
        pruner={"type": "nop"},
        space=FIXED_COST_SPACE,
    )
    table = section.table(
        f"{n_trials} trials × {epochs} epochs, MLflow tracking on, {data.n_train} training samples, "
        f"{os.cpu_count()} cores; trials/h over the whole sweep and over the trials' span (without worker start-up)",
        [
            "repeat",
            "1 worker s",
            "2 workers s",
            "1 worker trials/h",
            "2 workers trials/h",
            "2 / 1",
            "2 / 1 over the trials' span",
        ],
    )
    walls: dict[int, list[float]] = {1: [], 2: []}
    spans: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(reps):
        order = (1, 2) if rep % 2 == 0 else (2, 1)
        got = {w: sweep(data, exp, exp_dir, f"workers-{w}-{rep}", w) for w in order}
        for w in (1, 2):
            walls[w].append(got[w].seconds)
            spans[w].append(_trial_span(got[w].study))
        r1, r2 = 3600 * n_trials / got[1].seconds, 3600 * n_trials / got[2].seconds
        table.add(rep + 1, got[1].seconds, got[2].seconds, r1, r2, ratio(r2, r1), ratio(spans[1][-1], spans[2][-1]))
    if reps > 1:
        r1, r2 = 3600 * n_trials / median(walls[1]), 3600 * n_trials / median(walls[2])
        table.add(
            "median",
            median(walls[1]),
            median(walls[2]),
            r1,
            r2,
            ratio(r2, r1),
            ratio(median(spans[1]), median(spans[2])),
        )
    section.note(
        "Each worker is a spawned process with one torch thread; the wall time includes starting the workers "
        "(importing torch and MLflow, opening the study), which short trials do not amortise. Random sampler, no "
        "pruner, one batch size and width: every trial costs the same. Two workers can only gain when two cores are "
        "free: with other jobs on the machine (load average above 2) they share what is left."
    )
    return section
