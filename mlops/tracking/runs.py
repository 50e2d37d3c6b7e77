"""MLflow setup and naming: one experiment per task, artifact root from settings."""

from __future__ import annotations

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
    mlflow.log_input(dataset, context=context)
