"""The train stage: fit the sweep's best configuration on the full budget and log it to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.progress import Progress, TextColumn

from mlops.config import Experiment, Params
from mlops.data.arrays import load_array
from mlops.settings import Settings
from mlops.tasks import get_task
from mlops.tracking.lineage import TAG, lineage_tags
from mlops.tracking.log_model import log_pyfunc
from mlops.tracking.runs import connect, experiment_id, log_dataset
from mlops.training.loop import FitConfig, fit, seed_everything
from mlops.training.model_files import save_model_dir
from mlops.tuning.space import monitored_metric

RUN_FILE = "run.json"


def train_best(
    task_name: str,
    params: Params,
    exp: Experiment,
    settings: Settings,
    best_path: Path,
    prepared_dir: Path,
    raw_dir: Path,
    validation_report: Path,
    out_dir: Path,
    history_csv: Path,
) -> dict:
    """Train, save ``out_dir`` (weights, spec, run.json), write the per-epoch history; return run info."""
    import mlflow

    if not best_path.is_file():
        raise FileNotFoundError(f"{best_path} is missing: run the sweep stage (`mlops sweep {task_name}`) first")
    best = json.loads(best_path.read_text())
    hp = best["best_params"]
    task = get_task(task_name)
    tp = params.task(task_name)
    monitor, mode = monitored_metric(exp)
    connect(settings)
    tags = lineage_tags(
        task_name, raw_dir, prepared_dir, params.digest(task_name), validation_report, best["study_name"]
    )
    with mlflow.start_run(
        experiment_id=experiment_id(settings, task_name),
        run_name="train",
        tags={**tags, f"{TAG}run_kind": "train"},
    ) as run:
        mlflow.log_params({**hp, "epochs": tp.train.epochs, "patience": tp.train.patience})
        train_x, train_y = load_array(prepared_dir, "train", "x"), load_array(prepared_dir, "train", "y")
        log_dataset(
            train_x,
            train_y,
            f"{task_name}-train",
            str(prepared_dir),
            tags[f"{TAG}data.prepared_md5"],
            "training",
        )
        seed_everything(params.base.seed)
        model, spec = task.build_model(hp, prepared_dir)
        cfg = FitConfig(
            epochs=tp.train.epochs,
            lr=float(hp["lr"]),
            batch_size=int(hp["batch_size"]),
            weight_decay=float(hp.get("weight_decay", 0.0)),
            seed=params.base.seed,
            monitor=monitor,
            mode=mode,
            patience=tp.train.patience,
        )
        checkpoint = settings.checkpoint_dir / f"{task_name}-train-{run.info.run_id}.pt"
        with Progress(*Progress.get_default_columns(), TextColumn("{task.fields[metric]}")) as progress:
            bar = progress.add_task(f"train {task_name}", total=cfg.epochs, metric="")

            def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
                mlflow.log_metrics(metrics, step=epoch)
                value = metrics[exp.objective.metric]
                progress.update(bar, advance=1, metric=f"{exp.objective.metric}={value:.4f}")

            result = fit(
                task,
                model,
                task.dataset(prepared_dir, "train"),
                task.dataset(prepared_dir, "val"),
                cfg,
                checkpoint=checkpoint,
                on_epoch=on_epoch,
            )
        checkpoint.unlink(missing_ok=True)
        mlflow.log_metrics({f"best_{exp.objective.metric}": result.best_value, "best_epoch": result.best_epoch})
        save_model_dir(out_dir, model, spec)
        info = log_pyfunc(out_dir, task.example_input(prepared_dir))
        history = pd.DataFrame(result.history)
        history_csv.parent.mkdir(parents=True, exist_ok=True)
        history.to_csv(history_csv, index=False)
        mlflow.log_artifact(str(history_csv), "history")
        record = {"run_id": run.info.run_id, "model_uri": info.model_uri, "task": task_name, "tags": tags}
        (out_dir / RUN_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    return record
