"""Loads each task's approved model from the registry (``models:/<task>@<alias>``)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from mlops.inference import Predictor
from mlops.settings import Settings

log = logging.getLogger("mlops.serving")
LINEAGE = "mlops."


@dataclass
class ServedModel:
    task: str
    version: str
    alias: str
    predictor: Predictor
    lineage: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"task": self.task, "version": self.version, "alias": self.alias, "lineage": self.lineage}


class ModelStore:
    """Task name -> served model. Reads are lock-free; a swap replaces one entry atomically."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._models: dict[str, ServedModel] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, task: str) -> ServedModel | None:
        return self._models.get(task)

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def load_all(self, tasks: list[str]) -> None:
        for task in tasks:
            try:
                served = self.load(task)
            except Exception as exc:  # keep serving the others; report in /readyz and /v1/models
                self.errors[task] = str(exc)
                log.warning("no model served for %s: %s", task, exc)
                continue
            if served is not None:
                with self._lock:
                    self._models[task] = served
                    self.errors.pop(task, None)

    def load(self, task: str) -> ServedModel | None:
        """Load ``task``'s aliased version, check it answers a warm-up input; None if it has no alias."""
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient()
        alias = self.settings.served_alias
        try:
            mv = client.get_model_version_by_alias(task, alias)
        except MlflowException:
            self.errors[task] = f"no version with alias {alias!r} in the registry"
            return None
        pyfunc = mlflow.pyfunc.load_model(f"models:/{task}@{alias}")
        predictor: Predictor = pyfunc.unwrap_python_model().predictor
        predictor.max_pixels = self.settings.max_image_pixels
        predictor.predict_array(predictor.warmup_input())  # fails here, not on a client's request
        lineage = {k.removeprefix(LINEAGE): v for k, v in mv.tags.items() if k.startswith(LINEAGE)}
        return ServedModel(task, str(mv.version), alias, predictor, lineage)
