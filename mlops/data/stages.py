"""Paths a stage's command line in dvc.yaml gives: so commands outside the pipeline (``mlops findings``) find the
pipeline's outputs where dvc.yaml puts them, without a second copy of those paths in code."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml


def stage_options(dvc_yaml: Path, stage: str, task: str, folder: str) -> dict[str, str]:
    """``--option value`` pairs of ``stage``'s cmd for ``task`` (``${key}`` = the task, ``${item}`` = its folder)."""
    if not Path(dvc_yaml).is_file():
        raise FileNotFoundError(f"{dvc_yaml} is missing: run from the project root (where dvc.yaml is)")
    stages = yaml.safe_load(Path(dvc_yaml).read_text()).get("stages", {})
    if stage not in stages:
        raise KeyError(f"{dvc_yaml} has no stage {stage!r} (stages: {sorted(stages)})")
    cmd = stages[stage]["do"]["cmd"].replace("${key}", task).replace("${item}", folder)
    words = shlex.split(cmd)
    return {
        w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--") and not words[i + 1].startswith("--")
    }
