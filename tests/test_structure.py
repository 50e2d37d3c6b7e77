"""The shape of the code (issue 17): layers without cycles, one shape for every task, tasks as plugins, and stage
code deps in dvc.yaml that cover what each stage's command imports.

Imports are read from the source (``ast``), counting every import: module level, inside functions, and under
``if TYPE_CHECKING`` (a type-only import is still a dependency of the reader).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from mlops.tasks import task_entry_points, task_names
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import stage_deps  # noqa: E402

PACKAGE = ROOT / "mlops"
#: the modules every task folder holds, one responsibility each (docs/adding-a-task.md)
CORE = (
    "params",
    "layout",
    "simulate",
    "expectations",
    "prepare",
    "preprocess",
    "model",
    "metrics",
    "evaluate",
    "inference",
    "plots",
    "task",
)
TASK_PY_MAX_LINES = 200
#: the layers, bottom first: a module may import its own layer and the ones below, never one above
LAYERS = (
    ("runtime", "config", "settings", "stats", "terminal"),
    ("data",),
    ("validation", "inference"),
    ("tracking",),
    ("tasks",),
    ("params", "fit"),
    ("tuning",),
    ("training",),
    ("registry", "findings"),
    ("members", "audit", "audit_html"),
    ("serving", "steward_cli", "members_cli"),
    ("cli", "pipeline"),
)
BUILT_IN = ("fracture", "fume_hood", "gas_leak", "skeleton", "ttubule")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "mlops":
                found |= {f"mlops.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("mlops.")}


def unit(module: str) -> str:
    """The subpackage (or top-level module) of ``mlops`` a module belongs to."""
    return module.split(".")[1]


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name == "mlops":
            continue
        for target in imports(path):
            if unit(target) != unit(name):
                edges[unit(name)].add(unit(target))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_subpackages():
    assert cycles(graph()) == []


def test_every_import_goes_down_the_layers():
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    units = {unit(module_name(p)) for p in PACKAGE.rglob("*.py") if module_name(p) != "mlops"}
    assert units <= set(level), f"place {sorted(units - set(level))} in a layer of LAYERS (and docs/architecture.md)"
    upward = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if level[b] > level[a])
    assert upward == []


def test_no_import_cycle_between_modules():
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        edges[module_name(path)] |= imports(path)
    assert cycles(edges) == []


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_task_folder_has_the_core_modules_and_a_small_task_py(name):
    folder = PACKAGE / "tasks" / name
    missing = [m for m in CORE if not (folder / f"{m}.py").is_file()]
    assert missing == []
    lines = len((folder / "task.py").read_text().splitlines())
    assert lines <= TASK_PY_MAX_LINES, f"{name}/task.py has {lines} lines: it should only wire the modules"


@pytest.mark.parametrize("name", BUILT_IN)
def test_serving_side_of_a_task_imports_no_training_code(name):
    """inference.py (and what it imports inside the task folder) never reaches prepare, evaluate, task or training."""
    folder, prefix = PACKAGE / "tasks" / name, f"mlops.tasks.{name}."
    seen, todo = set(), [f"{prefix}inference"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = ROOT / Path(*module.split(".")).with_suffix(".py")
        if path.is_file():
            todo.extend(m for m in imports(path) if m.startswith(prefix) or unit(m) in ("training", "tuning", "fit"))
    forbidden = {f"{prefix}{m}" for m in ("prepare", "evaluate", "task", "simulate", "plots")}
    reached = sorted(m for m in seen if m in forbidden or unit(m) in ("training", "tuning", "fit"))
    assert reached == [], f"{folder}/inference.py reaches training-side code"


def test_the_built_in_tasks_are_found_by_entry_point():
    assert set(BUILT_IN) <= set(task_names())
    for name in BUILT_IN:
        assert task_entry_points()[name] == f"mlops.tasks.{name}.task:{task_class(name)}"


def task_class(name: str) -> str:
    tree = ast.parse((PACKAGE / "tasks" / name / "task.py").read_text())
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Task")]
    assert len(classes) == 1, classes
    return classes[0]


def test_no_task_is_named_under_mlops_outside_its_folder():
    """A task joins without a platform edit: no module outside mlops/tasks/<name>/ names one."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "tasks" and len(rel.parts) > 2:
            continue
        text = path.read_text()
        offenders += [f"{rel}: {name}" for name in BUILT_IN if f'"{name}"' in text or f"tasks.{name}" in text]
    assert offenders == []


def test_dvc_stages_declare_every_code_dependency_of_their_command():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    needed = stage_deps.stage_deps()
    assert set(needed) == set(stages)
    for stage, deps in needed.items():
        declared = {d if isinstance(d, str) else next(iter(d)) for d in stages[stage]["do"]["deps"]}
        assert set(deps) - declared == set(), f"{stage}: add to dvc.yaml deps"


def test_every_dvc_command_passes_the_params_and_experiment_files_it_reads():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, spec in stages.items():
        cmd = spec["do"]["cmd"]
        assert "--params params.yaml" in cmd, stage
        if stage in ("sweep", "train"):
            assert "--experiments experiments" in cmd, stage


def test_a_task_whose_package_fails_to_import_is_named_in_the_error(monkeypatch):
    from importlib.metadata import EntryPoint

    import mlops.tasks as tasks

    broken = EntryPoint("broken", "no_such_package.task:Task", tasks.GROUP)
    monkeypatch.setattr(tasks, "_entry_points", lambda: {"broken": broken})
    tasks.get_task.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"task 'broken' \(no_such_package.task:Task\) could not be imported"):
            tasks.get_task("broken")
    finally:
        tasks.get_task.cache_clear()
