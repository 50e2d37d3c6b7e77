"""The evaluate stage: the task's test-split evaluation, logged to the training run and to DVC."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mlops.config import Params
from mlops.settings import Settings
from mlops.tasks import get_task
from mlops.tracking.runs import connect
from mlops.training.final import RUN_FILE
from mlops.training.model_files import load_model_dir


def evaluate_model(
    task_name: str,
    params: Params,
    settings: Settings,
    model_dir: Path,
    prepared_dir: Path,
    out_dir: Path,
    metrics_path: Path,
) -> dict[str, float]:
    import mlflow

    task = get_task(task_name)
    model, _ = load_model_dir(model_dir)
    evaluation = task.evaluate(model, prepared_dir, params.task(task_name), out_dir)
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in evaluation.metrics.items()}
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    for name, table in evaluation.tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=False)

    run_id = json.loads((model_dir / RUN_FILE).read_text())["run_id"]
    connect(settings)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        for path in evaluation.images.values():
            mlflow.log_artifact(str(path), "evaluation")
        for name in evaluation.tables:
            mlflow.log_artifact(str(out_dir / f"{name}.csv"), "evaluation")
    return metrics
