"""The train stage: fit each arm's best configuration on the full budget and log it to MLflow.

Output layout (``out_dir`` comes from dvc.yaml): ``<arm>/weights.pt`` and ``<arm>/spec.json`` per arm, and
``selected.json`` naming the arm the sweep selected on validation. Nothing there says when or where it was trained:
the MLflow run that trained an arm carries the digest of its weights (``WEIGHTS_TAG``), and :func:`train_run_for`
finds that run again from the weights (what evaluate and register do).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
from rich.progress import Progress, TextColumn

from mlops.config import Experiment
from mlops.data.arrays import load_array
from mlops.fit.loop import FitConfig, fit, seed_everything
from mlops.inference.model_files import SPEC, save_model_dir, weights_digest
from mlops.params import Params
from mlops.settings import Settings
from mlops.tasks import capabilities, get_task
from mlops.tracking.lineage import TAG, WEIGHTS_TAG, lineage_tags
from mlops.tracking.log_model import log_pyfunc
from mlops.tracking.runs import connect, experiment_id, log_dataset, log_metrics, log_params
from mlops.tuning.space import monitored_metric
from mlops.tuning.sweep import read_sweeps

SELECTED_FILE = "selected.json"


def selected_arm_dir(model_dir: Path) -> Path:
    """The model folder of the arm the sweep selected (what `register` registers)."""
    path = model_dir / SELECTED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the train stage (`mlops train`) first")
    return model_dir / json.loads(path.read_text())["arm"]


def arm_dirs(model_dir: Path) -> dict[str, Path]:
    """Every trained arm under ``model_dir`` (a folder with a ``spec.json``), by name."""
    return {p.name: p for p in sorted(model_dir.iterdir()) if (p / SPEC).is_file()}


class TrainRunMissing(FileNotFoundError):
    """No MLflow train run in the tracking store produced these weights."""


def train_run_for(arm_dir: Path, task: str):
    """The newest finished MLflow train run of ``task``/<arm> whose weights digest equals ``arm_dir``'s.

    Uses the tracking store this process is connected to (``connect``). Raises :class:`TrainRunMissing` with
    what to do when there is none (weights trained against another store, or copied without their run).
    """
    import mlflow
    from mlflow import MlflowClient

    digest = weights_digest(arm_dir)
    arm = arm_dir.name
    client = MlflowClient()
    experiment = client.get_experiment_by_name(task)
    runs = []
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=(
                f"tags.`{WEIGHTS_TAG}` = '{digest}' and tags.`{TAG}run_kind` = 'train' "
                f"and tags.`{TAG}arm` = '{arm}' and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not runs:
        raise TrainRunMissing(
            f"no finished MLflow train run of {task}/{arm} has these weights ({arm_dir}, {WEIGHTS_TAG}="
            f"{digest[:12]}...) in the tracking store {mlflow.get_tracking_uri()}: run `mlops train {task}` again "
            f"(`dvc repro -f train@{task}`), or point MLOPS_TRACKING_URI at the store that trained them"
        )
    return runs[0]


def run_model_uri(run) -> str:
    """``models:/<id>`` of the model a run logged (the last one, by step, if it logged several)."""
    outputs = run.outputs.model_outputs if run.outputs is not None else []
    if not outputs:
        raise TrainRunMissing(f"MLflow run {run.info.run_id} logged no model: run `mlops train` again")
    return f"models:/{max(outputs, key=lambda o: o.step).model_id}"


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
    history_dir: Path,
    curves_path: Path | None = None,
) -> dict[str, dict]:
    """Train every arm; return run info per arm (run id, model URI, weights digest: printed, not written).

    ``curves_path``: every arm's epoch history in one long table (an ``arm`` column), which DVC draws as one chart
    with a line per arm (template ``.dvc/plots/arms.json``)."""
    sweeps = read_sweeps(best_path)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if history_dir.exists():
        shutil.rmtree(history_dir)
    arms = sweeps["arms"]
    common = (params, exp, settings, prepared_dir, raw_dir, validation_report, out_dir, history_dir)
    workers = min(params.sweep.workers, len(arms))
    if workers <= 1:
        records = {arm: _train_arm(task_name, arm, result, *common) for arm, result in arms.items()}
    else:
        # Arms side by side, one process each (base.threads torch threads per fit, as in a sequential run: each
        # arm's weights are the same either way). Fresh interpreters: no forked torch/MLflow state.
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        # The store and the experiment made here first: two processes creating a new SQLite store at once race
        # on its migrations ("duplicate column").
        connect(settings)
        experiment_id(settings, task_name)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            jobs = {
                arm: pool.submit(_train_arm, task_name, arm, result, *common, show_progress=False)
                for arm, result in arms.items()
            }
            records = {arm: job.result() for arm, job in jobs.items()}
    (out_dir / SELECTED_FILE).write_text(json.dumps({"arm": sweeps["selected"]}))
    if curves_path is not None:
        curves = [pd.read_csv(history_dir / f"{arm}.csv").assign(arm=arm) for arm in arms]
        curves_path.parent.mkdir(parents=True, exist_ok=True)
        pd.concat(curves, ignore_index=True).to_csv(curves_path, index=False)
    return records


def _train_arm(
    task_name: str,
    arm: str,
    sweep: dict,
    params: Params,
    exp: Experiment,
    settings: Settings,
    prepared_dir: Path,
    raw_dir: Path,
    validation_report: Path,
    out_dir: Path,
    history_dir: Path,
    show_progress: bool = True,
) -> dict:
    import mlflow

    hp = sweep["best_params"]
    task = get_task(task_name)
    tp = params.task(task_name)
    monitor, mode = monitored_metric(exp)
    connect(settings)
    tags = lineage_tags(
        task_name, raw_dir, prepared_dir, params.digest(task_name), validation_report, sweep["study_name"]
    )
    tags |= {f"{TAG}arm": arm, f"{TAG}run_kind": "train"}
    with mlflow.start_run(experiment_id=experiment_id(settings, task_name), run_name=f"train-{arm}", tags=tags) as run:
        log_params({**hp, "epochs": tp.train.epochs, "patience": tp.train.patience})
        train_x, train_y = load_array(prepared_dir, "train", "x"), load_array(prepared_dir, "train", "y")
        prepared_md5 = tags[f"{TAG}data.prepared_md5"]
        log_dataset(train_x, train_y, f"{task_name}-train", str(prepared_dir), prepared_md5, "training")
        seed_everything(params.base.seed)
        model, spec = task.build_model(hp, prepared_dir)
        cfg = FitConfig.from_hparams(
            hp,
            epochs=tp.train.epochs,
            seed=params.base.seed,
            monitor=monitor,
            mode=mode,
            patience=tp.train.patience,
            threads=params.base.threads,
        )
        checkpoint = settings.checkpoint_dir / f"{task_name}-train-{run.info.run_id}.pt"
        # Arms trained side by side print one line per epoch (two live bars in one terminal would garble it).
        columns = (*Progress.get_default_columns(), TextColumn("{task.fields[metric]}"))
        with Progress(*columns, disable=not show_progress) as progress:
            bar = progress.add_task(f"train {task_name}/{arm}", total=cfg.epochs, metric="")

            def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
                log_metrics(metrics, step=epoch)
                value = f"{exp.objective.metric}={metrics[exp.objective.metric]:.4f}"
                progress.update(bar, advance=1, metric=value)
                if not show_progress:
                    print(f"train {task_name}/{arm}: epoch {epoch + 1}/{cfg.epochs} {value}", flush=True)

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
        # At the kept epoch's step, beside that epoch's metrics: the logged model (below) is linked to that step.
        best = {f"best_{exp.objective.metric}": result.best_value, "best_epoch": result.best_epoch}
        log_metrics(best, step=result.best_epoch)
        spec = capabilities.calibrate(task, model, spec, prepared_dir, tp)
        arm_dir = out_dir / arm
        save_model_dir(arm_dir, model, spec)
        # The model holds the best epoch's weights (``fit`` restores them): its metrics are that epoch's.
        info = log_pyfunc(arm_dir, task.example_input(prepared_dir), step=result.best_epoch)
        digest = weights_digest(arm_dir)
        mlflow.set_tag(WEIGHTS_TAG, digest)  # how evaluate and register find this run (train_run_for)
        history_dir.mkdir(parents=True, exist_ok=True)
        history_csv = history_dir / f"{arm}.csv"
        pd.DataFrame(result.history).to_csv(history_csv, index=False)
        mlflow.log_artifact(str(history_csv), "history")
    return {"run_id": run.info.run_id, "model_uri": info.model_uri, "task": task_name, "arm": arm, "weights": digest}
