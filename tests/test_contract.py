"""The contract every registered task holds, end to end, through one real server.

Parametrised over ``mlops.tasks.task_names()``: a new task gets these tests for free (with the sizes of
its params.yaml section unless ``TINY`` shrinks them). One module fixture runs, per task and on tiny data:
simulate -> validate -> prepare -> the train stage (``train_best``: the generic loop, a pyfunc logged with
lineage to a real MLflow SQLite store) -> the register stage (``register_model``) -> the release code's
gated promotion to ``champion``; then one real ``mlops serve`` process loads every champion from the
registry. Each task's example upload must be answered with 200 and a JSON answer naming the task and the
served version; each bad upload the task declares (``Task.bad_uploads``) with its declared 4xx and words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mlops.config import CategoricalParam, Experiment
from mlops.params import load_experiment, load_params
from mlops.tasks import get_task, task_names
from tests.conftest import ROOT, TINY, deep_update, env_for, issue_key, start_service, stop_process, write_params

pytestmark = pytest.mark.integration

TASKS = task_names()
APPROVER, REASON = "contract test", "the contract test promotes every task's tiny model"
EPOCHS = 2


def contract_params() -> dict:
    """params.yaml for every task: tiny data, a couple of epochs, and gates any model passes (they still run)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = {"base": raw["base"], "tasks": {t: raw["tasks"][t] for t in TASKS}, "sweep": raw["sweep"]}
    for name in TASKS:
        section = deep_update(raw[name], TINY.get(name, {}))
        section["train"].update(epochs=EPOCHS, patience=EPOCHS)
        section["gates"] = {"min": {}, "max": {}, "tolerance": {}}
        out[name] = section
    return out


def cheapest_config(exp: Experiment) -> tuple[str, dict[str, Any]]:
    """The arm the experiment registers (else its first) at the cheapest point of its search space."""
    arm = exp.register_arm or next(iter(exp.arms))
    fixed, space = exp.arm_space(arm)
    config: dict[str, Any] = dict(fixed)
    for name, spec in space.items():
        if isinstance(spec, CategoricalParam):
            numbers = [c for c in spec.choices if isinstance(c, int | float) and not isinstance(c, bool)]
            config[name] = min(numbers) if numbers else spec.choices[0]
        else:
            config[name] = spec.low
    return arm, config


def prepare_champion(name: str, root: Path, params, settings) -> dict[str, Any]:
    """One task from simulation to champion, through the stages' own functions, in ``root``."""
    from mlflow import MlflowClient

    from mlops.registry.register import register_model
    from mlops.registry.release import promote
    from mlops.training.final import selected_arm_dir, train_best, train_run_for
    from mlops.validation import validate_dataset

    task, tp, seed = get_task(name), params.task(name), params.base.seed
    raw, prepared, reports = root / "data/raw" / name, root / "data/prepared" / name, root / "reports" / name
    models = root / "models" / name
    task.simulate(raw, tp, seed=seed, progress=lambda _: None)
    report = validate_dataset(task, raw, tp)
    assert report.success, report.summary()
    report.write(reports / "validation.json")
    task.prepare(raw, prepared, tp, seed=seed)

    # What the sweep stage would hand over: one arm at the cheapest point of the task's real search space.
    exp = load_experiment(name, ROOT / "experiments")
    arm, config = cheapest_config(exp)
    best = reports / "best_params.json"
    best.write_text(json.dumps({"selected": arm, "arms": {arm: {"best_params": config, "study_name": "contract"}}}))
    train_best(name, params, exp, settings, best, prepared, raw, reports / "validation.json", models, reports / "hist")

    # The register stage reads the evaluate stage's metrics; here the train run's (validation) metrics stand in.
    run_id = train_run_for(selected_arm_dir(models), name).info.run_id
    metrics = MlflowClient().get_run(run_id).data.metrics
    (reports / "metrics.json").write_text(json.dumps(metrics))
    registration = register_model(name, params, settings, models, reports / "metrics.json", reports / "reg.json")
    assert registration.challenger, registration.gate_failures
    event = promote(name, "challenger", settings, params, APPROVER, REASON)
    return {"raw": raw, "registration": registration, "event": event, "run_id": run_id, "arm": arm}


def prepare_champions(root: Path, params, tasks) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Every task's champion in one MLflow store under ``root/.mlops`` (the store's home and each task's
    :func:`prepare_champion`), leaving MLflow's process-wide URIs as they were."""
    import mlflow

    from mlops.settings import Settings

    home = root / ".mlops"
    settings = Settings(home=home, tracking_uri=None, artifact_root=None, history_uri=None, _env_file=None)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        return home, {name: prepare_champion(name, root, params, settings) for name in tasks}
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def served_env(home: Path) -> dict[str, str]:
    """The environment of a service that serves prepared champions: no alias watch (nothing moves), a rate limit
    no test reaches, and the default upload and pixel limits."""
    env = env_for(home)
    env.update(MLOPS_ALIAS_POLL_SECONDS="0", MLOPS_RATE_LIMIT_PER_MINUTE="100000", MLOPS_RATE_LIMIT_BURST="10000")
    for key in ("MLOPS_MAX_UPLOAD_BYTES", "MLOPS_MAX_IMAGE_PIXELS", "MLOPS_SERVED_ALIAS", "MLOPS_REQUIRE_API_KEY"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    """Every task's champion in one temporary MLflow store, served by one real `mlops serve` process."""

    from mlops.settings import Settings

    root = tmp_path_factory.mktemp("contract")
    write_params(root, contract_params())
    params = load_params(root / "params.yaml")
    home, tasks = prepare_champions(root, params, TASKS)
    env = served_env(home)
    key = issue_key(env, "contract member")
    proc, base = start_service(root, env)
    try:
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as http:
            yield {
                "http": http,
                "base": base,
                "tasks": tasks,
                "limit": Settings.model_fields["max_upload_bytes"].default,
            }
    finally:
        stop_process(proc)


def post(http: httpx.Client, task: str, data: bytes, content_type: str, filename: str = "upload", **kw):
    return http.post(f"/v1/models/{task}/predict", files={"file": (filename, data, content_type)}, **kw)


def strict_json(text: str) -> Any:
    """Parse as standard JSON: NaN and Infinity (which Python's json accepts) are refused."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


ENVELOPE = {"task", "version", "alias", "member"}


@pytest.mark.parametrize("name", TASKS)
def test_task_declares_an_example_and_the_generic_kinds_of_bad_upload(contract, name):
    raw = contract["tasks"][name]["raw"]
    task = get_task(name)
    example = task.example_upload(raw)
    assert example.data and example.content_type
    cases = task.bad_uploads(raw)
    names = [case.name for case in cases]
    assert len(set(names)) == len(names), f"{name}: case names repeat: {names}"
    for case in cases:
        assert 400 <= case.status < 500 and case.words and all(case.words), case.name
        assert case.data != example.data or case.content_type != example.content_type, case.name
    # empty (400), too big once decoded (413), foreign type or bytes (415), corrupt or wrong shape (422)
    assert {400, 413, 415, 422} <= {case.status for case in cases}, f"{name} declares {sorted(names)}"


def test_every_champion_is_served_with_its_lineage(contract):
    body = contract["http"].get("/v1/models").json()
    assert body["not_served"] == {}
    served = {m["task"]: m for m in body["models"]}
    assert sorted(served) == TASKS
    for name, made in contract["tasks"].items():
        model, reg = served[name], made["registration"]
        assert (model["version"], model["alias"]) == (reg.version, "champion")
        event = made["event"]
        assert (event.to_version, event.action, event.forced) == (reg.version, "promote", False)
        assert all(gate["passed"] for gate in json.loads(event.gates).values()), event.gates
        lineage = model["lineage"]
        assert lineage["task"] == name and lineage["run_id"] == made["run_id"] == reg.run_id
        assert lineage["arm"] == made["arm"] and lineage["gates"] == "passed"
        assert lineage["validation.success"] == "true" and lineage["data.raw_path"] == str(made["raw"])
        assert (lineage["promoted_by"], lineage["promotion_reason"]) == (APPROVER, REASON)


@pytest.mark.parametrize("name", TASKS)
def test_example_upload_is_answered_with_json_naming_task_and_version(contract, name):
    example = get_task(name).example_upload(contract["tasks"][name]["raw"])
    resp = post(contract["http"], name, example.data, example.content_type, example.filename)
    assert resp.status_code == 200, resp.text[:2000]
    assert resp.headers["content-type"].startswith("application/json")
    body = strict_json(resp.text)
    assert json.loads(json.dumps(body)) == body
    version = contract["tasks"][name]["registration"].version
    assert {k: body[k] for k in ENVELOPE} == {
        "task": name,
        "version": version,
        "alias": "champion",
        "member": "contract member",
    }
    assert set(body) - ENVELOPE, f"{name}: the answer holds nothing but the envelope"


@pytest.mark.parametrize("name", TASKS)
def test_declared_bad_uploads_get_their_4xx_and_message(contract, name):
    wrong = []
    for case in get_task(name).bad_uploads(contract["tasks"][name]["raw"]):
        try:
            resp = post(contract["http"], name, case.data, case.content_type, case.filename)
        except httpx.HTTPError as exc:  # e.g. the connection dropped on a server error
            wrong.append(f"{case.name}: want {case.status} with {list(case.words)}, got {exc!r}")
            continue
        try:
            body = strict_json(resp.text)
        except ValueError:
            body = None
        detail = body.get("detail") if isinstance(body, dict) else None
        missing = [w for w in case.words if not isinstance(detail, str) or w not in detail]
        if resp.status_code != case.status or missing:
            wrong.append(
                f"{case.name}: want {case.status} with {list(case.words)}, got {resp.status_code} {resp.text!r}"
            )
    assert not wrong, f"{name}:\n" + "\n".join(wrong)


def test_unknown_task_is_404_naming_the_known_tasks(contract):
    resp = post(contract["http"], "fume_hod", b"\x89PNG\r\n\x1a\n", "image/png")
    assert resp.status_code == 404
    detail = resp.json()["detail"]
    assert "'fume_hod'" in detail and all(name in detail for name in TASKS)


def test_predict_without_a_key_is_401(contract):
    resp = httpx.post(
        f"{contract['base']}/v1/models/{TASKS[0]}/predict", files={"file": ("x", b"\x89PNG\r\n\x1a\n", "image/png")}
    )
    assert resp.status_code == 401 and resp.headers.get("www-authenticate")
    assert "API key is required" in resp.json()["detail"]


def test_upload_over_the_byte_limit_is_413_before_the_task_sees_it(contract):
    name = TASKS[0]
    example = get_task(name).example_upload(contract["tasks"][name]["raw"])
    resp = post(contract["http"], name, b"\x00" * (contract["limit"] + 1), example.content_type)
    assert resp.status_code == 413 and f"limit of {contract['limit']} bytes" in resp.json()["detail"]
