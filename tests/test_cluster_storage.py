"""Cluster mode's shared storage, for real: PostgreSQL on 127.0.0.1 and an ``mlflow server`` process.

The MLflow tracking server runs as a subprocess with its PostgreSQL backend store and a local artifact
destination (artifacts proxied through the server, as in k8s/base/mlflow.yaml). Sweep workers run as
local processes with exactly the command and environment of the rendered Kubernetes Job's worker
container; what a cluster would supply is supplied here and named where it happens: the Secret's
value (a test database URL), the Service DNS name ``mlflow`` (the server's loopback address), the
index the Job controller injects, the volumes (a working directory laid out like the pod's mounts).
No Kubernetes API is involved: see tests/test_k8s_launcher.py for the launcher against an emulator.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
import yaml

from mlops.params import load_experiment, load_params
from mlops.settings import Settings
from mlops.tuning.generations import logical_table
from mlops.tuning.kubernetes import ClusterSweepParams, _parent_run, load_template, plan_sweeps, render
from mlops.tuning.worker import NON_RETRIABLE_EXIT
from tests.conftest import (
    BIN,
    ROOT,
    pg_database,
    start_process,
    stop_process,
    tiny_experiment,
    tiny_params,
    wait_ready,
    write_params,
)

pytestmark = pytest.mark.integration

#: what the template's MLOPS_TRACKING_URI names: the MLflow Service inside the cluster
IN_CLUSTER_MLFLOW = "http://mlflow:5000"
ARTIFACT_ROOT = "mlflow-artifacts:/experiments"
SWEEP = ClusterSweepParams(
    completions=2,
    parallelism=2,
    gpus_per_pod=0,
    cpu="1",
    memory="2Gi",
    backoff_limit_per_index=3,
    max_failed_indexes=1,
    active_deadline_seconds=3600,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """`mlflow server` with a PostgreSQL backend store, artifacts proxied to a local folder."""
    with pg_database("mlops_test_mlflow") as db:
        folder = tmp_path_factory.mktemp("mlflow-server")
        port = free_port()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", db, "--artifacts-destination", str(folder / "art")]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        # Its own process group: the server forks uvicorn workers, stopped together with it.
        proc = start_process(cmd, folder, env, folder / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc, path="/health", seconds=240)  # schema migrations on a fresh database, 2 busy cores
            yield url
        finally:
            stop_process(proc)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny fume_hood project: raw, prepared (data/prepared/fume_hood), validation report, params."""
    from mlops.tasks import get_task
    from mlops.tasks.fume_hood.simulate import simulate_photos
    from mlops.validation import validate_dataset

    root = tmp_path_factory.mktemp("project")
    raw = root / "raw" / "fume_hood"
    simulate_photos(raw, n_photos=30, n_labs=10, width=160, height=120, rater_noise=0.3, seed=3)
    data = tiny_params()
    data["fume_hood"]["augment"]["copies"] = 20  # ~0.3 s epochs: long enough to kill a worker mid-trial
    params = load_params(write_params(root, data))
    task = get_task("fume_hood")
    task.prepare(raw, root / "data" / "prepared" / "fume_hood", params.task("fume_hood"), seed=0)
    validate_dataset(task, raw, params.task("fume_hood")).write(root / "validation.json")
    (root / "experiments").mkdir()
    return root


def launch(project: Path, settings: Settings, experiment: dict, arm: str = "custom_cnn"):
    """What the launcher does before submitting, for one arm: plan, parent run, rendered objects."""
    (project / "experiments" / "fume_hood.yaml").write_text(yaml.safe_dump(experiment))
    params = load_params(project / "params.yaml")
    exp = load_experiment("fume_hood", project / "experiments")
    plans = plan_sweeps(
        "fume_hood", params, exp, Path("data/prepared/fume_hood"), Path("raw/fume_hood"), Path("validation.json")
    )
    plan = next(p for p in plans if p.arm == arm)
    from mlops.tracking.runs import connect

    connect(settings)
    parent = _parent_run(settings, "fume_hood", plan, settings.k8s_namespace)
    plan = dataclasses.replace(plan, job=dataclasses.replace(plan.job, parent_run_id=parent))
    config_map, job = render(
        plan,
        SWEEP,
        settings,
        load_template(ROOT / "k8s" / "sweep" / "worker-job.yaml"),
        (project / "params.yaml").read_text(),
        (project / "experiments" / "fume_hood.yaml").read_text(),
    )
    return plan, exp, config_map, job


def materialize_volumes(workdir: Path, project: Path, config_map: dict, job: dict) -> None:
    """Lay out ``workdir`` like the worker pod's mounts (ConfigMap files, data volume, checkpoint volume)."""
    pod = job["spec"]["template"]["spec"]
    worker = next(c for c in pod["containers"] if c["name"] == "worker")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in worker["volumeMounts"]:
        target = workdir / PurePosixPath(mount["mountPath"]).relative_to(worker["workingDir"])
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            for item in volume["configMap"]["items"]:
                (target / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (target / item["path"]).write_text(config_map["data"][item["key"]])
        elif volume["persistentVolumeClaim"]["claimName"] == "sweep-data":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(project / "data", target_is_directory=True)
        else:  # the checkpoint volume, shared by every "pod" as the ReadWriteMany volume is
            target.mkdir(parents=True, exist_ok=True)


def container_env(container: dict, secret: dict[str, str], tracking: str, index: int, failures: int, home: Path):
    """The container's environment as the kubelet would resolve it, plus what the Job controller adds."""
    env = {"PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(home), "JOB_COMPLETION_INDEX": str(index)}
    annotations = {"batch.kubernetes.io/job-index-failure-count": str(failures)}
    for var in container["env"]:
        if "value" in var:
            value = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "mlops-db"
            value = secret[ref["key"]]
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            value = annotations[path.removeprefix("metadata.annotations['").removesuffix("']")]
        env[var["name"]] = value
    assert env["MLOPS_TRACKING_URI"] == IN_CLUSTER_MLFLOW
    env["MLOPS_TRACKING_URI"] = tracking  # the Service's DNS name -> the server's loopback address
    return env


def start(container: dict, workdir: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(container["command"], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)


def run_to_end(container: dict, workdir: Path, env: dict[str, str], log: Path) -> int:
    return start(container, workdir, env, log).wait(timeout=120)


@pytest.fixture()
def cluster(project, mlflow_server, tmp_path, monkeypatch):
    """A fresh Optuna database; the test process plays the launcher from the project's root."""
    monkeypatch.chdir(project)
    with pg_database("mlops_test_optuna") as optuna_db:
        settings = Settings(
            home=tmp_path / "launcher",
            tracking_uri=mlflow_server,
            artifact_root=ARTIFACT_ROOT,
            optuna_storage=optuna_db,
            k8s_namespace="mlops",
        )
        yield settings, {"optuna-storage-url": optuna_db}


def test_worker_pod_command_and_environment_run_for_real(cluster, project, mlflow_server, tmp_path, monkeypatch, capfd):
    import mlflow
    import optuna

    from mlops.tuning.storage import make_storage
    from mlops.tuning.sweep import summarize_study
    from mlops.tuning.worker import main

    settings, secret = cluster
    experiment = {**tiny_experiment(), "budget": {"n_trials": 3, "epochs_per_trial": 2, "generation_size": 2}}
    plan, exp, config_map, job = launch(project, settings, experiment)
    pod = job["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (worker,) = pod["containers"]
    assert init["command"] == ["python", "-m", "mlops.tuning.worker", "create-study"]
    assert worker["command"] == ["python", "-m", "mlops.tuning.worker", "run"]

    env = container_env(init, secret, mlflow_server, 0, 0, tmp_path)
    # A pod without its data volume: the init step exits with the code podFailurePolicy fails on
    # (in this process, with the pod's environment: one interpreter start less on busy cores).
    empty = tmp_path / "pod-without-data"
    empty.mkdir()
    materialize_volumes(empty, project, config_map, job)
    (empty / "data").unlink()
    monkeypatch.chdir(empty)
    monkeypatch.setenv("MLOPS_OPTUNA_STORAGE", env["MLOPS_OPTUNA_STORAGE"])
    assert main(["create-study"], environ=env) == NON_RETRIABLE_EXIT
    assert "prepared data data/prepared/fume_hood is missing" in capfd.readouterr().err
    assert main(["run"], environ={}) == NON_RETRIABLE_EXIT  # no job in the environment: not retriable
    monkeypatch.chdir(project)

    # The real pod: init container (creates the study), then two workers (Job indexes 0 and 1).
    workdir = tmp_path / "pod"
    workdir.mkdir()
    materialize_volumes(workdir, project, config_map, job)
    assert run_to_end(init, workdir, env, tmp_path / "init.log") == 0, (tmp_path / "init.log").read_text()
    workers = [
        start(worker, workdir, container_env(worker, secret, mlflow_server, i, 0, tmp_path), tmp_path / f"w{i}.log")
        for i in range(2)
    ]
    for i, proc in enumerate(workers):
        assert proc.wait(timeout=150) == 0, (tmp_path / f"w{i}.log").read_text()[-4000:]

    study = optuna.load_study(study_name=plan.study_name, storage=make_storage(secret["optuna-storage-url"]))
    # Per logical trial: an attempt a worker gave back (its generation was not open yet) is not a trial.
    table = logical_table(study.trials)
    assert [row["number"] for row in table] == [0, 1, 2] and {row["state"] for row in table} <= {"COMPLETE", "PRUNED"}
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len({t.user_attrs["worker_pid"] for t in finished}) == 2, "both worker processes ran trials"

    mlflow.set_tracking_uri(mlflow_server)
    children = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{plan.job.parent_run_id}'",
        output_format="list",
    )
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    # Lineage the launcher computed travelled in MLOPS_SWEEP_JOB (a pod has no git, no report).
    assert all(c.data.tags["mlops.sweep_id"] == plan.study_name for c in children)
    assert all(c.data.tags["mlops.validation.success"] == "true" for c in children)

    mlflow.start_run(run_id=plan.job.parent_run_id)
    result = summarize_study(study, exp, plan.arm, plan.job.parent_run_id)
    mlflow.end_run("FINISHED")
    assert result.n_complete + result.n_pruned == 3
    assert "optuna/optimization_history.png" in {
        a.path for a in mlflow.MlflowClient().list_artifacts(plan.job.parent_run_id, "optuna")
    }, "artifacts went through the server's proxy"


def test_sweep_survives_workers_killed_mid_trial(cluster, project, mlflow_server, tmp_path, monkeypatch):
    """Two worker processes; three times a worker is SIGKILLed in the middle of a trial.

    A supervisor here plays the Job controller: it replaces a killed worker (same index, failure count
    + 1). Heartbeats are shortened (1 s, stale after 3 s; the Job's defaults are 60 s / 180 s) so the
    test runs in about a minute. The study that results is the one an uninterrupted single worker makes:
    each retried trial resumed from its checkpoint and recomputed the same values.
    """
    import mlflow
    import optuna
    from optuna.trial import TrialState

    from mlops.tuning.storage import make_storage, retried_trial_number
    from mlops.tuning.sweep import ROOT_TAG, summarize_study

    settings, secret = cluster
    n_trials, epochs, kills = 4, 4, 3
    experiment = {
        **tiny_experiment(),
        "budget": {"n_trials": n_trials, "epochs_per_trial": epochs, "generation_size": 2},
        "pruner": {"type": "nop"},
    }
    plan, exp, config_map, job = launch(project, settings, experiment)
    pod = job["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (worker,) = pod["containers"]
    workdir = tmp_path / "pod"
    workdir.mkdir()
    materialize_volumes(workdir, project, config_map, job)

    def env(container, index, failures):
        e = container_env(container, secret, mlflow_server, index, failures, tmp_path)
        e.update(MLOPS_HEARTBEAT_INTERVAL="1", MLOPS_HEARTBEAT_GRACE_PERIOD="3")
        return e

    assert run_to_end(init, workdir, env(init, 0, 0), tmp_path / "init.log") == 0
    study = optuna.load_study(study_name=plan.study_name, storage=make_storage(secret["optuna-storage-url"]))
    failures = [0, 0]
    procs = [start(worker, workdir, env(worker, i, 0), tmp_path / f"w{i}.log") for i in range(2)]
    killed: set[int] = set()
    deadline = time.monotonic() + 110
    while any(p is not None for p in procs):
        assert time.monotonic() < deadline, f"sweep did not finish; killed trials {killed}"
        for i, proc in enumerate(procs):
            code = None if proc is None else proc.poll()
            if code == -signal.SIGKILL:  # the Job controller replaces the pod of a failed index
                failures[i] += 1
                procs[i] = start(worker, workdir, env(worker, i, failures[i]), tmp_path / f"w{i}.log")
            elif code == 0:
                procs[i] = None
            elif code is not None:
                pytest.fail(f"worker {i} exited {code}:\n" + (tmp_path / f"w{i}.log").read_text()[-4000:])
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        # A kill that landed just after its trial completed does not count: kill another one.
        if sum(states[n] != TrialState.COMPLETE for n in killed) < kills:
            alive = {p.pid: p for p in procs if p is not None and p.poll() is None}
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                # Mid-trial: a first attempt that has finished an epoch (so a checkpoint exists).
                pid = trial.user_attrs.get("worker_pid")
                if retried_trial_number(trial) is None and trial.intermediate_values and pid in alive:
                    alive[pid].send_signal(signal.SIGKILL)
                    killed.add(trial.number)
                    break
        time.sleep(0.1)

    trials = study.get_trials(deepcopy=False)
    mid_trial = {t.number for t in trials if t.number in killed and t.state != TrialState.COMPLETE}
    assert len(mid_trial) == kills, f"killed {killed}, mid-trial {mid_trial}"
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)), "no duplicate trial numbers"
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials, [(t.number, t.state.name) for t in trials]
    roots = [retried_trial_number(t) if retried_trial_number(t) is not None else t.number for t in complete]
    assert len(set(roots)) == n_trials, "each trial completed once, by its first attempt or by its retry"
    # Killed trials (well past their grace period) failed, and each was retried to completion.
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    assert failed == mid_trial
    by_number = {t.number: t for t in trials}
    retried = {retried_trial_number(t): t for t in complete if retried_trial_number(t) is not None}
    assert set(retried) == failed
    for root, retry in retried.items():
        original = by_number[root]
        assert original.intermediate_values, "the original reported at least one epoch before the kill"
        # Intermediate values kept: the retry holds the original's epochs and then its own.
        assert set(retry.intermediate_values) == set(range(epochs))
        for step, value in original.intermediate_values.items():
            assert retry.intermediate_values[step] == pytest.approx(value)
        assert retry.params == original.params

    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    children = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{plan.job.parent_run_id}'",
        output_format="list",
    )
    # One run per trial: a retry continued the run its killed attempt started...
    assert sorted(int(c.data.tags[ROOT_TAG]) for c in children) == sorted(roots)
    assert all(c.info.status == "FINISHED" and c.data.tags["optuna.state"] == "COMPLETE" for c in children)
    for run in children:
        # ...resuming from the checkpoint: each epoch logged exactly once, none retrained from scratch.
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(epochs)), (run.data.tags[ROOT_TAG], steps)
    # Checkpoints of finished trials are removed; the retries found theirs under the original number.
    assert not list((workdir / ".mlops" / "checkpoints" / plan.study_name).glob("*.pt"))

    mlflow.start_run(run_id=plan.job.parent_run_id)
    result = summarize_study(study, exp, plan.arm, plan.job.parent_run_id)
    mlflow.end_run("FINISHED")
    assert (result.n_complete, result.n_failed) == (n_trials, 0)  # every killed trial was retried to the end
    running = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`mlops.sweep_id` = '{plan.study_name}' AND attributes.status = 'RUNNING'",
        output_format="list",
    )
    assert running == [], "no MLflow run left RUNNING"

    # The same job, uninterrupted, by one worker on a journal file (no tracking): the same study.
    from mlops.tuning.sweep import SweepJob, worker_main
    from mlops.tuning.worker import JOB_ENV

    alone = tmp_path / "alone.journal"
    monkeypatch.chdir(workdir)  # the job's paths are relative to the pod's working directory
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "alone-home"))
    pod_job = SweepJob(**json.loads(env(worker, 0, 0)[JOB_ENV]))  # what the pods ran, paths as they saw them
    worker_main(dataclasses.replace(pod_job, storage_url=f"journal:{alone}", track=False), 0)
    uninterrupted = optuna.load_study(study_name=plan.study_name, storage=make_storage(f"journal:{alone}"))
    assert logical_table(uninterrupted.get_trials()) == logical_table(study.get_trials())
