"""The code each dvc.yaml stage runs: the mlops modules its command imports, followed transitively.

Each stage's command is one function (below); its imports, then every import (module-level or inside a function)
of every mlops module reached, make the stage's code. A task's own folder is the stage's ``${item}`` (params.yaml
`tasks` maps each task to its code folder), the shared task modules are listed one by one, every other subpackage
is its folder. ``tests/test_structure.py`` fails when dvc.yaml declares less than this; run
``python scripts/stage_deps.py`` to print what each stage needs.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mlops"

#: stage -> (module, function) of its command in dvc.yaml
STAGE_COMMANDS = {
    "validate": ("mlops.steward_cli", "data_check"),
    "prepare": ("mlops.cli", "data_prepare"),
    "sweep": ("mlops.cli", "sweep"),
    "train": ("mlops.cli", "train"),
    "evaluate": ("mlops.cli", "evaluate"),
    "register": ("mlops.cli", "register"),
}
TASK_DEP = "${item}"


def module_file(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(node: ast.AST) -> set[str]:
    """mlops modules named by the imports anywhere under ``node`` (``from mlops.x import y`` counts y if a module)."""
    found: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names if a.name.startswith("mlops")}
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0 and n.module.startswith("mlops"):
            found.add(n.module)
            found |= {f"{n.module}.{a.name}" for a in n.names if module_file(f"{n.module}.{a.name}")}
    return {m for m in found if module_file(m)}


def _with_parents(module: str) -> set[str]:
    """Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` too."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def imports_of(module: str) -> set[str]:
    path = module_file(module)
    return _imported(ast.parse(path.read_text())) if path else set()


def closure(start: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = [p for s in start for p in _with_parents(s)]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(p for i in imports_of(m) for p in _with_parents(i) if p not in seen)
    return seen


def command_modules(module: str, function: str) -> set[str]:
    tree = ast.parse(module_file(module).read_text())
    top = {n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)}
    start = set().union(*(_imported(n) for n in top))
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function]
    if not funcs:
        raise SystemExit(f"{module} has no function {function}: update STAGE_COMMANDS")
    # The command's module counts as a file, but only its top-level imports and the command's own are followed:
    # the CLI modules import every other command's code inside those commands.
    return closure(start | _imported(funcs[0]) | set(_task_modules())) | {module}


def _task_modules() -> list[str]:
    """Every built-in task's modules: a stage runs whichever task its ``${item}`` names."""
    return [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in sorted((PACKAGE / "tasks").glob("*/*.py"))
        if p.name != "__init__.py"
    ]


def as_deps(modules: set[str]) -> list[str]:
    deps: set[str] = set()
    for m in modules:
        parts = m.split(".")
        path = module_file(m).relative_to(ROOT).as_posix()
        if parts[:2] == ["mlops", "tasks"] and len(parts) >= 3 and (PACKAGE / "tasks" / parts[2]).is_dir():
            deps.add(TASK_DEP)
        elif len(parts) >= 2 and (PACKAGE / parts[1]).is_dir() and parts[1] != "tasks":
            deps.add(f"mlops/{parts[1]}")
        else:
            deps.add(path)
    return sorted(deps, key=lambda d: (d != TASK_DEP, d))


def stage_deps() -> dict[str, list[str]]:
    return {stage: as_deps(command_modules(*cmd)) for stage, cmd in STAGE_COMMANDS.items()}


if __name__ == "__main__":
    for stage, deps in stage_deps().items():
        sys.stdout.write(f"{stage}:\n" + "".join(f"  - {d}\n" for d in deps))
