"""Tasks are plugins: found through the ``mlops.tasks`` entry-point group, by name, loud on unknown or duplicate.

A package declares ``[project.entry-points."mlops.tasks"] <name> = "<module>:<TaskClass>"`` (the five built-in
studies do so in pyproject.toml) and is installed; nothing under ``mlops/`` names it. Task classes are imported
lazily, on the first lookup, so importing ``mlops.tasks`` stays cheap. docs/adding-a-task.md gives the steps.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from torch import nn

from mlops.inference.model_files import ModelSpec, load_weights, read_spec
from mlops.tasks.base import Evaluation, ModelRegistry, Task

__all__ = [
    "GROUP",
    "Evaluation",
    "ModelRegistry",
    "ModelSpec",
    "Task",
    "UnknownTaskError",
    "get_task",
    "load_model_dir",
    "task_entry_points",
    "task_names",
]

#: The entry-point group tasks register in.
GROUP = "mlops.tasks"


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            raise ValueError(
                f"task {ep.name!r} is registered twice in the {GROUP!r} entry points: {found[ep.name].value} and "
                f"{ep.value}; uninstall one of the packages"
            )
        found[ep.name] = ep
    return found


def task_entry_points() -> dict[str, str]:
    """Each installed task's name and the ``module:Class`` its entry point loads, sorted by name."""
    return {name: ep.value for name, ep in sorted(_entry_points().items())}


def task_names() -> list[str]:
    """Every installed task's name, sorted."""
    return sorted(_entry_points())


@functools.cache
def get_task(name: str) -> Task:
    """The one instance of the task registered as ``name``; UnknownTaskError lists the installed ones."""
    eps = _entry_points()
    if name not in eps:
        raise UnknownTaskError(f"unknown task {name!r}; installed tasks: {', '.join(task_names()) or 'none'}")
    try:
        cls = eps[name].load()
    except Exception as exc:  # a plugin that fails to import: say which package, not only the traceback's last line
        raise ImportError(
            f"task {name!r} ({eps[name].value}) could not be imported: {exc!r}; reinstall its package or remove it"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"entry point {name} = {eps[name].value} is not a subclass of mlops.tasks.Task")
    if cls.name != name:
        raise ValueError(f"entry point {name!r} loads a task that calls itself {cls.name!r}: make the two agree")
    return cls()


def load_model_dir(model_dir: Path) -> tuple[nn.Module, ModelSpec]:
    """The trained module of a model folder (rebuilt by its task's model registry) and its spec."""
    spec = read_spec(model_dir)
    return load_weights(get_task(spec.task).models.build(spec.model, **spec.model_kwargs), model_dir), spec
