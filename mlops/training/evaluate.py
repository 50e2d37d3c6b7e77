"""The evaluate stage: every arm's test-split evaluation, a comparison table, logged to MLflow and DVC.

The only stage that opens the sealed test split (``scoring.evaluate_sealed``). ``metrics.json`` holds the selected
arm's metrics at the top level (what the gates read), each with ``<metric>_ci_low`` / ``<metric>_ci_high`` (the
bootstrap interval over the task's independent groups), the selected arm's name, every arm's metrics under
``arms``, and under ``differences`` the selected arm minus each other arm, paired on the same test groups, with its
interval. Each arm's cases table (``tables/cases-<arm>.csv``, also on its MLflow run) is what the release gates
pair a challenger and a champion on.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mlops.params import Params
from mlops.settings import Settings
from mlops.tasks import capabilities, get_task, load_model_dir
from mlops.tracking.runs import connect, log_metrics
from mlops.training.final import arm_dirs, selected_arm_dir, train_run_for
from mlops.training.scoring import differences, evaluate_sealed, with_intervals

CASES = "cases"


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def evaluate_model(
    task_name: str,
    params: Params,
    settings: Settings,
    model_dir: Path,
    prepared_dir: Path,
    out_dir: Path,
    tables_dir: Path,
    metrics_path: Path,
    headline_path: Path | None = None,
) -> dict:
    """Evaluate every arm: images under ``out_dir/<arm>/``, CSV tables under ``tables_dir``; the selected arm's
    gated metrics, named by task, in ``headline_path`` (the file DVC lists, see :func:`headline`)."""
    import mlflow

    task = get_task(task_name)
    section, boot, seed = params.task(task_name), params.base.bootstrap, params.base.seed
    for folder in (out_dir, tables_dir):
        if folder.exists():
            shutil.rmtree(folder)
    tables_dir.mkdir(parents=True)
    per_arm: dict[str, dict[str, float | None]] = {}
    arm_tables: dict[str, dict[str, pd.DataFrame]] = {}
    arm_cases: dict[str, pd.DataFrame] = {}
    connect(settings)
    # Each arm's MLflow train run, found by its weights (before any work: a missing run fails fast).
    run_ids = {arm: train_run_for(arm_dir, task_name).info.run_id for arm, arm_dir in arm_dirs(model_dir).items()}
    for arm, arm_dir in arm_dirs(model_dir).items():
        model, _ = load_model_dir(arm_dir)
        arm_out = out_dir / arm
        evaluation = evaluate_sealed(task, model, prepared_dir, section, arm_out, reader="evaluate stage")
        per_arm[arm] = _finite(with_intervals(task, evaluation, section, boot, seed))
        arm_tables[arm], arm_cases[arm] = evaluation.tables, evaluation.cases
        for name, table in {**evaluation.tables, CASES: evaluation.cases}.items():
            table.to_csv(tables_dir / f"{name}-{arm}.csv", index=False)
        with mlflow.start_run(run_id=run_ids[arm]):
            log_metrics({k: v for k, v in per_arm[arm].items() if v is not None})
            for path in evaluation.images.values():
                mlflow.log_artifact(str(path), "evaluation")
            for name in [*evaluation.tables, CASES]:
                mlflow.log_artifact(str(tables_dir / f"{name}-{arm}.csv"), "evaluation")

    figures = capabilities.compare(task, arm_tables, out_dir / "comparison") if len(arm_tables) > 1 else {}
    comparison = pd.DataFrame(per_arm).T.rename_axis("arm").reset_index()
    comparison.to_csv(tables_dir / "comparison.csv", index=False)
    selected = selected_arm_dir(model_dir).name
    paired = {
        f"{selected} - {other}": {
            name: _finite({"difference": d.value, "ci_low": d.low, "ci_high": d.high})
            for name, d in differences(task, arm_cases[selected], arm_cases[other], section, boot, seed).items()
        }
        for other in per_arm
        if other != selected
    }
    metrics = {**per_arm[selected], "selected_arm": selected, "arms": per_arm, "differences": paired}
    rows = [{"comparison": pair, "metric": m, **d} for pair, by_metric in paired.items() for m, d in by_metric.items()]
    differences_table = pd.DataFrame(rows, columns=["comparison", "metric", "difference", "ci_low", "ci_high"])
    differences_table.to_csv(tables_dir / "arm_differences.csv", index=False)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    if headline_path is not None:
        headline_path.write_text(json.dumps(headline(task_name, metrics, section.gates.tolerance), indent=2))
    for run_id in run_ids.values():  # every run carries the whole comparison
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifact(str(tables_dir / "comparison.csv"), "evaluation")
            mlflow.log_artifact(str(tables_dir / "arm_differences.csv"), "evaluation")
            for path in figures.values():
                mlflow.log_artifact(str(path), "evaluation/comparison")
    return metrics


def headline(task_name: str, metrics: dict, gated: Iterable[str]) -> dict[str, dict[str, float]]:
    """``{task: {metric, metric_ci_low, metric_ci_high}}`` for each gated metric of the selected arm.

    What `dvc metrics show` and `dvc exp show` list: every task's metrics.json holds ~100 numbers (each arm's, each
    paired difference's) whose names repeat across tasks, which made DVC's tables hundreds of columns wide and
    unreadable. The gated metrics are what a promotion rests on; nested under the task, DVC names them
    ``fume_hood.test_accuracy``. The whole record stays in metrics.json (MLflow, cards, the registry read it).
    """
    picked = {}
    for name in sorted(gated):
        for key in (name, f"{name}_ci_low", f"{name}_ci_high"):
            if metrics.get(key) is not None:
                picked[key] = round(float(metrics[key]), 6)
    return {task_name: picked}
