"""Repeated, paired training of a task's arms over seeds: the spread behind one pipeline comparison.

The pipeline trains each arm once (one seed), so "arm A beat arm B" there may be luck. ``run_repeats`` trains
every arm again under several seeds with the train stage's budget and evaluates each on the test split:

- ``tuned`` (default): each arm at its own sweep-best hyperparameters (reports/<task>/best_params.json);
- ``shared``: every arm at the *same* hyperparameters (the registered arm's best, each arm's fixed keys on top),
  so the arms differ only in what defines them (the study's comparison);
- ``vary``: shared, once per value of one hyperparameter (e.g. ``loss=ce,dice``): does the verdict hold
  for every loss?

Seed ``s`` of one configuration trains every arm with the same seed, so arms are compared in pairs.
Outputs (``out_dir``): ``runs.csv`` (one row per configuration x seed x arm), ``summary.json`` (per arm mean,
sd, min, max; per arm pair the wins and a two-sided sign test, per configuration and pooled) and
``repeats.png``. One MLflow run (``run_kind=repeats``) in the task's experiment carries them.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.config import CategoricalParam, ConfigError, Experiment, FloatParam, check_in_space
from mlops.params import Params

RUNS_FILE, SUMMARY_FILE, FIGURE_FILE = "runs.csv", "summary.json", "repeats.png"


@dataclass(frozen=True)
class Job:
    """One training run: an arm at one configuration and seed."""

    config: str
    arm: str
    seed: int
    hparams: dict[str, Any]


def parse_vary(text: str, exp: Experiment) -> tuple[str, list[Any]]:
    """``name=v1,v2`` -> (name, typed values); the name must be in the search space, values inside it."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not values.strip():
        raise ConfigError(f"--vary takes NAME=V1,V2,... (e.g. loss=ce,dice), got {text!r}")
    if name not in exp.search_space:
        raise ConfigError(f"--vary {name!r} is not in the search space: {sorted(exp.search_space)}")
    space, raw = exp.search_space[name], [v.strip() for v in values.split(",") if v.strip()]
    if isinstance(space, CategoricalParam):  # choices may be numbers: match them as written
        by_text = {str(c): c for c in space.choices}
        typed = [by_text.get(v, v) for v in raw]
    else:
        cast = float if isinstance(space, FloatParam) else int
        try:
            typed = [cast(v) for v in raw]
        except ValueError:
            raise ConfigError(f"--vary {name} takes {cast.__name__} values, got {raw}") from None
    for value in typed:
        try:
            check_in_space(space, value, f"--vary {name}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return name, typed


def plan_jobs(
    exp: Experiment,
    sweeps: dict[str, Any],
    seeds: list[int],
    mode: str,
    vary: tuple[str, list[Any]] | None = None,
) -> list[Job]:
    """Every (configuration, seed, arm) to train; see the module docstring for the modes."""
    arms = sweeps["arms"]
    missing = sorted(set(exp.arms) - set(arms))
    if missing:
        raise ConfigError(f"best_params.json has no sweep result for arm(s) {missing}: rerun the sweep stage")
    if mode == "tuned":
        if vary:
            raise ConfigError("--vary compares arms at shared hyperparameters: use it with --mode shared")
        configs = {"tuned": {arm: dict(arms[arm]["best_params"]) for arm in exp.arms}}
    elif mode == "shared":
        base = dict(arms[sweeps.get("selected") or next(iter(exp.arms))]["best_params"])
        values = vary[1] if vary else [None]
        configs = {}
        for value in values:
            label = "shared" if vary is None else f"{vary[0]}={value}"
            common = base if vary is None else {**base, vary[0]: value}
            configs[label] = {arm: {**common, **exp.arms[arm]} for arm in exp.arms}
    else:
        raise ConfigError(f"mode must be 'tuned' or 'shared', got {mode!r}")
    return [
        Job(label, arm, seed, hp) for label, per_arm in configs.items() for seed in seeds for arm, hp in per_arm.items()
    ]


def run_job(job: Job, task_name: str, section: Any, monitor: str, direction: str, prepared_dir: str) -> dict[str, Any]:
    """Train one arm at one seed with the train stage's budget (``section``: the task's typed params, read once
    by the caller, so editing params.yaml mid-run changes nothing); its test metrics (a process-pool worker)."""
    import torch

    from mlops.fit.loop import FitConfig, fit, seed_everything
    from mlops.tasks import get_task
    from mlops.training.scoring import evaluate_sealed

    torch.set_num_threads(1)  # one thread per worker: workers run side by side
    task, tp, prepared = get_task(task_name), section, Path(prepared_dir)
    started = time.perf_counter()
    seed_everything(job.seed)
    model, _ = task.build_model(job.hparams, prepared)
    cfg = FitConfig.from_hparams(
        job.hparams, epochs=tp.train.epochs, seed=job.seed, monitor=monitor, mode=direction, patience=tp.train.patience
    )
    result = fit(task, model, task.dataset(prepared, "train"), task.dataset(prepared, "val"), cfg)
    train_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:  # plots are not kept: the table is the result
        # the finished model's final scoring opens the test split; its training and early stopping saw only val
        metrics = evaluate_sealed(task, model.eval(), prepared, tp, Path(scratch), reader="repeats").metrics
    return {
        "config": job.config,
        "seed": job.seed,
        "arm": job.arm,
        f"val_{monitor}": result.best_value,
        "best_epoch": result.best_epoch,
        "train_seconds": round(train_seconds, 1),
        **{k: v for k, v in metrics.items() if isinstance(v, int | float)},
    }


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _pairs(table: pd.DataFrame, metric: str, higher_is_better: bool) -> list[dict[str, Any]]:
    wide = table.pivot_table(index=["config", "seed"], columns="arm", values=metric)
    out = []
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        both = wide[[a, b]].dropna()
        diff = (both[a] - both[b]) * (1 if higher_is_better else -1)
        wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
        out.append(
            {
                "arms": [a, b],
                "pairs": len(both),
                f"{a}_better": wins,
                f"{b}_better": losses,
                "ties": len(both) - wins - losses,
                f"mean_{metric}_difference": float((both[a] - both[b]).mean()) if len(both) else None,
                "sign_test_p": sign_test(wins, losses),
            }
        )
    return out


def summarize(table: pd.DataFrame, metric: str, higher_is_better: bool = True) -> dict[str, Any]:
    """Per configuration and pooled: each arm's mean/sd/min/max of ``metric`` and the paired arm comparisons."""
    if metric not in table:
        raise ConfigError(f"metric {metric!r} is not among the evaluation's metrics: {sorted(table.columns)}")

    def block(rows: pd.DataFrame) -> dict[str, Any]:
        stats = rows.groupby("arm")[metric].agg(["mean", "std", "min", "max", "count"])
        per_arm = {
            arm: {k: (None if pd.isna(v) else float(v)) for k, v in row.items()} for arm, row in stats.iterrows()
        }
        return {"arms": per_arm, "pairs": _pairs(rows, metric, higher_is_better)}

    return {
        "metric": metric,
        "higher_is_better": higher_is_better,
        "configs": {config: block(rows) for config, rows in table.groupby("config", sort=False)},
        "pooled": block(table),
    }


def plot(table: pd.DataFrame, metric: str, out: Path) -> Path:
    """One panel per configuration: each arm's metric per seed, the seeds' pairs joined by lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(table["config"]))
    arms = sorted(table["arm"].unique())
    fig, axes = plt.subplots(1, len(configs), figsize=(2.6 * len(configs) + 1, 3.4), sharey=True, squeeze=False)
    for ax, config in zip(axes[0], configs, strict=True):
        rows = table[table["config"] == config].pivot_table(index="seed", columns="arm", values=metric)
        for _, seed_row in rows.iterrows():
            ax.plot(range(len(arms)), [seed_row.get(a, np.nan) for a in arms], color="0.7", zorder=1)
        for i, arm in enumerate(arms):
            ax.scatter([i] * len(rows), rows.get(arm, pd.Series(dtype=float)), zorder=2, label=arm)
            ax.hlines(rows.get(arm, pd.Series(dtype=float)).mean(), i - 0.25, i + 0.25, color="k", zorder=3)
        ax.set_xticks(range(len(arms)), arms, rotation=20)
        ax.set_title(config, fontsize=9)
        ax.set_xlim(-0.5, len(arms) - 0.5)
    axes[0][0].set_ylabel(f"{metric} (bar: mean over seeds)")
    fig.suptitle(f"{metric}: arms trained in pairs over seeds", fontsize=10)
    fig.tight_layout()
    path = out / FIGURE_FILE
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_repeats(
    task_name: str,
    params: Params,
    exp: Experiment,
    jobs: list[Job],
    prepared_dir: Path,
    out_dir: Path,
    metric: str | None = None,
    workers: int = 1,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    about: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``jobs`` (see ``plan_jobs``) in ``workers`` processes; write runs.csv (after every run, so a failure
    keeps what finished), then summary.json (``about`` added: how the jobs were planned) and the figure."""
    from mlops.tuning.space import monitored_metric

    if not jobs:
        raise ConfigError("nothing to train: give at least one seed")
    if not (prepared_dir / "meta.json").is_file():
        raise FileNotFoundError(f"{prepared_dir} holds no prepared data: run the prepare stage first")
    monitor, direction = monitored_metric(exp)
    metric = metric or f"test_{monitor}"
    args = (task_name, params.task(task_name), monitor, direction, str(prepared_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []

    def finished(row: dict[str, Any]) -> None:
        rows.append(row)
        pd.DataFrame(rows).to_csv(out_dir / RUNS_FILE, index=False)
        if on_done:
            on_done(row)

    if workers <= 1:
        for job in jobs:
            finished(run_job(job, *args))
    else:
        # spawn: a fresh interpreter per worker (torch and forked OpenMP thread pools do not mix)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for future in [pool.submit(run_job, job, *args) for job in jobs]:
                finished(future.result())
    table = pd.DataFrame(rows)
    summary = summarize(table, metric, higher_is_better=direction == "max")
    summary |= {
        "task": task_name,
        **(about or {}),
        "seeds": sorted({job.seed for job in jobs}),
        "epochs": params.task(task_name).train.epochs,
        "hparams": {job.config: {} for job in jobs},
        "cpu_workers": workers,
        "host_cpus": os.cpu_count(),
    }
    for job in jobs:  # what each arm trained with, per configuration (the same for every seed)
        summary["hparams"][job.config][job.arm] = job.hparams
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    plot(table, metric, out_dir)
    return summary
