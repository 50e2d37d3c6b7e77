"""The register stage: a new registry version of the selected arm's train run, gated into ``challenger``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mlops.params import Params
from mlops.registry.cards import publish_card
from mlops.registry.versions import ALIASES_DOC, CHALLENGER, client
from mlops.settings import Settings
from mlops.tracking.lineage import TAG, WEIGHTS_TAG
from mlops.tracking.runs import connect
from mlops.training.final import run_model_uri, selected_arm_dir, train_run_for


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
    if not c.get_registered_model(task).description:  # what the aliases mean; a description written in the UI stays
        c.update_registered_model(task, description=ALIASES_DOC)
    publish_card(task, str(version.version), params, run_id)
    result = Registration(task, str(version.version), run_id, not failures, failures, metrics, arm_dir.name, digest)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True))
    return result
