"""Registry primitives: the aliases (champion, challenger), a version's recorded metrics, the status of every task."""

from __future__ import annotations

from mlops.settings import Settings
from mlops.tracking.lineage import TAG
from mlops.tracking.runs import connect

CHAMPION, CHALLENGER = "champion", "challenger"

#: What the aliases mean: the registered model's description (the registry UI shows it on the model's page).
#: A version holds at most one of them: promoting the challenger's version moves ``champion`` there and removes
#: ``challenger``, which waits for the next registered version that passes the gates.
ALIASES_DOC = f"""Aliases, moved only by the `mlops` release tools (`mlops registry status` flags moves made elsewhere):

- `{CHAMPION}`: the version the service serves. Only `mlops registry promote` (every gate checked, or forced with a
  reason) and `mlops registry rollback` move it; each move is in the task's hash-chained release history.
- `{CHALLENGER}`: the newest registered version that passed the gates in params.yaml and is not the champion. The
  register stage sets it; promoting that version removes it (the version is then the champion); promoting another
  version or rolling back leaves it where it is.

Each version's description is its model card (data, validation, test metrics against gates and champion, lineage)."""


class PromotionError(RuntimeError):
    """A promotion was refused; the message says why and what to do."""


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def version_metrics(mv) -> dict[str, float]:
    """Test metrics recorded on a model version (tags ``mlops.metric.*``)."""
    prefix = f"{TAG}metric."
    return {k.removeprefix(prefix): float(v) for k, v in mv.tags.items() if k.startswith(prefix)}


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
