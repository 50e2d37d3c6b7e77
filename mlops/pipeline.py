"""The main job's `dvc repro`: each task's chain of stages in order, several tasks' chains side by side.

`dvc repro` runs one stage at a time. A task's chain (validate -> prepare -> sweep -> train -> evaluate ->
register, the ``foreach`` stages of dvc.yaml in their order) depends on no other task's, and one chain leaves
cores idle: in its one-process stages (validate, prepare, evaluate, register), in each process's start-up
(imports, MLflow), and while an arm or trial waits for the slowest of its generation. ``jobs`` chains at once fill
those gaps. DVC allows it: it releases its repository lock while a stage's command runs (`--wait-for-lock` queues
the short moments it needs it), takes read locks on deps and write locks on outs, and records each stage in
dvc.lock when it ends. Every stage is run alone (`--single-item`), so `data.dvc` is never re-committed under a
running stage. Results do not depend on it: each stage is deterministic whatever runs beside it (a fixed thread
count per process, seeded fits, sweeps in generations), so the outputs and dvc.lock are those of a plain
`dvc repro` (tests/test_repro_twice.py).

Run as ``python -m mlops.pipeline [--force] [--jobs N]`` (run.sh does). Each chain's output goes, line by line and
prefixed with its task, to this terminal and to ``<MLOPS_HOME>/logs/repro-<task>.log``; the seconds each stage
took go to ``<MLOPS_HOME>/logs/repro-times.json``. A failing stage stops its chain; the other chains finish the
stage they are in and start no new one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

#: DVC command every stage runs through: waits for the repository lock instead of failing when another chain has it
DVC = ("dvc", "--wait-for-lock")


class PipelineError(Exception):
    """The pipeline cannot start here; the message says what to do."""


def chain_stages(dvc_yaml: Path) -> list[str]:
    """The ``foreach`` stages of dvc.yaml in their order: one task's chain (``<stage>@<task>`` for each)."""
    if not dvc_yaml.is_file():
        raise PipelineError(f"no {dvc_yaml.name} in {dvc_yaml.parent}: run this from the repository's root folder")
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    return [name for name, body in stages.items() if isinstance(body, dict) and "foreach" in body]


def changed_stages(cwd: Path) -> set[str]:
    """Stages `dvc status` reports as changed (their names as dvc.yaml's foreach makes them: ``sweep@fume_hood``)."""
    done = subprocess.run(
        [*DVC, "status", "--json"], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )  # fmt: skip
    if done.returncode != 0:
        raise PipelineError(f"`dvc status` failed, so what changed is unknown:\n{done.stderr.strip()}")
    return set(json.loads(done.stdout or "{}"))


def plan(tasks: list[str], stages: list[str], changed: set[str] | None) -> dict[str, list[str]]:
    """Per task, the stages to run in order: all of them (``changed`` None: a forced run), else from the first one
    `dvc status` reports changed onward (each later one then changes when its upstream is rerun, or is skipped by
    DVC if its inputs come out the same). A task with nothing changed gets no chain."""
    chains = {}
    for task in tasks:
        names = [f"{stage}@{task}" for stage in stages]
        if changed is not None:
            first = next((i for i, name in enumerate(names) if name in changed), len(names))
            names = names[first:]
        if names:
            chains[task] = names
    return chains


@dataclass
class ChainResult:
    task: str
    #: stage -> seconds, for every stage that ended (the failed one included)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: str | None = None
    started: float = 0.0
    ended: float = 0.0


class Runner:
    """Runs chains on a pool of ``jobs`` threads, each stage a `dvc repro --single-item` child process."""

    def __init__(self, cwd: Path, log_dir: Path, force: bool, out=sys.stdout):
        self.cwd, self.log_dir, self.force, self.out = cwd, log_dir, force, out
        self.stop = threading.Event()  # set by the first failure: no chain starts another stage
        self._print = threading.Lock()

    def say(self, task: str, line: str) -> None:
        with self._print:
            self.out.write(f"[{task}] {line}\n")
            self.out.flush()

    def run_chain(self, task: str, stages: list[str]) -> ChainResult:
        result = ChainResult(task, started=time.time())
        log_path = self.log_dir / f"repro-{task}.log"
        with log_path.open("w") as log:
            for i, stage in enumerate(stages, 1):
                if self.stop.is_set():
                    self.say(task, f"not starting {stage}: another chain failed")
                    break
                cmd = [*DVC, "repro", "--single-item", *(["--force"] if self.force else []), stage]
                self.say(task, f"{stage} ({i}/{len(stages)}) ...")
                began = time.time()
                code = self._run(task, cmd, log)
                result.seconds[stage] = round(time.time() - began, 1)
                if code != 0:
                    result.failed = stage
                    self.stop.set()
                    self.say(task, f"{stage} FAILED (exit {code}) after {result.seconds[stage]:.0f} s; log: {log_path}")
                    break
                self.say(task, f"{stage} done in {result.seconds[stage]:.0f} s")
        result.ended = time.time()
        return result

    def _run(self, task: str, cmd: list[str], log) -> int:
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # lines arrive as they are written, not at the stage's end
        child = subprocess.Popen(
            cmd, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1,
        )  # fmt: skip
        for line in child.stdout:
            log.write(line)
            log.flush()
            self.say(task, line.rstrip("\n"))
        return child.wait()


def repro(
    cwd: Path, tasks: list[str], jobs: int, force: bool, log_dir: Path, before=None, out=sys.stdout
) -> list[ChainResult]:
    """Reproduce every task's chain, ``jobs`` at once, then a plain `dvc repro` for anything outside the chains
    (nothing, with dvc.yaml as it is: it then only checks that everything is up to date). ``before`` is called
    once when there is a chain to run, before any starts."""
    stages = chain_stages(cwd / "dvc.yaml")
    chains = plan(tasks, stages, None if force else changed_stages(cwd))
    log_dir.mkdir(parents=True, exist_ok=True)
    if chains and before is not None:
        before()
    runner = Runner(cwd, log_dir, force, out)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [pool.submit(runner.run_chain, task, names) for task, names in chains.items()]
        results = [f.result() for f in futures]
    times = {r.task: {"seconds": r.seconds, "started": r.started, "ended": r.ended} for r in results}
    (log_dir / "repro-times.json").write_text(json.dumps({"jobs": jobs, "force": force, "chains": times}, indent=2))
    if not any(r.failed for r in results):
        subprocess.run([*DVC, "repro"], cwd=cwd, check=True, stdin=subprocess.DEVNULL)
    return results


def prepare_stores(settings, tasks: list[str]) -> None:
    """The MLflow store and every task's experiment, made once before the chains start: sweeps of two tasks
    starting at once on a new SQLite store would race on its migrations ("duplicate column")."""
    from mlops.tracking.runs import experiment_id

    for task in tasks:
        experiment_id(settings, task)


def main(argv: list[str] | None = None) -> int:
    from mlops.config import ConfigError
    from mlops.params import load_params
    from mlops.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m mlops.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rerun every stage (dvc repro --force)")
    parser.add_argument(
        "--jobs", type=int, default=None,
        help="task chains run at once (default: one per core, at most one per task; each sweep and train stage "
        "runs sweep.workers processes of its own)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        tasks = list(load_params().tasks)
    except ConfigError as exc:
        print(f"!! {exc}", file=sys.stderr)
        return 2
    jobs = args.jobs if args.jobs is not None else min(len(tasks), os.cpu_count() or 1)
    if jobs < 1:
        parser.error("--jobs must be at least 1")
    settings = Settings()
    logs = settings.home_dir / "logs"
    try:
        results = repro(Path.cwd(), tasks, jobs, args.force, logs, before=lambda: prepare_stores(settings, tasks))
    except PipelineError as exc:
        print(f"!! {exc}", file=sys.stderr)
        return 2
    failed = [r for r in results if r.failed]
    for r in failed:
        print(f"!! {r.task}: stage {r.failed} failed; its output: {logs}/repro-{r.task}.log")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
