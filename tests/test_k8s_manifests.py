"""Every Kubernetes manifest and every rendered sweep Job, validated strictly, plus our own rules.

kubernetes-validate checks each object against the OpenAPI schema of a Kubernetes release in strict
mode (an unknown or misplaced field is an error). No API server is involved and nothing is applied
to a cluster: no cluster is reachable from here. The overlays are built with ``kubectl kustomize``,
which runs offline.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mlops.settings import Settings
from mlops.tuning.kubernetes import (
    CONFIG_VOLUME,
    GPU_RESOURCE,
    ClusterSweepParams,
    load_template,
    plan_sweeps,
    render,
    to_yaml,
)
from mlops.tuning.sweep import SweepJob
from mlops.tuning.worker import JOB_ENV, NON_RETRIABLE_EXIT
from tests.conftest import ROOT, tiny_experiment, tiny_params, write_params

K8S = ROOT / "k8s"
#: the oldest release with every field we use GA (backoffLimitPerIndex), and the newest known
VERSIONS = ("1.33.0", kubernetes_validate.latest_version())
CLUSTER = {
    "sweep": {
        "completions": 3,
        "parallelism": 2,
        "gpus_per_pod": 1,
        "cpu": "2",
        "memory": "4Gi",
        "backoff_limit_per_index": 3,
        "max_failed_indexes": 1,
        "active_deadline_seconds": 3600,
    }
}


def kubectl() -> str:
    """kubectl with kustomize v5 (./test.sh installs it where missing): its absence fails, it never skips."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is needed to build the kustomize overlays (apt-get install kubectl; ./test.sh tries)")
    out = subprocess.run([found, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
    minor = int(re.sub(r"\D", "", json.loads(out.stdout or "{}").get("clientVersion", {}).get("minor", "0")) or 0)
    if minor < 27:
        pytest.fail(f"{found} is kubectl 1.{minor}; the overlays need 1.27+ (kustomize v5: `labels`, inline patches)")
    return found


def validate_strictly(obj: dict) -> None:
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            raise AssertionError(f"{name} invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}") from exc


def pod_specs(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return [spec["template"]["spec"]]
    if obj["kind"] == "Pod":
        return [spec]
    return []


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def rule_problems(objects: list[dict]) -> list[str]:
    """Our own rules, on top of the schema."""
    problems = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        for pod in pod_specs(obj):
            for c in containers(pod):
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    missing = {"cpu", "memory"} - set(res.get(part, {}))
                    if missing:
                        problems.append(f"{name} container {c['name']}: no {part} for {sorted(missing)}")
                for part in ("requests", "limits"):
                    for key, value in res.get(part, {}).items():
                        if key == GPU_RESOURCE and not isinstance(value, str):
                            problems.append(f"{name} container {c['name']}: {key} {part} {value!r} is not a string")
                if obj["kind"] == "Deployment" and c.get("ports"):  # it serves: the kubelet must know when
                    for probe in ("readinessProbe", "livenessProbe"):
                        if probe not in c:
                            problems.append(f"{name} container {c['name']}: serves without a {probe}")
        if obj["kind"] == "Job":
            spec = obj["spec"]
            pod = spec["template"]["spec"]
            if pod.get("restartPolicy") != "Never":
                problems.append(f"{name}: restartPolicy must be Never (retries are per index, by the Job)")
            if spec.get("completionMode") != "Indexed" or "backoffLimitPerIndex" not in spec:
                problems.append(f"{name}: must be Indexed with backoffLimitPerIndex")
            rules = spec.get("podFailurePolicy", {}).get("rules", [])
            ignores = [r for r in rules if r["action"] == "Ignore"]
            if not any(c["type"] == "DisruptionTarget" for r in ignores for c in r.get("onPodConditions", [])):
                problems.append(f"{name}: disruptions (preemption) must not count as failures")
            fail_index = [r for r in rules if r["action"] == "FailIndex"]
            if not any(NON_RETRIABLE_EXIT in r.get("onExitCodes", {}).get("values", []) for r in fail_index):
                problems.append(f"{name}: exit code {NON_RETRIABLE_EXIT} must fail the index at once")
            gpus = [c for c in pod["containers"] if GPU_RESOURCE in c.get("resources", {}).get("limits", {})]
            if gpus and not (pod.get("nodeSelector") and pod.get("tolerations")):
                problems.append(f"{name}: GPU pods need the GPU nodeSelector and tolerations")
    return problems


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_is_valid_and_follows_the_rules(path):
    objects = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert objects, f"{path} holds no object"
    for obj in objects:
        validate_strictly(obj)
    assert rule_problems(objects) == []


def kustomize(target: str) -> list[dict]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("target", ["base", "overlays/dev", "overlays/gpu"])
def test_kustomize_builds_are_valid_and_consistent(target):
    objects = kustomize(target)
    for obj in objects:
        validate_strictly(obj)
    assert rule_problems(objects) == []
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "mlops", f"{obj['kind']}/{obj['metadata']['name']}"
    assert {"postgres", "mlflow", "serving"} <= set(by_kind["Service"])
    assert set(by_kind["StatefulSet"]) == {"postgres"}
    assert set(by_kind["Deployment"]) == {"mlflow", "serving", "redis"}
    assert set(by_kind["PersistentVolumeClaim"]) == {"mlflow-artifacts", "sweep-data", "sweep-checkpoints"}
    assert by_kind["HorizontalPodAutoscaler"]["serving"]["spec"]["scaleTargetRef"]["name"] in by_kind["Deployment"]
    assert "Ingress" in by_kind
    # MLflow (no authentication of its own) stays inside the cluster; the service shares its rate limits in Redis
    # and finds its own tables (keys, request log, release history) in PostgreSQL.
    published = {p["backend"]["service"]["name"] for r in by_kind["Ingress"]["mlops"]["spec"]["rules"]
                 for p in r["http"]["paths"]}  # fmt: skip
    assert published == {"serving"}
    env = {e["name"]: e for e in by_kind["Deployment"]["serving"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLOPS_REDIS_URL"]["value"].startswith("redis://redis:")
    for name in ("MLOPS_SERVICE_DB_URI", "MLOPS_HISTORY_URI"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "mlops-db"

    # Services select pods that exist; claims and config maps that pods use exist.
    pods = {f"{o['kind']}/{n}": o for k in ("Deployment", "StatefulSet") for n, o in by_kind[k].items()}
    for svc in by_kind["Service"].values():
        selector = svc["spec"]["selector"].items()
        assert any(selector <= o["spec"]["template"]["metadata"]["labels"].items() for o in pods.values()), svc
    for obj in pods.values():
        for vol in obj["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in by_kind["PersistentVolumeClaim"]
            if "configMap" in vol:
                assert vol["configMap"]["name"] in by_kind["ConfigMap"]

    # The serving container: probes on the app's routes, OMP threads = its CPU limit.
    serving = by_kind["Deployment"]["serving"]["spec"]["template"]["spec"]["containers"][0]
    assert serving["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert serving["livenessProbe"]["httpGet"]["path"] == "/healthz"
    omp = env_of(serving)["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert omp["resource"] == "limits.cpu" and omp["containerName"] == serving["name"]
    assert "--host" in serving["command"] and "0.0.0.0" in serving["command"]
    scrape = by_kind["Deployment"]["serving"]["spec"]["template"]["metadata"]["annotations"]
    assert scrape["prometheus.io/path"] == "/metrics" and scrape["prometheus.io/scrape"] == "true"
    assert int(scrape["prometheus.io/port"]) == serving["ports"][0]["containerPort"]

    # Credentials come from the Secret; only the dev overlay brings one (a dev-only password).
    mlflow = by_kind["Deployment"]["mlflow"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(mlflow)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlops-db"
    if target == "overlays/dev":
        secret = by_kind["Secret"]["mlops-db"]
        assert {"POSTGRES_PASSWORD", "optuna-storage-url", "mlflow-backend-store-uri"} <= set(secret["data"])
        assert all(
            m == ["ReadWriteOnce"]
            for m in (c["spec"]["accessModes"] for c in by_kind["PersistentVolumeClaim"].values())
        )
        assert "--workers=1" in mlflow["command"]
    else:
        assert "Secret" not in by_kind, "the base must not overwrite the real Secret with placeholders"
    if target == "overlays/gpu":
        assert by_kind["ResourceQuota"]["gpus"]["spec"]["hard"][f"requests.{GPU_RESOURCE}"] == "40"
        assert "affinity" in by_kind["Deployment"]["serving"]["spec"]["template"]["spec"]


def test_secret_template_names_every_key_the_pods_read():
    secret = yaml.safe_load((K8S / "base" / "secret.template.yaml").read_text())
    keys = set(secret["stringData"])
    texts = [p.read_text() for p in manifest_files()]
    used = {m for t in texts for m in re.findall(r"name: mlops-db\s+key: (\S+)", t)}
    assert used and used <= keys


@pytest.fixture()
def arm_plans(tmp_path, tiny_raw, monkeypatch):
    """The arms' plans of a tiny fume_hood project, planned from its root as the CLI would."""
    from mlops.params import load_experiment, load_params
    from mlops.tasks import get_task
    from mlops.validation import validate_dataset

    monkeypatch.chdir(tmp_path)
    params = load_params(write_params(tmp_path, tiny_params()))
    Path("experiments").mkdir()
    Path("experiments/fume_hood.yaml").write_text(yaml.safe_dump(tiny_experiment()))
    exp = load_experiment("fume_hood", "experiments")
    validate_dataset(get_task("fume_hood"), tiny_raw, params.task("fume_hood")).write(Path("validation.json"))
    plans = plan_sweeps(
        "fume_hood", params, exp, Path("data/prepared/fume_hood"), Path("raw/fume_hood"), Path("validation.json")
    )
    return plans, params


@pytest.mark.parametrize("gpus", [1, 0])
def test_rendered_jobs_are_valid_and_carry_the_params(arm_plans, gpus):
    plans, params = arm_plans
    sweep = ClusterSweepParams(**{**CLUSTER["sweep"], "gpus_per_pod": gpus})
    settings = Settings(k8s_image="registry.example.com/mlops:1.2.3", k8s_namespace="sweeps")
    template = load_template(ROOT / "k8s" / "sweep" / "worker-job.yaml")
    assert sorted(p.arm for p in plans) == ["alexnet", "custom_cnn"]
    names = set()
    for plan in plans:
        config_map, job = render(plan, sweep, settings, template, "params: text\n", "exp: text\n")
        for obj in (config_map, job):
            validate_strictly(obj)
            assert obj["metadata"]["namespace"] == "sweeps"
            assert obj["metadata"]["name"] == plan.name
        assert rule_problems([job]) == []
        names.add(plan.name)
        assert len(plan.name) <= 52 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", plan.name)

        spec = job["spec"]
        assert (spec["completions"], spec["parallelism"]) == (3, 2)
        assert spec["backoffLimitPerIndex"] == 3 and spec["maxFailedIndexes"] == 1
        assert spec["activeDeadlineSeconds"] == 3600
        pod = spec["template"]["spec"]
        (worker,) = pod["containers"]
        (init,) = pod["initContainers"]
        assert init["command"][-1] == "create-study" and worker["command"][-1] == "run"
        assert worker["image"] == init["image"] == "registry.example.com/mlops:1.2.3"
        limits = worker["resources"]["limits"]
        assert (limits["cpu"], limits["memory"]) == ("2", "4Gi")
        if gpus:
            assert limits[GPU_RESOURCE] == "1"
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert pod["tolerations"][0]["key"] == GPU_RESOURCE
        else:
            assert GPU_RESOURCE not in limits and "nodeSelector" not in pod and "tolerations" not in pod

        # Both containers get the same environment; the database URL only from the Secret.
        assert env_of(init) == env_of(worker)
        env = env_of(worker)
        assert env["MLOPS_OPTUNA_STORAGE"]["valueFrom"]["secretKeyRef"] == {
            "name": "mlops-db",
            "key": "optuna-storage-url",
        }
        pod_job = SweepJob(**json.loads(env[JOB_ENV]["value"]))
        assert pod_job.storage_url == "" and "postgres" not in env[JOB_ENV]["value"]
        assert (pod_job.study_name, pod_job.arm) == (plan.study_name, plan.arm)
        assert pod_job.prepared_dir == "data/prepared/fume_hood"
        assert (pod_job.params_path, pod_job.experiments_dir) == ("sweep/params.yaml", "sweep/experiments")
        assert pod_job.lineage["mlops.sweep_id"] == plan.study_name
        volume = next(v for v in pod["volumes"] if v["name"] == CONFIG_VOLUME)
        assert volume["configMap"]["name"] == plan.name
        assert {"key": "experiment.yaml", "path": "experiments/fume_hood.yaml"} in volume["configMap"]["items"]
        assert config_map["data"] == {"params.yaml": "params: text\n", "experiment.yaml": "exp: text\n"}
    assert len(names) == 2, "each arm has its own Job"

    # The dry-run output is plain YAML kubectl can read back (no anchors, files as blocks).
    text = to_yaml(render(plans[0], sweep, settings, template, "a: 1\nb: 2\n", "c: 3\n"))
    assert "&id" not in text and "params.yaml: |" in text
    assert [d["kind"] for d in yaml.safe_load_all(text)] == ["ConfigMap", "Job"]


def test_data_outside_the_pod_volumes_is_refused(arm_plans):
    import dataclasses

    plans, _ = arm_plans
    plan = dataclasses.replace(plans[0], job=dataclasses.replace(plans[0].job, prepared_dir="elsewhere/prepared"))
    template = load_template(ROOT / "k8s" / "sweep" / "worker-job.yaml")
    with pytest.raises(ValueError, match="on no volume of the worker pod"):
        render(plan, ClusterSweepParams(**CLUSTER["sweep"]), Settings(), template, "", "")
    with pytest.raises(ValueError, match="parallelism 4 exceeds completions 3"):
        ClusterSweepParams(**{**CLUSTER["sweep"], "parallelism": 4})
    with pytest.raises(ValueError, match="memory quantity"):
        ClusterSweepParams(**{**CLUSTER["sweep"], "memory": "16 gigs"})


def test_dockerfile_builds_cpu_and_cuda_images_with_torch_pinned_first():
    """Static checks only: there is no Docker daemon here, the image is not built by the tests."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in lines
    assert any(ln.startswith("ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu") for ln in lines)
    assert "FROM ${BASE_IMAGE}" in lines
    pinned = re.search(r'"torch==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"ARG TORCH_VERSION={pinned}" in lines, "the image pins the torch the project pins"
    torch_at = next(i for i, ln in enumerate(lines) if "torch==${TORCH_VERSION}" in ln)
    project_at = next(i for i, ln in enumerate(lines) if "uv pip install --no-cache -r requirements.lock" in ln)
    assert torch_at < project_at, "torch is installed first, from the CPU/CUDA index"
    assert f"torch=={pinned}" in (ROOT / "requirements.lock").read_text().splitlines(), "the lock pins the same torch"
    assert lines[-3].startswith("USER ") and lines[-3] != "USER root"
    assert "mlops" in lines[-1] and "serve" in lines[-1]
    # The pods and the MLflow Deployment run as the image's user.
    uid = re.search(r"--uid (\d+)", text).group(1)
    assert f"runAsUser: {uid}" in (K8S / "sweep" / "worker-job.yaml").read_text()
