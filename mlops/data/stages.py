"""Paths a stage's command line in dvc.yaml gives: commands outside the pipeline (``mlops findings``) find the
pipeline's outputs where dvc.yaml puts them, and a stage command run by hand (``mlops sweep fume_hood``) takes the
paths it is not given from its stage, without a second copy of those paths in code."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

DVC_YAML = Path("dvc.yaml")
PARAMS_YAML = Path("params.yaml")


class StageNotFound(KeyError, ValueError):
    """dvc.yaml names no such stage, or the stage no such option (a ValueError too: the CLI reports it plainly)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def stage_options(dvc_yaml: Path, stage: str, task: str, folder: str) -> dict[str, str]:
    """``--option value`` pairs of ``stage``'s cmd for ``task`` (``${key}`` = the task, ``${item}`` = its folder)."""
    if not Path(dvc_yaml).is_file():
        raise FileNotFoundError(
            f"{dvc_yaml} is missing: run from the project root (where dvc.yaml is), or give the stage's paths as options"
        )
    stages = yaml.safe_load(Path(dvc_yaml).read_text()).get("stages", {})
    if stage not in stages:
        raise StageNotFound(f"{dvc_yaml} has no stage {stage!r} (stages: {', '.join(stages)})")
    cmd = stages[stage]["do"]["cmd"].replace("${key}", task).replace("${item}", folder)
    words = shlex.split(cmd)
    return {
        w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--") and not words[i + 1].startswith("--")
    }


def task_folder(task: str, params: Path = PARAMS_YAML) -> str:
    """The task's code folder (``${item}`` of the foreach stages), from params.yaml ``tasks``."""
    tasks = (yaml.safe_load(params.read_text()) or {}).get("tasks", {}) if params.is_file() else {}
    if task not in tasks:
        raise StageNotFound(f"{task!r} is not in {params} `tasks`: known {', '.join(tasks) or 'none'}")
    return str(tasks[task])


def fill_paths(stage: str, task: str, **given: Path | None) -> list[Path]:
    """The given paths, each one left out (None) taken from the stage's command in dvc.yaml, in argument order."""
    if all(value is not None for value in given.values()):
        return list(given.values())  # nothing to fill: dvc.yaml is not read
    folder = task_folder(task) if DVC_YAML.is_file() else ""  # no dvc.yaml: stage_options says so first
    options = stage_options(DVC_YAML, stage, task, folder)
    filled = []
    for name, value in given.items():
        if value is None:
            if f"--{name}" not in options:
                raise StageNotFound(f"dvc.yaml's {stage} stage gives no --{name}: pass --{name} PATH")
            value = Path(options[f"--{name}"])
        filled.append(value)
    return filled
