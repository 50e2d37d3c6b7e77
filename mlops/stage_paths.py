"""The paths a pipeline stage gives its command, read from dvc.yaml: `mlops sweep fume_hood` run by hand takes the
same --data, --raw, --validation and --out as `dvc repro` does, so no path is written twice (dvc.yaml holds them)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

DVC_YAML = Path("dvc.yaml")


class StagePathsError(ValueError):
    """dvc.yaml is missing or does not name the stage or option asked for."""


def stage_options(stage: str, task: str, dvc_yaml: Path = DVC_YAML, params: Path = Path("params.yaml")) -> dict:
    """``{option: value}`` of the stage's command for ``task`` (``--data data/prepared/x`` -> ``data``).

    A ``foreach`` stage's ``${key}`` is the task and ``${item}`` its code folder from params.yaml ``tasks``.
    """
    if not dvc_yaml.is_file():
        raise StagePathsError(
            f"{dvc_yaml} not found: run from the repository root, or give the stage's paths as options"
        )
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    if stage not in stages:
        raise StagePathsError(f"{dvc_yaml} has no stage {stage!r}; stages: {', '.join(stages)}")
    definition = stages[stage]
    cmd = definition["do"]["cmd"] if "foreach" in definition else definition["cmd"]
    item = ""
    if "foreach" in definition:
        tasks = (yaml.safe_load(params.read_text()) or {}).get("tasks", {}) if params.is_file() else {}
        if task not in tasks:
            raise StagePathsError(f"{task!r} is not in {params} `tasks`: known {', '.join(tasks)}")
        item = str(tasks[task])
    tokens = shlex.split(cmd.replace("${key}", task).replace("${item}", item))
    options = {}
    for name, value in zip(tokens, tokens[1:], strict=False):
        if name.startswith("--") and not value.startswith("--"):
            options[name[2:].replace("-", "_")] = value
    return options


def fill_paths(stage: str, task: str, **given: Path | None) -> list[Path]:
    """The given paths, each one left out (None) taken from the stage's command in dvc.yaml, in argument order."""
    if all(value is not None for value in given.values()):
        return list(given.values())
    options = stage_options(stage, task)
    filled = []
    for name, value in given.items():
        if value is None:
            if name not in options:
                raise StagePathsError(f"dvc.yaml's {stage} stage gives no --{name}: pass --{name} PATH")
            value = Path(options[name])
        filled.append(value)
    return filled
