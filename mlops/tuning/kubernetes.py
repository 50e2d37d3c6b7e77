"""Sweeps as Kubernetes Jobs: ``mlops sweep TASK --backend kubernetes``.

Per arm of the experiment, one Indexed Job (``k8s/sweep/worker-job.yaml`` filled in from params.yaml
``cluster.sweep`` and the settings) and one ConfigMap holding the params and experiment the study was
named from, so pods run exactly that configuration whatever the image holds. Each Job index is a
worker (``python -m mlops.tuning.worker run``) sharing the arm's study in PostgreSQL.

The launcher opens the studies and the MLflow parent runs, submits both objects with the official
client, follows the Jobs (their pods; complete / pruned / failed trials read from the study) with a
progress bar, deletes them, and summarises each arm exactly like a local sweep. It needs the cluster
(kubeconfig), the study database and the MLflow server, all reachable from where it runs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, TextIO

import yaml
from pydantic import Field, field_validator, model_validator

from mlops.config import ConfigError, Experiment, Strict
from mlops.params import Params, parse_section
from mlops.settings import Settings
from mlops.tracking.lineage import TAG, lineage_tags
from mlops.tuning.storage import is_server_database
from mlops.tuning.sweep import FINISHED, SweepJob, SweepResult, study_name_for
from mlops.tuning.worker import JOB_ENV

WORKER_CONTAINER = "worker"
CONFIG_VOLUME = "sweep-config"
LABEL = "mlops.dev/"
#: label the Job controller puts on its pods (and the older spelling, for clusters before 1.27)
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
GPU_RESOURCE = "nvidia.com/gpu"
_CPU = re.compile(r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$")
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")


# --- params.yaml `cluster` ------------------------------------------------------------------------


class ClusterSweepParams(Strict):
    """params.yaml ``cluster.sweep``: the shape of each arm's worker Job."""

    #: Job indexes; each is one worker running trials until the study's budget is spent
    completions: Annotated[int, Field(ge=1, le=1000)]
    #: pods at once (<= completions): how many GPUs one sweep holds
    parallelism: Annotated[int, Field(ge=1, le=1000)]
    gpus_per_pod: Annotated[int, Field(ge=0, le=16)]
    cpu: str
    memory: str
    #: pod failures (crash, OOM kill; not preemption) retried per index
    backoff_limit_per_index: Annotated[int, Field(ge=0, le=100)]
    #: failed indexes tolerated before the whole Job fails
    max_failed_indexes: Annotated[int, Field(ge=0)]
    active_deadline_seconds: Annotated[int, Field(ge=60)]

    @field_validator("cpu")
    @classmethod
    def _cpu_quantity(cls, value: str) -> str:
        if not _CPU.match(value):
            raise ValueError(f"a CPU quantity such as '4' or '500m', got {value!r}")
        return value

    @field_validator("memory")
    @classmethod
    def _memory_quantity(cls, value: str) -> str:
        if not _MEMORY.match(value):
            raise ValueError(f"a memory quantity such as '16Gi', got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSweepParams:
        if self.parallelism > self.completions:
            raise ValueError(f"parallelism {self.parallelism} exceeds completions {self.completions}")
        if self.max_failed_indexes > self.completions:
            raise ValueError(f"max_failed_indexes {self.max_failed_indexes} exceeds completions {self.completions}")
        return self


class ClusterParams(Strict):
    """params.yaml ``cluster``."""

    sweep: ClusterSweepParams


def cluster_params(params: Params) -> ClusterParams:
    """The typed ``cluster`` section of params.yaml (an error that names the key when it is wrong)."""
    raw = params.raw.get("cluster")
    if raw is None:
        raise ConfigError(f"{params.path}: missing section cluster (cluster.sweep shapes the Kubernetes Jobs)")
    return parse_section(ClusterParams, raw, params.path, "cluster")


# --- planning and rendering -----------------------------------------------------------------------


@dataclass(frozen=True)
class ArmPlan:
    """One arm's Job: its study, Kubernetes name and labels, and the SweepJob its pods get."""

    arm: str
    study_name: str
    name: str
    labels: dict[str, str]
    job: SweepJob


def k8s_name(study_name: str) -> str:
    """A DNS-1123 name for the Job and ConfigMap of a study.

    At most 52 characters: pods are named ``<job>-<index>-<5 random>`` and must stay within 63.
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", study_name.lower()).strip("-")
    name = f"sweep-{slug}"
    if len(name) > 52:
        digest = hashlib.sha256(study_name.encode()).hexdigest()[:8]
        name = f"{name[:43].rstrip('-')}-{digest}"
    return name


def _label_value(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.") or "none"


def plan_sweeps(
    task: str,
    params: Params,
    exp: Experiment,
    prepared_dir: Path,
    raw_dir: Path,
    validation_report: Path,
) -> list[ArmPlan]:
    """One plan per arm; lineage is computed here, where git and the validation report are."""
    for path in (prepared_dir, raw_dir, validation_report):
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise ValueError(
                f"{path}: give paths relative to the project root (as dvc.yaml does); pods find the "
                "data at the same relative path on the data volume"
            )
    plans = []
    for arm in exp.arms:
        study = study_name_for(task, arm, exp, params, prepared_dir)
        tags = lineage_tags(task, raw_dir, prepared_dir, params.digest(task), validation_report, study)
        job = SweepJob(
            task=task,
            arm=arm,
            study_name=study,
            storage_url="",  # pods read it from the Secret (MLOPS_OPTUNA_STORAGE), never from the spec
            prepared_dir=Path(prepared_dir).as_posix(),
            raw_dir=Path(raw_dir).as_posix(),
            validation_report=Path(validation_report).as_posix(),
            parent_run_id="",
            params_path="",
            experiments_dir="",
            seed=params.base.seed,
            lineage=tags,
        )
        labels = {
            "app.kubernetes.io/name": "mlops",
            "app.kubernetes.io/component": "sweep-worker",
            f"{LABEL}task": _label_value(task),
            f"{LABEL}arm": _label_value(arm),
            f"{LABEL}study": _label_value(study),
        }
        plans.append(ArmPlan(arm=arm, study_name=study, name=k8s_name(study), labels=labels, job=job))
    return plans


def load_template(path: Path) -> dict[str, Any]:
    """The Job template, as plain data (YAML anchors become independent copies)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: the sweep Job template (MLOPS_K8S_JOB_TEMPLATE); run from the project root")
    return json.loads(json.dumps(yaml.safe_load(Path(path).read_text())))


def _container(pod: dict, name: str) -> dict:
    for container in pod.get("containers", []):
        if container["name"] == name:
            return container
    raise ValueError(f"the Job template has no container named {name!r}")


def _mount_dir(container: dict, volume: str) -> PurePosixPath:
    """Where ``volume`` is mounted, relative to the container's working directory."""
    workdir = PurePosixPath(container.get("workingDir", "/"))
    for mount in container.get("volumeMounts", []):
        if mount["name"] == volume:
            return PurePosixPath(mount["mountPath"]).relative_to(workdir)
    raise ValueError(f"the Job template mounts no volume {volume!r} in container {container['name']!r}")


def _require_mounted(path: str, container: dict) -> None:
    mounts = [_mount_dir(container, m["name"]) for m in container.get("volumeMounts", [])]
    if not any(PurePosixPath(path).is_relative_to(m) for m in mounts):
        raise ValueError(
            f"{path} is on no volume of the worker pod (mounted: {[str(m) for m in mounts]}); "
            "put the prepared data under data/ on the sweep-data volume"
        )


def _set_env(container: dict, name: str, value: str) -> None:
    for var in container.setdefault("env", []):
        if var["name"] == name:
            var.clear()
            var.update(name=name, value=value)
            return
    container["env"].append({"name": name, "value": value})


def render(
    plan: ArmPlan,
    cluster: ClusterSweepParams,
    settings: Settings,
    template: dict[str, Any],
    params_text: str,
    experiment_text: str,
) -> list[dict[str, Any]]:
    """The ConfigMap and the Job of one arm, as plain data ready for the API or ``yaml.dump``."""
    job = copy.deepcopy(template)
    namespace = settings.k8s_namespace
    job["metadata"].update(name=plan.name, namespace=namespace)
    job["metadata"].setdefault("labels", {}).update(plan.labels)
    spec = job["spec"]
    spec.update(
        completions=cluster.completions,
        parallelism=cluster.parallelism,
        backoffLimitPerIndex=cluster.backoff_limit_per_index,
        maxFailedIndexes=cluster.max_failed_indexes,
        activeDeadlineSeconds=cluster.active_deadline_seconds,
    )
    spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(plan.labels)
    pod = spec["template"]["spec"]
    worker = _container(pod, WORKER_CONTAINER)
    config_dir = _mount_dir(worker, CONFIG_VOLUME)
    _require_mounted(plan.job.prepared_dir, worker)
    pod_job = dataclasses.replace(
        plan.job, params_path=str(config_dir / "params.yaml"), experiments_dir=str(config_dir / "experiments")
    )
    job_json = json.dumps(dataclasses.asdict(pod_job), sort_keys=True)
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        container["image"] = settings.k8s_image
        _set_env(container, JOB_ENV, job_json)

    resources = worker.setdefault("resources", {})
    requests, limits = resources.setdefault("requests", {}), resources.setdefault("limits", {})
    requests.update(cpu=cluster.cpu, memory=cluster.memory)
    limits.update(cpu=cluster.cpu, memory=cluster.memory)
    requests.pop(GPU_RESOURCE, None)  # an extended resource's request defaults to its limit
    if cluster.gpus_per_pod:
        limits[GPU_RESOURCE] = str(cluster.gpus_per_pod)  # a quantity: a string, as the API expects
    else:  # CPU-only cluster (dev overlay): no GPU limit, and no pinning to GPU nodes
        limits.pop(GPU_RESOURCE, None)
        selector = {k: v for k, v in pod.get("nodeSelector", {}).items() if not k.startswith("nvidia.com/")}
        tolerations = [t for t in pod.get("tolerations", []) if not str(t.get("key", "")).startswith("nvidia.com/")]
        for key, value in (("nodeSelector", selector), ("tolerations", tolerations)):
            if value:
                pod[key] = value
            else:
                pod.pop(key, None)

    for volume in pod.get("volumes", []):
        if volume["name"] == CONFIG_VOLUME:
            volume["configMap"] = {
                "name": plan.name,
                "items": [
                    {"key": "params.yaml", "path": "params.yaml"},
                    {"key": "experiment.yaml", "path": f"experiments/{plan.job.task}.yaml"},
                ],
            }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": plan.name, "namespace": namespace, "labels": dict(plan.labels)},
        "data": {"params.yaml": params_text, "experiment.yaml": experiment_text},
    }
    return [config_map, job]


def image_warning(image: str) -> str | None:
    """Why ``image`` cannot pin the code the pods run, or None when it is pinned (a digest or an explicit tag).

    The lineage tags name the submitting checkout's commit; a pod runs the code of whatever the image reference
    resolves to when its node pulls it. ``:latest`` (explicit or implied by no tag) moves with every push, so two
    pods of one sweep, or a rerun, may run different code under the same commit tag."""
    if "@sha256:" in image:
        return None
    name = image.rsplit("/", 1)[-1]
    tag = name.split(":", 1)[1] if ":" in name else None
    if tag not in (None, "latest"):
        return None
    said = f"{image} (no tag: Kubernetes pulls :latest)" if tag is None else image
    return (
        f"the sweep image {said} is a moving tag: pods run whatever it points at when they start, not necessarily "
        "this checkout's commit that the runs' lineage tags name. Build and push an image tagged with the commit "
        "(or by digest) and set MLOPS_K8S_IMAGE to it."
    )


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's files) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """Objects as a multi-document YAML stream (what ``kubectl apply -f -`` reads)."""
    return yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False)


# --- the cluster ----------------------------------------------------------------------------------


def make_api_client(settings: Settings):
    """An official-client ApiClient from the kubeconfig (context ``MLOPS_K8S_CONTEXT``) or, in a pod, in-cluster."""
    from kubernetes import client, config

    try:
        return config.new_client_from_config(context=settings.k8s_context)
    except (config.ConfigException, FileNotFoundError, TypeError) as exc:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise ConnectionError(
                f"no Kubernetes cluster configured ({exc}): set KUBECONFIG or ~/.kube/config, "
                "and MLOPS_K8S_CONTEXT to pick a context"
            ) from exc
        return client.ApiClient()


@dataclass
class JobStatus:
    """What the launcher knows of one arm's Job."""

    name: str
    state: str = "pending"  # pending | running | complete | failed
    reason: str = ""
    message: str = ""
    succeeded: int = 0
    failed: int = 0
    failed_indexes: str = ""
    pods: Counter = field(default_factory=Counter)

    @property
    def done(self) -> bool:
        return self.state in ("complete", "failed")


def _job_pods(core, namespace: str, name: str) -> list:
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABELS[0]}={name}").items
    # The selector already does this on a real API server; filtering again costs nothing.
    return [p for p in pods if any((p.metadata.labels or {}).get(k) == name for k in JOB_NAME_LABELS)]


def read_status(batch, core, namespace: str, name: str) -> JobStatus:
    """The Job's conditions and counters, and its pods by phase."""
    from kubernetes import client

    status = batch.read_namespaced_job_status(name, namespace).status or client.V1JobStatus()
    result = JobStatus(
        name=name,
        succeeded=status.succeeded or 0,
        failed=status.failed or 0,
        failed_indexes=status.failed_indexes or "",
    )
    conditions = {c.type: c for c in status.conditions or [] if c.status == "True"}
    # Complete/Failed are final; SuccessCriteriaMet/FailureTarget come first while pods terminate.
    for kind, state in (("Failed", "failed"), ("Complete", "complete")):
        if kind in conditions:
            result.state, result.reason, result.message = (
                state,
                conditions[kind].reason or "",
                conditions[kind].message or "",
            )
            break
    else:
        result.state = "running" if (status.active or status.succeeded or status.failed) else "pending"
    result.pods = Counter(p.status.phase if p.status else "Unknown" for p in _job_pods(core, namespace, name))
    return result


def failure_report(core, namespace: str, name: str, tail_lines: int = 15) -> list[str]:
    """Per failed pod: which container ended how (exit code, reason) and the tail of its log."""
    lines = []
    for pod in _job_pods(core, namespace, name):
        if not pod.status or pod.status.phase != "Failed":
            continue
        statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
        for cs in statuses:
            term = cs.state.terminated if cs.state else None
            if term is None or term.exit_code == 0:
                continue
            lines.append(f"pod {pod.metadata.name} container {cs.name}: exit code {term.exit_code} ({term.reason})")
            try:  # raw bytes: the client's own decoding of plain text differs between versions
                raw = core.read_namespaced_pod_log(
                    pod.metadata.name, namespace, container=cs.name, tail_lines=tail_lines, _preload_content=False
                )
                log = raw.data.decode("utf-8", "replace")
            except Exception as exc:  # the log is a courtesy: the pod may be gone already
                log = f"(no log: {exc.__class__.__name__})"
            lines.extend(f"    {line}" for line in log.splitlines()[-tail_lines:])
    return lines


def _is_finished(job) -> bool:
    conditions = (job.status.conditions if job.status else None) or []
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)


def submit(api_client, objects: list[dict[str, Any]], sleep: Callable[[float], None] = time.sleep) -> str:
    """Create the ConfigMap and the Job; returns 'created', or 'adopted' when the Job already runs.

    A rerun while the Job still runs (the launcher was interrupted) follows it; a finished Job left
    from an earlier run is deleted and created anew.
    """
    from kubernetes import client

    config_map, job = objects
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    try:
        existing = batch.read_namespaced_job(name, namespace)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        existing = None
    if existing is not None:
        if not _is_finished(existing):
            return "adopted"
        delete(api_client, namespace, name)
        for _ in range(60):  # deletion of a finished Job is quick but not instant
            try:
                batch.read_namespaced_job(name, namespace)
            except client.ApiException as exc:
                if exc.status == 404:
                    break
                raise
            sleep(1.0)
    try:
        core.create_namespaced_config_map(namespace, config_map)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        core.delete_namespaced_config_map(name, namespace)
        core.create_namespaced_config_map(namespace, config_map)
    batch.create_namespaced_job(namespace, job)
    return "created"


def delete(api_client, namespace: str, name: str) -> None:
    """Delete the Job (its pods with it) and its ConfigMap; what is gone already is fine."""
    from kubernetes import client

    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    for call in (
        lambda: batch.delete_namespaced_job(name, namespace, propagation_policy="Background"),
        lambda: core.delete_namespaced_config_map(name, namespace),
    ):
        try:
            call()
        except client.ApiException as exc:
            if exc.status != 404:
                raise


# --- following -----------------------------------------------------------------------------------


def trial_counts(study) -> dict[str, Any]:
    """Trials of the study by state, and the best value so far."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    values = [t.value for t in trials if t.state == TrialState.COMPLETE]
    return {
        "finished": sum(states[s] for s in FINISHED),
        "complete": states[TrialState.COMPLETE],
        "pruned": states[TrialState.PRUNED],
        "failed": states[TrialState.FAIL],
        "running": states[TrialState.RUNNING],
        "values": values,
    }


def follow(
    api_client,
    namespace: str,
    plans: list[ArmPlan],
    studies: dict[str, Any],
    exp: Experiment,
    show_progress: bool = True,
    poll_seconds: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    max_api_errors: int = 5,
) -> dict[str, JobStatus]:
    """Poll the Jobs and studies until every Job is complete or failed; one progress row per arm."""
    from kubernetes import client
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    pick = max if exp.objective.direction == "maximize" else min
    statuses = {plan.arm: JobStatus(plan.name) for plan in plans}
    columns = (
        TextColumn("{task.fields[arm]}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    errors = 0
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 200  # a log (CI, dvc): keep the whole status line rather than 80 columns of it
    with Progress(*columns, console=console, disable=not show_progress) as progress:
        bars = {
            plan.arm: progress.add_task(plan.arm, total=exp.budget.n_trials, arm=plan.arm, info="") for plan in plans
        }
        while True:
            try:
                for plan in plans:
                    if statuses[plan.arm].done:
                        continue
                    status = statuses[plan.arm] = read_status(batch, core, namespace, plan.name)
                    counts = trial_counts(studies[plan.arm])
                    best = f", best {exp.objective.metric}={pick(counts['values']):.4f}" if counts["values"] else ""
                    pods = ", ".join(f"{n} {phase.lower()}" for phase, n in sorted(status.pods.items())) or "none yet"
                    info = (
                        f"job {status.state}; pods: {pods}; trials: {counts['complete']} complete, "
                        f"{counts['pruned']} pruned, {counts['failed']} failed, {counts['running']} running{best}"
                    )
                    progress.update(bars[plan.arm], completed=min(counts["finished"], exp.budget.n_trials), info=info)
                errors = 0
            except client.ApiException as exc:
                if exc.status in (401, 403, 404):  # gone or forbidden: polling again will not help
                    raise
                errors += 1
                if errors > max_api_errors:
                    raise
            if all(s.done for s in statuses.values()):
                return statuses
            sleep(poll_seconds)


# --- the whole run -------------------------------------------------------------------------------


def _cleanup(api_client, namespace: str, plans: list[ArmPlan]) -> None:
    """Delete every arm's objects; a failure to delete one is reported, not raised over the real error."""
    for plan in plans:
        try:
            delete(api_client, namespace, plan.name)
        except Exception as exc:
            print(
                f"warning: could not delete Job/ConfigMap {namespace}/{plan.name} ({exc}); "
                f"delete them with: kubectl -n {namespace} delete job,configmap {plan.name}",
                file=sys.stderr,
            )


class SweepJobFailed(RuntimeError):
    """A sweep Job failed on the cluster; the message says which pods failed how."""


def _require_shared_stores(settings: Settings) -> None:
    if not is_server_database(settings.resolved_optuna_storage):
        raise ValueError(
            "cluster mode shares each study in PostgreSQL: set MLOPS_OPTUNA_STORAGE to the cluster's database "
            "(e.g. `kubectl -n mlops port-forward svc/postgres 5432` and "
            "postgresql+psycopg2://mlops:PASSWORD@127.0.0.1:5432/optuna)"
        )
    uri = settings.resolved_tracking_uri
    if not uri.startswith(("http://", "https://", "postgresql", "mysql")):
        raise ValueError(
            f"cluster mode: pods cannot reach the tracking store {uri}; set MLOPS_TRACKING_URI to the "
            "cluster's MLflow server (its Ingress, or `kubectl -n mlops port-forward svc/mlflow 5000`)"
        )


def _parent_run(settings: Settings, task: str, plan: ArmPlan, namespace: str) -> str:
    """Find (a rerun) or create the arm's MLflow parent run; it stays RUNNING while the Job runs."""
    import mlflow

    from mlops.tracking.runs import experiment_id
    from mlops.tuning.sweep import find_parent_run

    exp_id = experiment_id(settings, task)
    client = mlflow.MlflowClient()
    found = find_parent_run(exp_id, plan.study_name)
    if found is not None:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    tags = {
        **(plan.job.lineage or {}),
        f"{TAG}run_kind": "sweep",
        f"{TAG}arm": plan.arm,
        f"{TAG}backend": "kubernetes",
        f"{TAG}k8s.job": f"{namespace}/{plan.name}",
    }
    return client.create_run(exp_id, run_name=f"sweep-{plan.study_name}", tags=tags).info.run_id


def run_kubernetes_sweeps(
    task: str,
    params: Params,
    exp: Experiment,
    settings: Settings,
    prepared_dir: Path,
    raw_dir: Path,
    validation_report: Path,
    experiments_dir: Path = Path("experiments"),
    *,
    cluster: ClusterParams | None = None,
    dry_run: bool = False,
    out: TextIO | None = None,
    show_progress: bool = True,
    api_client=None,
    poll_seconds: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    keep: bool = False,
) -> dict[str, SweepResult]:
    """Sweep every arm of the experiment as a Kubernetes Job; results as from a local sweep.

    ``dry_run`` writes the YAML of every ConfigMap and Job to ``out`` (stdout) and touches nothing:
    no cluster, database or MLflow is needed, and the pods' parent run id is left empty. ``keep``
    leaves the Jobs (and their pods' logs) on the cluster instead of deleting them.
    """
    import mlflow

    from mlops.tracking.runs import connect
    from mlops.tuning.sweep import link_parent_run, open_study, summarize_study

    cluster = cluster or cluster_params(params)
    template = load_template(settings.k8s_job_template)
    params_text = Path(params.path).read_text()
    experiment_text = (Path(experiments_dir) / f"{task}.yaml").read_text()
    plans = plan_sweeps(task, params, exp, prepared_dir, raw_dir, validation_report)

    def rendered(plan: ArmPlan) -> list[dict[str, Any]]:
        return render(plan, cluster.sweep, settings, template, params_text, experiment_text)

    if dry_run:
        (out or sys.stdout).write(to_yaml([obj for plan in plans for obj in rendered(plan)]))
        return {}

    _require_shared_stores(settings)
    api_client = api_client or make_api_client(settings)  # before any run exists that could be orphaned
    connect(settings)
    namespace = settings.k8s_namespace
    plans = [
        dataclasses.replace(
            plan, job=dataclasses.replace(plan.job, parent_run_id=_parent_run(settings, task, plan, namespace))
        )
        for plan in plans
    ]
    studies = {
        plan.arm: open_study(
            dataclasses.replace(plan.job, storage_url=settings.resolved_optuna_storage), exp, plan.job.seed, settings
        )
        for plan in plans
    }
    for plan in plans:  # the dashboard's way from a study to its MLflow parent run
        link_parent_run(studies[plan.arm], plan.job.parent_run_id)
    finished_ok = False
    try:
        for plan in plans:
            how = submit(api_client, rendered(plan), sleep=sleep)
            print(f"{how} Job {namespace}/{plan.name} (arm {plan.arm}, study {plan.study_name})", file=sys.stderr)
        statuses = follow(api_client, namespace, plans, studies, exp, show_progress, poll_seconds, sleep)
        from kubernetes import client

        core = client.CoreV1Api(api_client)
        failures = {
            plan.arm: failure_report(core, namespace, plan.name)
            for plan in plans
            if statuses[plan.arm].state == "failed"
        }
        finished_ok = True
    finally:
        if not finished_ok:  # interrupted or the API failed: the parent runs did not finish
            with contextlib.suppress(Exception):  # never hide the real error behind a tracking one
                for plan in plans:
                    mlflow.MlflowClient().set_terminated(plan.job.parent_run_id, "KILLED")
        if not keep:
            _cleanup(api_client, namespace, plans)

    results: dict[str, SweepResult] = {}
    for plan in plans:
        if plan.arm in failures:
            mlflow.MlflowClient().set_terminated(plan.job.parent_run_id, "FAILED")
            continue
        mlflow.start_run(run_id=plan.job.parent_run_id)
        try:
            results[plan.arm] = summarize_study(studies[plan.arm], exp, plan.arm, plan.job.parent_run_id)
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run("FINISHED")
    if failures:
        lines = []
        for plan in plans:
            if plan.arm in failures:
                s = statuses[plan.arm]
                lines.append(
                    f"arm {plan.arm}: Job {namespace}/{plan.name} failed: {s.reason}: {s.message}"
                    + (f" (failed indexes {s.failed_indexes})" if s.failed_indexes else "")
                )
                lines.extend(failures[plan.arm])
        raise SweepJobFailed("\n".join(lines))
    return results
