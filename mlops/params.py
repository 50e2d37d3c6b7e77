"""Reading the project's files: the whole params.yaml (shared sections typed in ``mlops.config``, each listed task's
section typed by that task) and experiments/<task>.yaml, strictly (unknown or missing keys name the key).

Above ``mlops.tasks`` (it asks the installed tasks for their ``Params``); ``mlops.config`` below holds the types.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mlops.config import BaseParams, ConfigError, Experiment, SweepParams
from mlops.tasks import UnknownTaskError, get_task

__all__ = ["Params", "experiment_digest", "load_experiment", "load_params", "parse_section", "read_yaml"]


class Params:
    """The whole params.yaml: shared sections plus one typed section per task.

    ``tasks`` maps each task the pipeline runs to the folder of its code (``dvc.yaml`` makes every stage of the
    task depend on that folder); a task is any installed one (entry-point group ``mlops.tasks``).
    """

    def __init__(self, path: Path, raw: dict[str, Any]):
        self.path = path
        self.raw = raw
        for key in ("base", "tasks", "sweep"):
            if key not in raw:
                raise ConfigError(f"{path}: missing key {key}")
        listed = raw["tasks"]
        if not isinstance(listed, dict) or not listed or not all(isinstance(v, str) and v for v in listed.values()):
            raise ConfigError(
                f"{path}: tasks must map each task name to the folder of its code, e.g. "
                "`tasks: {fume_hood: mlops/tasks/fume_hood}`"
            )
        try:
            self.tasks: list[str] = [get_task(t).name for t in listed]
        except UnknownTaskError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        # `cluster` is typed and validated by mlops.tuning.kubernetes, the only code that reads it.
        unknown = sorted(set(raw) - {"base", "tasks", "sweep", "cluster"} - set(listed))
        if unknown:
            raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; the tasks listed are {sorted(listed)}")
        self.base: BaseParams = parse_section(BaseParams, raw["base"], path, "base")
        self.sweep: SweepParams = parse_section(SweepParams, raw["sweep"], path, "sweep")
        self.code: dict[str, str] = dict(listed)
        self._sections: dict[str, Any] = {}
        for name in self.tasks:
            if name not in raw:
                raise ConfigError(f"{path}: missing section {name} for listed task {name}")
            self._sections[name] = parse_section(get_task(name).Params, raw[name], path, name)

    def task(self, name: str) -> Any:
        """The typed params section of one task (its Task.Params model)."""
        if name not in self._sections:
            raise ConfigError(f"{self.path}: task {name!r} is not listed under tasks: {self.tasks}")
        return self._sections[name]

    def digest(self, task: str) -> str:
        """Hash of the params that shape one task's results (base + its section)."""
        payload = {"base": self.raw["base"], task: self.raw.get(task)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    return Params(path, read_yaml(path))


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from the project root or pass --params.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def _explain(path: Path, section: str, exc: ValidationError) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in (section, *err["loc"]) if p != "")
        kind = {"extra_forbidden": "unknown key", "missing": "missing key"}.get(err["type"], err["msg"])
        lines.append(f"  {key}: {kind}")
    return ConfigError(f"{path}:\n" + "\n".join(lines))


def parse_section(model: type[BaseModel], data: Any, path: Path, section: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _explain(path, section, exc) from exc


def load_experiment(task: str, directory: Path | str = "experiments") -> Experiment:
    path = Path(directory) / f"{task}.yaml"
    return parse_section(Experiment, read_yaml(path), path, "")


def experiment_digest(exp: Experiment) -> str:
    return hashlib.sha256(exp.model_dump_json().encode()).hexdigest()[:16]
