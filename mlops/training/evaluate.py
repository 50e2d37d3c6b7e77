"""The evaluate stage: every arm's test-split evaluation, a comparison table, logged to MLflow and DVC.

``metrics.json`` holds the selected arm's metrics at the top level (what the gates read), the selected
arm's name, and every arm's metrics under ``arms`` (the study's comparison).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd

from mlops.params import Params
from mlops.settings import Settings
from mlops.tasks import capabilities, get_task, load_model_dir
from mlops.tracking.runs import connect
from mlops.training.final import arm_dirs, selected_arm_dir, train_run_for


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
) -> dict:
    """Evaluate every arm: images under ``out_dir/<arm>/``, CSV tables under ``tables_dir``."""
    import mlflow

    task = get_task(task_name)
    for folder in (out_dir, tables_dir):
        if folder.exists():
            shutil.rmtree(folder)
    tables_dir.mkdir(parents=True)
    per_arm: dict[str, dict[str, float | None]] = {}
    arm_tables: dict[str, dict[str, pd.DataFrame]] = {}
    connect(settings)
    # Each arm's MLflow train run, found by its weights (before any work: a missing run fails fast).
    run_ids = {arm: train_run_for(arm_dir, task_name).info.run_id for arm, arm_dir in arm_dirs(model_dir).items()}
    for arm, arm_dir in arm_dirs(model_dir).items():
        model, _ = load_model_dir(arm_dir)
        arm_out = out_dir / arm
        evaluation = task.evaluate(model, prepared_dir, params.task(task_name), arm_out)
        per_arm[arm] = _finite(evaluation.metrics)
        arm_tables[arm] = evaluation.tables
        for name, table in evaluation.tables.items():
            table.to_csv(tables_dir / f"{name}-{arm}.csv", index=False)
        with mlflow.start_run(run_id=run_ids[arm]):
            mlflow.log_metrics({k: v for k, v in per_arm[arm].items() if v is not None})
            for path in evaluation.images.values():
                mlflow.log_artifact(str(path), "evaluation")
            for name in evaluation.tables:
                mlflow.log_artifact(str(tables_dir / f"{name}-{arm}.csv"), "evaluation")

    figures = capabilities.compare(task, arm_tables, out_dir / "comparison") if len(arm_tables) > 1 else {}
    comparison = pd.DataFrame(per_arm).T.rename_axis("arm").reset_index()
    comparison.to_csv(tables_dir / "comparison.csv", index=False)
    selected = selected_arm_dir(model_dir).name
    metrics = {**per_arm[selected], "selected_arm": selected, "arms": per_arm}
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    for run_id in run_ids.values():  # every run carries the whole comparison
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifact(str(tables_dir / "comparison.csv"), "evaluation")
            for path in figures.values():
                mlflow.log_artifact(str(path), "evaluation/comparison")
    return metrics
