"""Register a trained model as a version, copy its lineage, and gate the ``challenger`` alias."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mlops.config import Params
from mlops.settings import Settings
from mlops.tracking.lineage import TAG
from mlops.tracking.runs import connect
from mlops.training.final import run_model_uri, selected_arm_dir, train_run_for
from mlops.training.model_files import WEIGHTS_TAG

CHAMPION, CHALLENGER = "champion", "challenger"


class PromotionError(RuntimeError):
    """A promotion was refused; the message says why and what to do."""


@dataclass
class Registration:
    task: str
    version: str
    run_id: str
    challenger: bool
    gate_failures: list[str]
    metrics: dict[str, float | None]
    arm: str = ""
    weights_sha256: str = ""

    def to_json(self) -> dict:
        """What the register stage writes (a DVC out): the result only, not the registry version or run id,
        which differ on every run and live in MLflow (the version is found by its ``WEIGHTS_TAG``)."""
        return {k: v for k, v in asdict(self).items() if k not in ("version", "run_id")}


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def version_metrics(mv) -> dict[str, float]:
    """Test metrics recorded on a model version (tags ``mlops.metric.*``)."""
    prefix = f"{TAG}metric."
    return {k.removeprefix(prefix): float(v) for k, v in mv.tags.items() if k.startswith(prefix)}


def register_model(
    task: str, params: Params, settings: Settings, model_dir: Path, metrics_path: Path, out_path: Path
) -> Registration:
    """New registry version of the selected arm's train run (found by its weights, ``train_run_for``), carrying
    that run's lineage tags; alias ``challenger`` when the test metrics meet the task's gates."""
    import mlflow

    connect(settings)
    arm_dir = selected_arm_dir(model_dir)
    run = train_run_for(arm_dir, task)
    digest = run.data.tags[WEIGHTS_TAG]
    metrics = {k: v for k, v in json.loads(metrics_path.read_text()).items() if isinstance(v, int | float) or v is None}
    failures = params.task(task).gates.failures(metrics)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(TAG)} | {WEIGHTS_TAG: digest}
    version = mlflow.register_model(run_model_uri(run), task, tags=tags)
    run_id = run.info.run_id
    c = client()
    c.set_model_version_tag(task, version.version, f"{TAG}run_id", run_id)
    c.set_model_version_tag(task, version.version, f"{TAG}arm", arm_dir.name)
    c.set_model_version_tag(task, version.version, f"{TAG}gates", "passed" if not failures else "; ".join(failures))
    for name, value in metrics.items():
        if value is not None:
            c.set_model_version_tag(task, version.version, f"{TAG}metric.{name}", f"{value:.6g}")
    if not failures:
        c.set_registered_model_alias(task, CHALLENGER, version.version)
    from mlops.registry.cards import model_card

    c.log_text(run_id, model_card(task, str(version.version), params), "model_card.md")
    result = Registration(task, str(version.version), run_id, not failures, failures, metrics, arm_dir.name, digest)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True))
    return result


def alias_version(client, task: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(task, alias).version)
    except MlflowException:
        return None


def has_alias(task: str, alias: str, settings: Settings) -> bool:
    connect(settings)
    from mlflow.exceptions import MlflowException

    try:
        return alias_version(client(), task, alias) is not None
    except MlflowException:  # the registered model does not exist yet
        return False


def status(settings: Settings, tasks: list[str]) -> list[dict]:
    """One row per task: champion/challenger versions with key metrics and lineage."""
    from mlflow.exceptions import MlflowException

    connect(settings)
    c = client()
    rows = []
    for task in tasks:
        row: dict = {"task": task}
        for alias in (CHAMPION, CHALLENGER):
            try:
                version = alias_version(c, task, alias)
            except MlflowException:
                version = None
            row[alias] = version
            if version:
                tags = c.get_model_version(task, version).tags
                row[f"{alias}_metrics"] = {
                    k.removeprefix(f"{TAG}metric."): v for k, v in tags.items() if k.startswith(f"{TAG}metric.")
                }
                row[f"{alias}_data"] = tags.get(f"{TAG}data.prepared_md5", "")[:12]
                row[f"{alias}_validation"] = tags.get(f"{TAG}validation.success")
                row[f"{alias}_promoted_by"] = tags.get(f"{TAG}promoted_by")
        rows.append(row)
    return rows
