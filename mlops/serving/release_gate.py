"""What the service will load: only a version the release history put under the served alias, loaded by the
service's own code.

Whoever can write to MLflow can move an alias (the UI's alias editor, the REST API) and register a "model from
code" whose Python MLflow would execute at load time. Neither may reach the service:

- ``unreleased_reason``: the alias must point where the hash-chained release history (written only by
  ``mlops registry promote / rollback`` and the service's release routes) says it does, and that move must have
  passed its gates or been recorded as forced. Otherwise the served version stays and ``/readyz`` says why.
- ``load_released``: the version's files are downloaded and its weights and spec read by the task's own
  inference module (from the registered task plugins, never a module the artifact names), weights with
  ``torch.load(weights_only=True)``. No code stored in an artifact is imported or run.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from pathlib import Path

from mlops.inference import Predictor
from mlops.inference.model_files import SPEC, WEIGHTS
from mlops.settings import Settings


class UnsafeModel(ValueError):
    """A registry version the service refuses to load."""


def unreleased_reason(settings: Settings, task: str, version: str) -> str | None:
    """None when ``version`` holds the served alias by a gated (or recorded forced) release; else why not."""
    from mlops.registry.history import verify_chain
    from mlops.registry.release import MOVES, champion_stack, open_history
    from mlops.registry.versions import CHAMPION

    alias = settings.served_alias
    events = open_history(settings).events(task)
    broken = verify_chain(events)
    if broken:
        return f"the release history of {task} is broken ({broken[0]}); run `mlops registry verify`"
    moves = [e for e in events if e.alias == alias and e.action in MOVES]
    if alias == CHAMPION:
        stack = champion_stack(events)
        expected = stack[-1] if stack else None
    else:
        expected = moves[-1].to_version if moves else None
    if expected != version:
        return (
            f"{task}@{alias} is v{version}, but the release history says v{expected}: the alias was moved outside "
            "`mlops registry promote` (see `mlops registry verify`); promote it through the tool to serve it"
        )
    event = [e for e in moves if e.to_version == version][-1]
    gates = json.loads(event.gates or "{}")
    failed = sorted(name for name, gate in gates.items() if not gate.get("passed"))
    if failed and not event.forced and event.action != "rollback":
        return f"{task} v{version}: release event {event.seq} failed gates {failed} without a recorded force"
    return None


def load_released(task: str, version: str) -> Predictor:
    """The version's predictor, built by ``task``'s own inference module from its weights and spec."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(mlflow.artifacts.download_artifacts(f"models:/{task}/{version}", dst_path=tmp))
        return load_folder(task, root / "artifacts", f"{task} v{version}")


def load_folder(task: str, folder: Path, what: str) -> Predictor:
    """``folder``'s weights and spec read by ``task``'s inference module; UnsafeModel for anything else."""
    from mlops.tasks import get_task

    module_name = get_task(task).inference_module
    if not (folder / SPEC).is_file() or not (folder / WEIGHTS).is_file():
        raise UnsafeModel(f"{what} holds no {WEIGHTS} and {SPEC} (not a model this project logged)")
    try:
        spec = json.loads((folder / SPEC).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnsafeModel(f"{what}: {SPEC} is not valid JSON ({exc})") from exc
    if not isinstance(spec, dict) or spec.get("task") != task or spec.get("inference_module") != module_name:
        got = (spec.get("task"), spec.get("inference_module")) if isinstance(spec, dict) else spec
        raise UnsafeModel(f"{what}: its spec names {got}, not ({task!r}, {module_name!r}): refused")
    return importlib.import_module(module_name).load(folder / WEIGHTS, spec)
