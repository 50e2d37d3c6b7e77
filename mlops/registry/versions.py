"""Register a trained model as a version, copy its lineage, and gate the ``challenger`` alias."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlops.config import Params
from mlops.settings import Settings
from mlops.tracking.lineage import TAG
from mlops.tracking.runs import connect
from mlops.training.final import RUN_FILE, selected_arm_dir

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


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def register_model(
    task: str, params: Params, settings: Settings, model_dir: Path, metrics_path: Path, out_path: Path
) -> Registration:
    """New registry version; alias ``challenger`` when the test metrics meet the task's gates."""
    import mlflow

    connect(settings)
    record = json.loads((selected_arm_dir(model_dir) / RUN_FILE).read_text())
    metrics = {k: v for k, v in json.loads(metrics_path.read_text()).items() if isinstance(v, int | float) or v is None}
    failures = params.task(task).gates.failures(metrics)
    version = mlflow.register_model(record["model_uri"], task, tags=record["tags"])
    client = _client()
    client.set_model_version_tag(task, version.version, f"{TAG}run_id", record["run_id"])
    client.set_model_version_tag(task, version.version, f"{TAG}arm", record["arm"])
    client.set_model_version_tag(
        task, version.version, f"{TAG}gates", "passed" if not failures else "; ".join(failures)
    )
    for name, value in metrics.items():
        if value is not None:
            client.set_model_version_tag(task, version.version, f"{TAG}metric.{name}", f"{value:.6g}")
    if not failures:
        client.set_registered_model_alias(task, CHALLENGER, version.version)
    result = Registration(task, str(version.version), record["run_id"], not failures, failures, metrics)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(asdict(result), indent=2, sort_keys=True))
    return result


def _alias_version(client, task: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(task, alias).version)
    except MlflowException:
        return None


def promote(task: str, version: str, settings: Settings, approver: str, reason: str) -> str:
    """Move ``champion`` to ``version`` (a number, or an alias such as ``challenger``).

    Refuses versions whose data failed validation or whose gates failed. Full release management
    (tolerance against the champion, history, rollback) builds on this function.
    """
    from mlflow.exceptions import MlflowException

    connect(settings)
    client = _client()
    if not version.isdigit():
        resolved = _alias_version(client, task, version)
        if resolved is None:
            raise PromotionError(f"{task} has no version with alias {version!r}; see `mlops registry status`")
        version = resolved
    try:
        mv = client.get_model_version(task, version)
    except MlflowException as exc:
        raise PromotionError(f"{task} has no version {version}: {exc.message}") from exc
    tags = mv.tags
    if tags.get(f"{TAG}validation.success") != "true":
        raise PromotionError(f"{task} v{version}: its training data did not pass validation; refusing to promote")
    if tags.get(f"{TAG}gates") != "passed":
        raise PromotionError(f"{task} v{version}: quality gates failed ({tags.get(f'{TAG}gates')}); refusing")
    if not approver.strip() or not reason.strip():
        raise PromotionError("an approver and a reason are required to promote")
    client.set_registered_model_alias(task, CHAMPION, version)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(task, version, f"{TAG}promoted_by", approver)
    client.set_model_version_tag(task, version, f"{TAG}promoted_at", now)
    client.set_model_version_tag(task, version, f"{TAG}promotion_reason", reason)
    return version


def has_alias(task: str, alias: str, settings: Settings) -> bool:
    connect(settings)
    from mlflow.exceptions import MlflowException

    try:
        return _alias_version(_client(), task, alias) is not None
    except MlflowException:  # the registered model does not exist yet
        return False


def status(settings: Settings, tasks: list[str]) -> list[dict]:
    """One row per task: champion/challenger versions with key metrics and lineage."""
    from mlflow.exceptions import MlflowException

    connect(settings)
    client = _client()
    rows = []
    for task in tasks:
        row: dict = {"task": task}
        for alias in (CHAMPION, CHALLENGER):
            try:
                version = _alias_version(client, task, alias)
            except MlflowException:
                version = None
            row[alias] = version
            if version:
                tags = client.get_model_version(task, version).tags
                row[f"{alias}_metrics"] = {
                    k.removeprefix(f"{TAG}metric."): v for k, v in tags.items() if k.startswith(f"{TAG}metric.")
                }
                row[f"{alias}_data"] = tags.get(f"{TAG}data.prepared_md5", "")[:12]
                row[f"{alias}_validation"] = tags.get(f"{TAG}validation.success")
                row[f"{alias}_promoted_by"] = tags.get(f"{TAG}promoted_by")
        rows.append(row)
    return rows
