"""Shared fixtures: tiny params, a tiny simulated dataset, and a whole tiny pipeline run with real dvc."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# A developer's .env must not steer the suite (nor the processes it starts, which inherit this).
os.environ["MLOPS_ENV_FILE"] = ""
#: The one PostgreSQL setting of the suite: an admin URL whose user may create and drop databases.
POSTGRES_ADMIN_URL = os.environ.get("MLOPS_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")

torch.set_num_threads(1)


@contextlib.contextmanager
def pg_database(prefix: str = "mlops_test") -> Iterator[str]:
    """A fresh database on the test PostgreSQL server (dropped afterwards); yields its SQLAlchemy URL."""
    import uuid

    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_url = sa.engine.make_url(POSTGRES_ADMIN_URL)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL at {admin_url.render_as_string(hide_password=True)} is required: {exc}\n"
            "Start it (.ci/run does: pg_ctlcluster ... main start) or set MLOPS_TEST_POSTGRES_URL."
        )
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


#: Modules whose tests use the session's tiny pipeline (`pipeline_repo`): one xdist worker runs them all.
PIPELINE_REPO_MODULES = (
    "tests/test_evaluation_honesty.py",
    "tests/test_pipeline.py",
    "tests/test_registry_reproduce.py",
    "tests/test_repeats.py",
    "tests/test_serving.py",
)


def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`./test.sh` runs two workers) each module's tests run in one worker.

    Module-scoped fixtures (a tiny pipeline, a served model) are then built once, not once per worker; the
    modules sharing the session's tiny pipeline form one unit for the same reason. (xdist's own `loadgroup`
    marks are ignored under pytest 9.2, whose node ids no longer read the suffix xdist writes.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "pipeline_repo" if module in PIPELINE_REPO_MODULES else module

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """A module that starts using `pipeline_repo` must join PIPELINE_REPO_MODULES, or it would build its own."""
    users = {str(item.path.relative_to(ROOT)) for item in items if "pipeline_repo" in item.fixturenames}
    missing = users - set(PIPELINE_REPO_MODULES)
    if missing:
        raise pytest.UsageError(f"add {sorted(missing)} to PIPELINE_REPO_MODULES in tests/conftest.py")


@pytest.fixture(autouse=True)
def _isolated_process_state():
    """Each test starts from the same environment, working directory and MLflow URIs, and leaves them so.

    MLflow keeps its tracking and registry URIs in module globals; code under test sets them (connect()),
    so without this one test's store would leak into the next.
    """
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    environ, cwd = dict(os.environ), os.getcwd()
    uris = tracking_utils._tracking_uri, registry_utils._registry_uri
    yield
    if mlflow.active_run() is not None:
        mlflow.end_run()
    tracking_utils._tracking_uri, registry_utils._registry_uri = uris
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)


#: Per task: params.yaml overrides that shrink its data, for every test that runs a task on tiny data.
TINY: dict[str, dict[str, Any]] = {
    "fume_hood": {
        "simulate": {"n_photos": 40, "n_labs": 12, "width": 160, "height": 120},
        "validation": {"min_photos_per_rating": 1, "min_width": 32, "min_height": 24},
        "input": {"width": 32, "height": 24},
        "augment": {"copies": 3},
    },
    "gas_leak": {
        "simulate": {
            "n_sim": 24,
            "n_field": 6,
            "geometry": {"frames": 10, "height": 16, "width": 16, "margin_px": 2.0, "seqs_per_scene": 2},
        },
        "validation": {"min_sequences": 10, "min_frames": 8, "height": 16, "width": 16},
        "split": {"val_fraction": 0.2, "test_fraction": 0.2},
        "input": {"frames": 8},
        "augment": {"copies": 2},
    },
    "skeleton": {
        "simulate": {
            "n_train_videos": 3,
            "train_frames_per_video": 45,
            "n_test_videos": 1,
            "test_frames_per_video": 90,
            "segment_seconds_min": 0.8,
            "segment_seconds_max": 1.2,
            "abnormal_fraction": 0.5,
        },
        "split": {"val_fraction": 0.34},
    },
    "fracture": {
        "simulate": {"n_specimens": 12, "images_per_specimen": 3, "min_size": 64, "max_size": 96},
        "validation": {"min_images_per_class": 2, "min_width": 32, "min_height": 32},
        "input": {"size": 32},
        "augment": {"copies": 2, "outlier_share": 0.2},
    },
    "ttubule": {
        "simulate": {"n_volumes": 3, "slices": 6, "height": 64, "width": 64},
        "validation": {"min_slices": 2, "min_height": 32, "min_width": 32, "max_ttubule_fraction": 0.06},
        "augment": {"tiles_per_slice": 2},
        "input": {"tile": 32, "infer_tile": 128},
    },
}


def deep_update(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_params() -> dict:
    """params.yaml with every budget shrunk so the whole pipeline runs in about a minute."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tasks"] = {"fume_hood": params["tasks"]["fume_hood"]}
    fh = params["fume_hood"] = deep_update(params["fume_hood"], TINY["fume_hood"])
    fh["train"].update(epochs=2, patience=2)
    fh["evaluate"]["gradcam_samples"] = 4
    fh["gates"] = {"min": {"test_accuracy": 0.0}, "max": {}, "tolerance": {"test_accuracy": 0.05}}
    return {k: params[k] for k in ("base", "tasks", "sweep", "fume_hood")}


def tiny_experiment() -> dict:
    exp = yaml.safe_load((ROOT / "experiments" / "fume_hood.yaml").read_text())
    exp["budget"] = {"n_trials": 2, "epochs_per_trial": 2, "generation_size": 2}  # per arm
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


def run(
    cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run a command to its end in its own process group; on a timeout or an interrupted test (pytest-timeout)
    the whole group is killed, so no worker a CLI spawned (sweep workers, dvc) outlives the test."""
    import signal

    child = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.communicate(timeout=30)
        raise
    proc = subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)
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


def tiny_repo(repo: Path, params: dict | None = None, experiments: dict[str, dict] | None = None) -> dict[str, str]:
    """A copy of the repo in ``repo`` on tiny params, committed to its own git, its data simulated and added to
    DVC: ready for `dvc repro`. ``params`` default to :func:`tiny_params`, ``experiments`` (task -> experiment
    file) to fume_hood's :func:`tiny_experiment`. Returns the environment to run its commands in (own MLOPS_HOME)."""
    copy_repo(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    for task, exp in (experiments or {"fume_hood": tiny_experiment()}).items():
        (repo / "experiments" / f"{task}.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    env = env_for(repo / ".mlops")
    run(["git", "init", "-q"], repo, env)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo, env)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"], repo, env)
    run(["mlops", "data", "simulate", "--out", "data/raw"], repo, env)
    (repo / "data.dvc").write_text("outs:\n- path: data/raw\n")
    run(["dvc", "commit", "-f", "-q", "data.dvc"], repo, env)
    return env


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory) -> dict:
    """A temporary copy of the repo on tiny params after `simulate` + `dvc repro` (run once per session)."""
    repo = tmp_path_factory.mktemp("repo")
    env = tiny_repo(repo)
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
            raise AssertionError(f"server died:\n{process_log(proc)}")
        time.sleep(0.5)
    raise AssertionError(f"server not ready after {seconds} s:\n{process_log(proc)}")


def start_process(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A child process in its own process group, writing stdout+stderr to ``log`` (never to a pipe).

    A pipe that nobody reads fills up (64 KiB) and then blocks the child; a file never does. The own
    process group lets ``stop_process`` stop the child's children too (uvicorn/gunicorn workers).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.log_path = log  # type: ignore[attr-defined]
    _STARTED.append(proc)
    return proc


def process_log(proc: subprocess.Popen, tail: int = 8000) -> str:
    path = getattr(proc, "log_path", None)
    if path is None or not Path(path).exists():
        return "(no log)"
    return Path(path).read_text(errors="replace")[-tail:]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the child's whole process group, SIGKILL it after 20 s."""
    import signal

    if not getattr(proc, "log_path", None):  # not from start_process: no group of its own to stop
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    # Workers of a server may outlive their parent: the group goes in any case.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    if proc in _STARTED:
        _STARTED.remove(proc)


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(scope="session", autouse=True)
def _stop_every_started_process():
    """Whatever a test or fixture started and did not stop (a failure mid-test) is stopped at the end."""
    yield
    for proc in list(_STARTED):
        stop_process(proc)


def start_service(repo: Path, env: dict[str, str], log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`mlops serve` as a real uvicorn process in ``repo``; returns it and its base URL once ready.

    Its output goes to ``log`` (default ``<MLOPS_HOME>/serve-<port>.log``).
    """
    port = free_port()
    log = log or Path(env.get("MLOPS_HOME", repo / ".mlops")) / f"serve-{port}.log"
    proc = start_process([str(BIN / "mlops"), "serve", "--port", str(port)], repo, env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc, base


def issue_key(env: dict[str, str], name: str, role: str = "member") -> str:
    """An API key issued in process (what `mlops keys issue` does, without a CLI process)."""
    from mlops.members.keys import KeyStore
    from mlops.settings import Settings

    home = env.get("MLOPS_HOME", ".mlops")
    store = KeyStore(Settings(home=Path(home), _env_file=None).resolved_service_db_uri)
    try:
        return store.issue(name, role, "tests")[1]
    finally:
        store.engine.dispose()


def register_altered_version(repo: Path, env: dict[str, str], task: str, seed: int = 1, scale: float = 0.5):
    """A new registry version of ``task`` whose weights are the champion's moved by seeded noise.

    So that a test of a model swap can tell the versions apart by their answers, not only by their names.
    The same path as the pipeline's train -> evaluate -> register stages: the champion's weights and spec
    from the registry, every float parameter plus ``scale`` x (its std + 0.01) x N(0, 1) noise drawn from
    ``seed``, the task's calibration, a real MLflow run carrying the champion run's lineage tags and the new
    weights' digest (``WEIGHTS_TAG``, how the stages find a model's run) with the model logged as the project's
    pyfunc (``log_pyfunc``), the evaluate stage's ``evaluate_model`` for its metrics, then ``register_model``
    (gates, ``challenger`` if they hold, model card).
    Returns the new MLflow ModelVersion.
    """
    import json

    import mlflow
    from mlflow import MlflowClient

    from mlops.inference.model_files import save_model_dir, weights_digest
    from mlops.params import load_params
    from mlops.registry.register import register_model
    from mlops.registry.versions import CHAMPION
    from mlops.settings import Settings
    from mlops.tasks import capabilities, get_task, load_model_dir
    from mlops.tracking.lineage import TAG, WEIGHTS_TAG
    from mlops.tracking.log_model import log_pyfunc
    from mlops.tracking.runs import connect, experiment_id
    from mlops.training.evaluate import evaluate_model
    from mlops.training.final import SELECTED_FILE

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
    spec = capabilities.calibrate(t, model, spec, prepared, params.task(task))  # as the train stage does
    arm = source.tags[f"{TAG}arm"]
    models = work / "models"
    save_model_dir(models / arm, model, spec)
    (models / SELECTED_FILE).write_text(json.dumps({"arm": arm}))

    tags = {k: v for k, v in client.get_run(source.run_id).data.tags.items() if k.startswith(TAG)}
    tags |= {
        f"{TAG}run_kind": "train",
        WEIGHTS_TAG: weights_digest(models / arm),  # how evaluate and register find this run (train_run_for)
        "tests.altered_from": f"v{source.version} seed={seed} scale={scale}",
    }
    with mlflow.start_run(
        experiment_id=experiment_id(settings, task), run_name=f"altered-v{source.version}-seed{seed}", tags=tags
    ):
        log_pyfunc(models / arm, t.example_input(prepared))
    # The evaluate stage's own code: test-split metrics into metrics.json and onto the run.
    evaluate_model(
        task, params, settings, models, prepared, work / "evaluation", work / "tables", work / "metrics.json"
    )
    registration = register_model(task, params, settings, models, work / "metrics.json", work / "registration.json")
    return client.get_model_version(task, registration.version)


def assert_cam_layer_is_spatial(model, x) -> None:
    """Grad-CAM's layer is on the forward path and still a spatial map (not pooled away); the map is in [0, 1]."""
    from mlops.inference.gradcam import grad_cam

    acts = []
    handle = model.cam_layer.register_forward_hook(lambda _m, _i, out: acts.append(out.shape))
    heat = grad_cam(model, x, lambda out: out[:, 0], model.cam_layer)
    handle.remove()
    assert len(acts) == 1 and len(acts[0]) == 4 and min(acts[0][2:]) > 1
    assert heat.shape == (x.shape[0], *x.shape[2:]) and float(heat.min()) >= 0 and float(heat.max()) <= 1
