"""What the benchmarks run against: the real pipeline on tiny params in a temporary copy of the repo.

The tiny params keep every model's real input size (what serving costs depends on it) and shrink only
the data, the augmentation and the budgets, so ``dvc repro`` of two tasks takes a few minutes on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.report import ROOT

BIN = Path(sys.executable).parent
#: the tasks the benchmarks serve: fume_hood (the first service) and fracture (issue #6's member service)
TASKS = ("fume_hood", "fracture")


def tiny_params(tasks: tuple[str, ...] = TASKS) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tasks"] = {t: params["tasks"][t] for t in tasks}
    if "fume_hood" in tasks:
        fh = params["fume_hood"]
        fh["simulate"].update(n_photos=40, n_labs=12, width=320, height=240)
        fh["validation"].update(min_photos_per_rating=1)
        fh["augment"]["copies"] = 3
        fh["train"].update(epochs=2, patience=2)
        fh["evaluate"]["gradcam_samples"] = 2
        fh["gates"] = {"min": {"test_accuracy": 0.0}, "max": {}, "tolerance": {"test_accuracy": 0.05}}
    if "fracture" in tasks:
        fr = params["fracture"]
        fr["simulate"].update(n_specimens=12, images_per_specimen=3, min_size=72, max_size=96)
        fr["validation"].update(min_images_per_class=2)
        fr["augment"].update(copies=2, outlier_share=0.2)
        fr["train"].update(epochs=2, patience=2)
        fr["evaluate"].update(gradcam_samples=2, ood_crops=1)
        fr["gates"] = {"min": {"test_accuracy": 0.0}, "max": {}, "tolerance": {"test_accuracy": 0.05}}
    if "ttubule" in tasks:  # the served U-Net keeps its real depth, tiles and upload limit (``input``)
        tt = params["ttubule"]
        tt["simulate"].update(n_volumes=4, slices=6)
        tt["validation"].update(min_slices=2, max_ttubule_fraction=0.06)
        tt["augment"]["tiles_per_slice"] = 2
        tt["train"].update(epochs=2, patience=2)
        tt["evaluate"]["overlay_slices"] = 1
        tt["gates"] = {"min": {"test_ttubule_f": 0.0}, "max": {}, "tolerance": {"test_ttubule_f": 0.05}}
    return {k: params[k] for k in ("base", "tasks", "sweep", *tasks)}


def tiny_experiment(task: str) -> dict:
    exp = yaml.safe_load((ROOT / "experiments" / f"{task}.yaml").read_text())
    exp["budget"] = {"n_trials": 2, "epochs_per_trial": 2, "generation_size": 2}  # per arm
    exp["sampler"] = {"type": "random"}
    return exp


def env_for(home: Path) -> dict[str, str]:
    """The environment of every command against the store in ``home`` (nothing from the caller's stores)."""
    env = dict(os.environ)
    env.update(
        MLOPS_HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        GIT_PYTHON_REFRESH="quiet",
        PYTHONUNBUFFERED="1",
    )
    for key in ("MLOPS_TRACKING_URI", "MLOPS_OPTUNA_STORAGE", "MLOPS_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = run(cmd, cwd, env)
    return time.perf_counter() - start, proc


def copy_repo(dest: Path) -> None:
    """The project's source files as a fresh clone has them (working tree), without pipeline results."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for rel in files:
        if rel.startswith(("reports/", "tests/", "bench/", "docs/")) or rel in ("dvc.lock", "data.dvc"):
            continue
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@dataclass
class Store:
    """A project folder with an MLflow store whose tasks have a champion."""

    repo: Path
    home: Path
    env: dict[str, str]
    #: seconds of the first full `dvc repro` (None for an existing store)
    first_repro_s: float | None = None

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.home.resolve() / 'mlflow.db'}"


def tiny_pipeline(workdir: Path | None = None, tasks: tuple[str, ...] = TASKS) -> Store:
    """Copy the repo, simulate tiny data, `dvc repro` (timed) and promote each task's challenger."""
    repo = Path(workdir or tempfile.mkdtemp(prefix="mlops-bench-")) / "repo"
    repo.mkdir(parents=True)
    copy_repo(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(tasks), sort_keys=False))
    for task in tasks:
        (repo / "experiments" / f"{task}.yaml").write_text(yaml.safe_dump(tiny_experiment(task), sort_keys=False))
    env = env_for(repo / ".mlops")
    # The copy's code, not the checkout's (others may edit it while a benchmark runs): mlops is a namespace
    # package, so the first path on PYTHONPATH wins over the editable install.
    env["PYTHONPATH"] = str(repo)
    git = ["git", "-c", "user.email=bench@localhost", "-c", "user.name=bench"]
    print(f"building a tiny pipeline store ({', '.join(tasks)}) in {repo} ...", flush=True)
    run(["git", "init", "-q"], repo, env)
    run([*git, "add", "-A"], repo, env)
    run([*git, "commit", "-qm", "tiny"], repo, env)
    run(["mlops", "data", "simulate", "--out", "data/raw"], repo, env)
    (repo / "data.dvc").write_text("outs:\n- path: data/raw\n")
    run(["dvc", "commit", "-f", "-q", "data.dvc"], repo, env)
    seconds, _ = timed(["dvc", "repro"], repo, env)
    print(f"  dvc repro: {seconds:.1f} s", flush=True)
    for task in tasks:
        run(
            ["mlops", "registry", "promote", task, "challenger", "--if-no-champion"]
            + ["--approver", "bench", "--reason", "benchmark champion"],
            repo,
            env,
        )
    return Store(repo=repo, home=repo / ".mlops", env=env, first_repro_s=seconds)


def existing_store(home: Path) -> Store:
    """An existing store (e.g. the main job's .mlops/), used read-only from the project root."""
    home = home.resolve()
    if not (home / "mlflow.db").is_file():
        raise SystemExit(f"{home} holds no mlflow.db: run the main command (./run.sh) first or drop --home")
    return Store(repo=ROOT, home=home, env=env_for(home))
