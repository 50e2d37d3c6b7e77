"""Shared fixtures: tiny params, a tiny simulated dataset, and a whole tiny pipeline run with real dvc."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

torch.set_num_threads(1)


def tiny_params() -> dict:
    """params.yaml with every budget shrunk so the whole pipeline runs in about a minute."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tasks"] = ["fume_hood"]
    fh = params["fume_hood"]
    fh["simulate"].update(n_photos=40, n_labs=12, width=160, height=120)
    fh["validation"].update(min_photos_per_rating=1, min_width=32, min_height=24)
    fh["input"].update(width=32, height=24)
    fh["augment"]["copies"] = 3
    fh["train"].update(epochs=2, patience=2)
    fh["evaluate"]["gradcam_samples"] = 4
    fh["gates"] = {"min": {"test_accuracy": 0.0}, "max": {}}
    return {k: params[k] for k in ("base", "tasks", "sweep", "fume_hood")}


def tiny_experiment() -> dict:
    exp = yaml.safe_load((ROOT / "experiments" / "fume_hood.yaml").read_text())
    exp["budget"] = {"n_trials": 2, "epochs_per_trial": 2}  # per arm
    exp["sampler"] = {"type": "random"}
    return exp


def env_for(home: Path) -> dict[str, str]:
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


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_repo(dest: Path) -> None:
    """The project's source files (what a fresh clone has), without pipeline results."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if rel.startswith(("reports/", "tests/", "bench/")) or rel in ("dvc.lock", "data.dvc"):
            continue
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory) -> dict:
    """A temporary copy of the repo on tiny params after `simulate` + `dvc repro` (run once per session)."""
    repo = tmp_path_factory.mktemp("repo")
    copy_repo(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    (repo / "experiments" / "fume_hood.yaml").write_text(yaml.safe_dump(tiny_experiment(), sort_keys=False))
    env = env_for(repo / ".mlops")
    run(["git", "init", "-q"], repo, env)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo, env)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"], repo, env)
    run(["mlops", "data", "simulate", "--out", "data/raw"], repo, env)
    (repo / "data.dvc").write_text("outs:\n- path: data/raw\n")
    run(["dvc", "commit", "-f", "-q", "data.dvc"], repo, env)
    first = run(["dvc", "repro"], repo, env)
    second = run(["dvc", "repro"], repo, env)
    return {"repo": repo, "env": env, "home": repo / ".mlops", "first": first, "second": second}


@pytest.fixture()
def tiny_raw(tmp_path) -> Path:
    """A tiny simulated fume_hood dataset in the real-data layout."""
    from mlops.tasks.fume_hood.simulate import simulate_photos

    raw = tmp_path / "raw" / "fume_hood"
    simulate_photos(raw, n_photos=30, n_labs=10, width=160, height=120, rater_noise=0.3, seed=3)
    return raw


def write_params(folder: Path, data: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, path: str = "/readyz", seconds: float = 120) -> None:
    """Poll ``base + path`` until it answers 200; fail with the server's output if it dies or never does."""
    import time

    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"server died:\n{proc.stdout.read()}")
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"server not ready:\n{proc.stdout.read()}")


def start_service(repo: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`mlops serve` as a real uvicorn process in ``repo``; returns it and its base URL once ready."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlops"), "serve", "--port", str(port)],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, proc)
    return proc, base


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def register_altered_version(repo: Path, env: dict[str, str], task: str, seed: int = 1, scale: float = 0.5):
    """A new registry version of ``task`` whose weights are the champion's moved by seeded noise.

    So that a test of a model swap can tell the versions apart by their answers, not only by their names.
    The same path as the pipeline's train -> evaluate -> register stages: the champion's weights and spec
    from the registry, every float parameter plus ``scale`` x (its std + 0.01) x N(0, 1) noise drawn from
    ``seed``, the task's calibration, a real MLflow run carrying the champion run's lineage tags with the
    model logged as the project's pyfunc (``log_pyfunc``), the task's own test-split evaluation of the new
    weights as its metrics, then ``register_model`` (gates, ``challenger`` if they hold, model card).
    Returns the new MLflow ModelVersion.
    """
    import json

    import mlflow
    from mlflow import MlflowClient

    from mlops.config import load_params
    from mlops.registry.versions import CHAMPION, register_model
    from mlops.settings import Settings
    from mlops.tasks import get_task
    from mlops.tracking.lineage import TAG
    from mlops.tracking.log_model import log_pyfunc
    from mlops.tracking.runs import connect, experiment_id
    from mlops.training.final import RUN_FILE, SELECTED_FILE
    from mlops.training.model_files import load_model_dir, save_model_dir

    settings = Settings(home=Path(env["MLOPS_HOME"]), _env_file=None)
    connect(settings)
    client = MlflowClient()
    source = client.get_model_version_by_alias(task, CHAMPION)
    work = Path(env["MLOPS_HOME"]) / "altered" / f"{task}-v{source.version}-seed{seed}"
    if work.exists():
        shutil.rmtree(work)
    root = Path(mlflow.artifacts.download_artifacts(f"models:/{task}/{source.version}", dst_path=str(work / "source")))
    model, spec = load_model_dir(root / "artifacts")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                spread = (p.std() if p.numel() > 1 else p.abs().mean()) + 0.01
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale * spread)

    params = load_params(repo / "params.yaml")
    t = get_task(task)
    prepared = repo / source.tags[f"{TAG}data.prepared_path"]
    spec = t.calibrate(model, spec, prepared, params.task(task))
    arm = source.tags[f"{TAG}arm"]
    models = work / "models"
    save_model_dir(models / arm, model, spec)
    (models / SELECTED_FILE).write_text(json.dumps({"arm": arm}))
    evaluation = t.evaluate(model.eval(), prepared, params.task(task), work / "evaluation")
    metrics = {k: (None if isinstance(v, float) and v != v else v) for k, v in evaluation.metrics.items()}
    (work / "metrics.json").write_text(json.dumps(metrics))

    tags = {k: v for k, v in client.get_run(source.run_id).data.tags.items() if k.startswith(TAG)}
    tags |= {f"{TAG}run_kind": "train", "tests.altered_from": f"v{source.version} seed={seed} scale={scale}"}
    with mlflow.start_run(
        experiment_id=experiment_id(settings, task), run_name=f"altered-v{source.version}-seed{seed}", tags=tags
    ) as run:
        info = log_pyfunc(models / arm, t.example_input(prepared))
    record = {"run_id": run.info.run_id, "model_uri": info.model_uri, "task": task, "arm": arm, "tags": tags}
    (models / arm / RUN_FILE).write_text(json.dumps(record))
    registration = register_model(task, params, settings, models, work / "metrics.json", work / "registration.json")
    return client.get_model_version(task, registration.version)
