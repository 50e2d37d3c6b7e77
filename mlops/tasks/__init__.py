"""Task registry: tasks register by name; unknown or duplicate names fail loudly.

Task modules are imported lazily (on the first lookup), so importing ``mlops.tasks`` stays cheap.
"""

from __future__ import annotations

import importlib

from mlops.tasks.base import Evaluation, ModelRegistry, ModelSpec, Task

__all__ = ["Evaluation", "ModelRegistry", "ModelSpec", "Task", "UnknownTaskError", "get_task", "task_names"]

# name -> module defining the Task subclass (decorated with @register_task)
_TASK_MODULES: dict[str, str] = {
    "fume_hood": "mlops.tasks.fume_hood.task",
    "skeleton": "mlops.tasks.skeleton.task",
    "gas_leak": "mlops.tasks.gas_leak.task",
    "fracture": "mlops.tasks.fracture.task",
    "ttubule": "mlops.tasks.ttubule.task",
}
_TASKS: dict[str, Task] = {}


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} is registered twice")
    _TASKS[cls.name] = cls()
    return cls


def task_names() -> list[str]:
    return sorted(_TASK_MODULES)


def get_task(name: str) -> Task:
    if name not in _TASK_MODULES:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    if name not in _TASKS:
        importlib.import_module(_TASK_MODULES[name])
    return _TASKS[name]
