"""MLflow setup and naming: one experiment per task, artifact root from settings; how values are logged."""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from mlops.settings import Settings


def connect(settings: Settings) -> None:
    """Point this process's MLflow client at the configured tracking store."""
    import mlflow

    settings.ensure_home()
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    mlflow.set_registry_uri(settings.resolved_tracking_uri)


def experiment_id(settings: Settings, task: str) -> str:
    """The task's experiment (created on first use with the configured artifact root)."""
    import mlflow

    connect(settings)
    existing = mlflow.get_experiment_by_name(task)
    if existing is not None:
        return existing.experiment_id
    try:
        return mlflow.create_experiment(task, artifact_location=f"{settings.resolved_artifact_root}/{task}")
    except mlflow.exceptions.MlflowException:
        # Another worker created it between our lookup and create.
        return mlflow.get_experiment_by_name(task).experiment_id


def log_dataset(x: np.ndarray, y: np.ndarray, name: str, source: str, digest: str, context: str) -> None:
    """Record the data a run read as an MLflow dataset input, with the DVC hash as its digest."""
    import mlflow

    dataset = mlflow.data.from_numpy(features=x, targets=y, source=source, name=name, digest=digest[:36])
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except mlflow.exceptions.MlflowException as exc:
            # Arms fitted side by side (and parallel sweep trials) log the same dataset at once: MLflow's store
            # looks it up, finds none and inserts it in each process, and all but one insert break the unique
            # key. The rolled-back one finds the row on its next try and only links it to its run.
            if attempt == 2 or not _duplicate_row(exc):
                raise


def _duplicate_row(exc: Exception) -> bool:
    text = str(exc)
    return any(words in text for words in ("UNIQUE constraint failed", "duplicate key value", "IntegrityError"))


#: Significant digits of a logged metric: about float32's precision (24 bits, ~7.2 digits). Most metrics are
#: float32 values read as doubles (0.47999998927116394 for 0.48); at 7 digits MLflow's columns show 0.48 and no
#: digit the float32 computation determined is lost. The exact values stay in the pipeline's own outputs.
METRIC_DIGITS = 7


def rounded(value: float) -> float:
    """``value`` as a plain Python float with :data:`METRIC_DIGITS` significant digits (inf and nan unchanged)."""
    v = float(value)
    return float(f"{v:.{METRIC_DIGITS}g}") if math.isfinite(v) else v


def param_value(value: object) -> object:
    """A hyperparameter as logged: a float32 (NumPy) rounded like a metric; a double kept exactly (its repr is
    already the shortest that reads back the same: the value the fit used, e.g. Optuna's ``lr``); the rest as is."""
    if isinstance(value, np.floating) and np.finfo(value.dtype).bits <= 32:
        return rounded(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def log_metrics(metrics: Mapping[str, float], step: int | None = None, **where) -> None:
    """Log ``metrics`` to the active run, rounded (:func:`rounded`): the platform's metrics all go through here.

    ``where``: MLflow's ``run_id``, ``model_id`` (metrics of a logged model, e.g. its test scores) or ``dataset``."""
    import mlflow

    mlflow.log_metrics({k: rounded(v) for k, v in metrics.items()}, step=step, **where)


def log_params(params: Mapping[str, object]) -> None:
    """Log ``params`` to the active run (:func:`param_value`): every parameter the platform logs goes through here."""
    import mlflow

    mlflow.log_params({k: param_value(v) for k, v in params.items()})


def run_url(run_id: str, experiment: str, tracking_uri: str | None = None) -> str | None:
    """The MLflow UI's page of a run when the tracking URI is a server (http/https; credentials dropped), else None:
    a SQLite or file store has no UI address of its own (``mlflow ui`` serves it wherever it is started)."""
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6
    netloc = host + (f":{parts.port}" if parts.port else "")
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"
