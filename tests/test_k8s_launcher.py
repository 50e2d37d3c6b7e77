"""The Kubernetes launcher against an in-process Kubernetes API emulator (kmock), not a real cluster.

No Kubernetes API server can run on these machines. kmock's ``KubernetesEmulator`` serves the
Kubernetes REST API over HTTP from a thread of the test process and stores objects in memory; the
launcher talks to it through the official ``kubernetes`` client exactly as to a cluster. The
emulator runs no controllers: no pod is ever started. The tests play the Job controller and the
kubelet themselves, through the same API (pods created and moved through their phases, Job status
written), and add trials to the study as workers would, to exercise following, failure and cleanup.
The emulator also ignores label selectors, which the launcher tolerates by filtering pods itself.

The study database is the real local PostgreSQL; MLflow writes to its PostgreSQL backend store
directly (no server: the launcher's MLflow calls are what is under test, not the server).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import kmock
import kubernetes
import kubernetes_validate
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from mlops.params import load_experiment, load_params
from mlops.settings import Settings
from mlops.tuning.kubernetes import (
    ClusterParams,
    SweepJobFailed,
    make_api_client,
    plan_sweeps,
    run_kubernetes_sweeps,
)
from mlops.tuning.space import suggest
from mlops.tuning.storage import make_storage
from tests.conftest import ROOT, tiny_experiment, tiny_params, write_params
from tests.test_cluster_storage import pg_database

pytestmark = pytest.mark.integration

NAMESPACE = "mlops"
CLUSTER = {
    "sweep": {
        "completions": 3,
        "parallelism": 2,
        "gpus_per_pod": 1,
        "cpu": "4",
        "memory": "16Gi",
        "backoff_limit_per_index": 2,
        "max_failed_indexes": 1,
        "active_deadline_seconds": 7200,
    }
}
JOB_NAME = "batch.kubernetes.io/job-name"


class Emulator:
    """kmock's Kubernetes API emulator, served from a background thread, and an official-client ApiClient."""

    def __enter__(self) -> Emulator:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            self.stop = asyncio.Event()
            async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
                self.kmock, self.url = emulator, str(server.url).rstrip("/")
                for resource in ("v1/pods", "v1/configmaps", "batch/v1/jobs"):
                    emulator.resources[resource] = {}  # listable before the first object exists
                ready.set()
                await self.stop.wait()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve(),), daemon=True)
        self.thread.start()
        assert ready.wait(30), "the emulator did not start"
        self.api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=self.url))
        self.batch = kubernetes.client.BatchV1Api(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        return self

    def __exit__(self, *exc) -> None:
        self.api.close()
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)

    def requests(self, method: str, pattern: str) -> list:
        return [r for r in list(self.kmock) if r.method.value == method and re.search(pattern, r.url.path)]

    def names(self, plural: str) -> set[str]:
        """Names of the live (not deleted) objects of a resource in the namespace."""
        items = {
            "jobs": lambda: self.batch.list_namespaced_job(NAMESPACE).items,
            "configmaps": lambda: self.core.list_namespaced_config_map(NAMESPACE).items,
            "pods": lambda: self.core.list_namespaced_pod(NAMESPACE).items,
        }[plural]()
        return {i.metadata.name for i in items}

    # --- playing the Job controller and the kubelet, through the API ---

    def jobs_by_arm(self) -> dict[str, str]:
        return {
            j.metadata.labels["mlops.dev/arm"]: j.metadata.name for j in self.batch.list_namespaced_job(NAMESPACE).items
        }

    def start_pods(self, job: str, indexes, phase: str = "Pending") -> None:
        for i in indexes:
            labels = {JOB_NAME: job, "job-name": job, "batch.kubernetes.io/job-completion-index": str(i)}
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"{job}-{i}-abcde", "namespace": NAMESPACE, "labels": labels},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "mlops"}]},
                "status": {"phase": phase},
            }
            self.core.create_namespaced_pod(NAMESPACE, pod)

    def pod_phase(self, job: str, index: int, phase: str, exit_code: int | None = None, init: bool = False) -> None:
        status: dict = {"phase": phase}
        if exit_code is not None:
            terminated = {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}
            key, name = ("initContainerStatuses", "create-study") if init else ("containerStatuses", "worker")
            status[key] = [
                {"name": name, "image": "mlops", "imageID": "", "ready": False, "restartCount": 0,
                 "state": {"terminated": terminated}}
            ]  # fmt: skip
        self.core.patch_namespaced_pod_status(f"{job}-{index}-abcde", NAMESPACE, {"status": status})

    def job_status(self, job: str, **status) -> None:
        self.batch.patch_namespaced_job_status(job, NAMESPACE, {"status": status})


@pytest.fixture()
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def stores() -> Iterator[dict[str, str]]:
    """Fresh PostgreSQL databases: the study storage and MLflow's backend store."""
    with pg_database("mlops_test_k8s_optuna") as optuna_db, pg_database("mlops_test_k8s_mlflow") as mlflow_db:
        yield {"optuna": optuna_db, "mlflow": mlflow_db}


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory) -> Path:
    """Raw data and its validation report (lineage reads them); nothing reads prepared data here."""
    from mlops.tasks import get_task
    from mlops.tasks.fume_hood.simulate import simulate_photos
    from mlops.validation import validate_dataset

    root = tmp_path_factory.mktemp("k8s-project")
    raw = root / "raw" / "fume_hood"
    simulate_photos(raw, n_photos=30, n_labs=10, width=160, height=120, rater_noise=0.3, seed=3)
    params = load_params(write_params(root, tiny_params()))
    validate_dataset(get_task("fume_hood"), raw, params.task("fume_hood")).write(root / "validation.json")
    (root / "experiments").mkdir()
    (root / "experiments" / "fume_hood.yaml").write_text(yaml.safe_dump(tiny_experiment()))
    return root


_seed = iter(range(1000, 2000))


@pytest.fixture()
def launch(project_dir, stores, tmp_path, monkeypatch, emulator):
    """Run the launcher from the project root; each test has its own seed, hence its own studies."""
    monkeypatch.chdir(project_dir)
    data = tiny_params()
    data["base"]["seed"] = next(_seed)
    params_path = write_params(tmp_path, data)
    params = load_params(params_path)
    exp = load_experiment("fume_hood", "experiments")
    settings = Settings(
        home=tmp_path / "home",
        tracking_uri=stores["mlflow"],
        artifact_root=(tmp_path / "artifacts").as_uri(),
        optuna_storage=stores["optuna"],
        k8s_namespace=NAMESPACE,
        k8s_image="registry.example.com/mlops:1.0",
        k8s_job_template=ROOT / "k8s" / "sweep" / "worker-job.yaml",
    )

    def run(script: list[Callable[[], None]], **kwargs):
        steps = iter(script)

        def sleep(_seconds: float) -> None:  # each poll of the launcher: the cluster moves one step
            step = next(steps, None)
            assert step is not None, "the launcher kept polling after the scripted cluster finished"
            step()

        return run_kubernetes_sweeps(
            "fume_hood",
            params,
            exp,
            settings,
            Path("data/prepared/fume_hood"),
            Path("raw/fume_hood"),
            Path("validation.json"),
            Path("experiments"),
            cluster=ClusterParams(**CLUSTER),
            api_client=emulator.api,
            sleep=sleep,
            poll_seconds=0,
            **kwargs,
        )

    run.params, run.exp, run.settings = params, exp, settings
    return run


def add_trials(storage_url: str, study_name: str, exp, arm: str, states: list[TrialState]) -> None:
    """Trials as a worker pod would leave them in the shared study."""
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage_url))
    for i, state in enumerate(states):
        trial = study.ask()
        suggest(trial, exp.arm_space(arm)[1])
        for step in range(2):
            trial.report(0.3 + 0.1 * i + 0.05 * step, step)
        if state == TrialState.COMPLETE:
            study.tell(trial, 0.4 + 0.1 * i)
        else:
            study.tell(trial, state=state)


def parent_runs(emulator: Emulator) -> dict[str, str]:
    """The MLflow parent run each submitted Job's pods log under, by arm."""
    runs = {}
    for request in emulator.requests("POST", r"/jobs$"):
        env = {e["name"]: e for e in request.data["spec"]["template"]["spec"]["containers"][0]["env"]}
        runs[request.data["metadata"]["labels"]["mlops.dev/arm"]] = json.loads(env["MLOPS_SWEEP_JOB"]["value"])[
            "parent_run_id"
        ]
    return runs


def study_of(emulator: Emulator, job: str) -> str:
    return emulator.batch.read_namespaced_job(job, NAMESPACE).metadata.labels["mlops.dev/study"]


def validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_launcher_submits_follows_and_cleans_up(emulator, launch, stores, capsys):
    import mlflow

    def pending():
        for job in emulator.jobs_by_arm().values():
            emulator.start_pods(job, [0, 1])
            emulator.job_status(job, active=2, startTime="2026-01-01T00:00:00Z")

    def running():
        for arm, job in emulator.jobs_by_arm().items():
            for i in (0, 1):
                emulator.pod_phase(job, i, "Running")
            add_trials(stores["optuna"], study_of(emulator, job), launch.exp, arm, [TrialState.COMPLETE])

    def complete():
        for arm, job in emulator.jobs_by_arm().items():
            add_trials(stores["optuna"], study_of(emulator, job), launch.exp, arm, [TrialState.PRUNED])
            emulator.start_pods(job, [2], phase="Succeeded")
            for i in (0, 1):
                emulator.pod_phase(job, i, "Succeeded", exit_code=0)
            emulator.job_status(
                job,
                active=0,
                succeeded=3,
                completedIndexes="0-2",
                conditions=[{"type": "Complete", "status": "True", "reason": "CompletionsReached"}],
            )

    results = launch([pending, running, complete])

    # Submitted: per arm a ConfigMap and an Indexed Job, strictly valid, as the launcher rendered them.
    posted_jobs = [r.data for r in emulator.requests("POST", r"/apis/batch/v1/namespaces/mlops/jobs$")]
    posted_maps = [r.data for r in emulator.requests("POST", r"/api/v1/namespaces/mlops/configmaps$")]
    assert len(posted_jobs) == len(posted_maps) == 2
    for obj in posted_jobs + posted_maps:
        validate(obj)
    assert {j["metadata"]["labels"]["mlops.dev/arm"] for j in posted_jobs} == set(results) == {"custom_cnn", "alexnet"}
    for job in posted_jobs:
        arm = job["metadata"]["labels"]["mlops.dev/arm"]
        spec = job["spec"]
        assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 2)
        worker = spec["template"]["spec"]["containers"][0]
        assert worker["image"] == "registry.example.com/mlops:1.0"
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
        env = {e["name"]: e for e in worker["env"]}
        pod_job = json.loads(env["MLOPS_SWEEP_JOB"]["value"])
        assert pod_job["parent_run_id"] == results[arm].parent_run_id
        assert pod_job["study_name"] == results[arm].study_name
        config_map = next(m for m in posted_maps if m["metadata"]["name"] == job["metadata"]["name"])
        assert config_map["data"]["params.yaml"] == Path(launch.params.path).read_text()

    # Cleaned up: Jobs deleted with their pods (background propagation), ConfigMaps deleted.
    deletes = emulator.requests("DELETE", r"/apis/batch/v1/namespaces/mlops/jobs/")
    assert len(deletes) == 2 and all(r.params.get("propagationPolicy") == "Background" for r in deletes)
    assert len(emulator.requests("DELETE", r"/api/v1/namespaces/mlops/configmaps/")) == 2
    assert emulator.names("jobs") == emulator.names("configmaps") == set()

    # Summarised like a local sweep: results, and parent runs finished with the best values.
    mlflow.set_tracking_uri(launch.settings.resolved_tracking_uri)
    for result in results.values():
        assert (result.n_complete, result.n_pruned, result.n_failed) == (1, 1, 0)
        parent = mlflow.get_run(result.parent_run_id)
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["mlops.backend"] == "kubernetes"
        assert parent.data.tags["mlops.k8s.job"].startswith("mlops/sweep-fume-hood-")
        assert parent.data.metrics[f"best_{result.objective_metric}"] == pytest.approx(result.best_value)
    progress = capsys.readouterr().err
    assert "job complete; pods: 3 succeeded; trials: 1 complete, 1 pruned, 0 failed, 0 running, best" in progress
    assert re.search(r"created Job mlops/sweep-fume-hood-alexnet-\w+ \(arm alexnet", progress)


def test_a_failed_job_is_reported_with_its_pods_and_cleaned_up(emulator, launch, stores):
    import mlflow

    emulator.kmock["get", re.compile(r"/api/v1/namespaces/mlops/pods/[^/]+/log")] << (
        b"loading params\nerror (not retriable): prepared data data/prepared/fume_hood is missing under /app\n"
    )

    def start():
        jobs = emulator.jobs_by_arm()
        emulator.start_pods(jobs["alexnet"], [0, 1])
        emulator.start_pods(jobs["custom_cnn"], [0, 1], phase="Running")

    def fail_one_arm():
        jobs = emulator.jobs_by_arm()
        bad, good = jobs["alexnet"], jobs["custom_cnn"]
        emulator.pod_phase(bad, 0, "Failed", exit_code=2, init=True)
        emulator.job_status(
            bad,
            failed=1,
            failedIndexes="0",
            conditions=[
                {"type": "FailureTarget", "status": "True", "reason": "FailedIndexes"},
                {"type": "Failed", "status": "True", "reason": "FailedIndexes", "message": "Job has failed indexes"},
            ],
        )
        add_trials(stores["optuna"], study_of(emulator, good), launch.exp, "custom_cnn", [TrialState.COMPLETE] * 2)
        emulator.job_status(good, succeeded=3, conditions=[{"type": "Complete", "status": "True"}])

    with pytest.raises(SweepJobFailed) as failure:
        launch([start, fail_one_arm], show_progress=False)
    message = str(failure.value)
    assert "arm alexnet" in message and "FailedIndexes: Job has failed indexes (failed indexes 0)" in message
    assert re.search(r"pod sweep-fume-hood-alexnet-\w+-0-abcde container create-study: exit code 2", message)
    assert "prepared data data/prepared/fume_hood is missing" in message, "the failing container's log tail"
    assert "custom_cnn" not in message
    assert emulator.names("jobs") == emulator.names("configmaps") == set()

    mlflow.set_tracking_uri(launch.settings.resolved_tracking_uri)
    status = {arm: mlflow.get_run(run_id).info.status for arm, run_id in parent_runs(emulator).items()}
    assert status == {"alexnet": "FAILED", "custom_cnn": "FINISHED"}


def test_interrupt_deletes_the_jobs(emulator, launch):
    import mlflow

    def interrupt():
        assert len(emulator.names("jobs")) == 2
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        launch([interrupt], show_progress=False)
    assert emulator.names("jobs") == emulator.names("configmaps") == set()
    mlflow.set_tracking_uri(launch.settings.resolved_tracking_uri)
    assert {mlflow.get_run(run_id).info.status for run_id in parent_runs(emulator).values()} == {"KILLED"}


def test_rerun_follows_a_running_job_and_replaces_a_finished_one(emulator, launch, stores):
    """A launcher interrupted and started again: a Job still running is followed, not submitted twice."""
    plans = {
        p.arm: p
        for p in plan_sweeps(
            "fume_hood", launch.params, launch.exp, Path("data/prepared/fume_hood"), Path("raw/fume_hood"),
            Path("validation.json"),
        )
    }  # fmt: skip
    for arm, conditions in (("custom_cnn", []), ("alexnet", [{"type": "Failed", "status": "True"}])):
        leftover = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": plans[arm].name, "namespace": NAMESPACE, "labels": plans[arm].labels},
            "spec": {
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "x"}]}}
            },
        }
        emulator.batch.create_namespaced_job(NAMESPACE, leftover)
        emulator.job_status(plans[arm].name, active=1, conditions=conditions)

    def finish():
        for arm, job in emulator.jobs_by_arm().items():
            add_trials(stores["optuna"], study_of(emulator, job), launch.exp, arm, [TrialState.COMPLETE] * 2)
            emulator.job_status(job, active=0, succeeded=3, conditions=[{"type": "Complete", "status": "True"}])

    results = launch([finish], show_progress=False)
    assert set(results) == {"custom_cnn", "alexnet"}
    posted = [r.data["metadata"]["name"] for r in emulator.requests("POST", r"/jobs$")]
    assert posted.count(plans["alexnet"].name) == 2, "the finished leftover was deleted and submitted anew"
    assert posted.count(plans["custom_cnn"].name) == 1, "the running Job was adopted, not submitted again"


def test_dry_run_prints_valid_yaml_and_needs_no_cluster(project_dir, tmp_path, monkeypatch):
    """`mlops sweep ... --backend kubernetes --dry-run`: no cluster, no database, no MLflow."""
    from typer.testing import CliRunner

    from mlops.cli import app

    monkeypatch.chdir(project_dir)
    for key in ("MLOPS_OPTUNA_STORAGE", "MLOPS_TRACKING_URI", "KUBECONFIG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLOPS_K8S_JOB_TEMPLATE", str(ROOT / "k8s" / "sweep" / "worker-job.yaml"))
    params = write_params(tmp_path, {**tiny_params(), "cluster": CLUSTER})
    args = ["sweep", "fume_hood", "--data", "data/prepared/fume_hood", "--raw", "raw/fume_hood"]
    args += ["--validation", "validation.json", "--out", str(tmp_path / "best.json"), "--params", str(params)]
    result = CliRunner().invoke(app, [*args, "--backend", "kubernetes", "--dry-run"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job", "ConfigMap", "Job"]
    for doc in docs:
        validate(doc)
    assert not (tmp_path / "best.json").exists() and not (tmp_path / "home" / "mlflow.db").exists()
    assert CliRunner().invoke(app, [*args, "--dry-run"]).exit_code == 2, "--dry-run needs --backend kubernetes"
    # the default image is the moving mlops:latest: said on stderr; a commit-tagged image passes quietly
    warned = " ".join(result.stderr.split())
    assert "mlops:latest is a moving tag" in warned and "MLOPS_K8S_IMAGE" in warned, result.stderr
    monkeypatch.setenv("MLOPS_K8S_IMAGE", "registry.example/mlops:3f2a9c1")
    pinned = CliRunner().invoke(app, [*args, "--backend", "kubernetes", "--dry-run"])
    assert pinned.exit_code == 0 and "moving tag" not in pinned.stderr, pinned.stderr
    assert [
        d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in yaml.safe_load_all(pinned.stdout)
        if d and d["kind"] == "Job"
    ] == ["registry.example/mlops:3f2a9c1"] * 2


@pytest.mark.parametrize(
    ("image", "moving"),
    [
        ("mlops:latest", True),
        ("mlops", True),
        ("registry.example:5000/team/mlops", True),  # the port's colon is not a tag
        ("registry.example:5000/team/mlops:latest", True),
        ("registry.example:5000/team/mlops:3f2a9c1", False),
        ("mlops@sha256:" + "0" * 64, False),
    ],
)
def test_an_image_that_cannot_pin_the_pods_code_is_named(image, moving):
    from mlops.tuning.kubernetes import image_warning

    warning = image_warning(image)
    assert (warning is not None) == moving
    if moving:
        assert image in warning and "MLOPS_K8S_IMAGE" in warning


def test_cluster_mode_refuses_stores_pods_cannot_reach(launch, tmp_path, monkeypatch):
    journal = launch.settings.model_copy(update={"optuna_storage": f"journal:{tmp_path / 'j.log'}"})
    with pytest.raises(ValueError, match="MLOPS_OPTUNA_STORAGE"):
        run_kubernetes_sweeps(
            "fume_hood", launch.params, launch.exp, journal, Path("data/prepared/fume_hood"), Path("raw/fume_hood"),
            Path("validation.json"), cluster=ClusterParams(**CLUSTER),
        )  # fmt: skip
    sqlite = launch.settings.model_copy(update={"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"})
    with pytest.raises(ValueError, match="MLOPS_TRACKING_URI"):
        run_kubernetes_sweeps(
            "fume_hood", launch.params, launch.exp, sqlite, Path("data/prepared/fume_hood"), Path("raw/fume_hood"),
            Path("validation.json"), cluster=ClusterParams(**CLUSTER),
        )  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConnectionError, match="no Kubernetes cluster configured"):
        make_api_client(launch.settings)
