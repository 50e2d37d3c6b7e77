"""A sixth task joins as one installed package, with no edit under ``mlops/`` (docs/adding-a-task.md).

The example plugin ``tests/plugins/mlops_spots`` (its own pyproject.toml, entry point ``mlops.tasks: spots``) is
installed with pip into a folder that only this test's subprocesses see (PYTHONPATH), so the other tests keep
seeing the five built-in tasks. A temporary copy of the project then lists it in params.yaml (``tasks``: name ->
code folder) with its params section and experiment file - the only places a task is named - and runs
simulate -> `dvc repro` (validate, prepare, sweep, train, evaluate, register) -> `mlops registry promote` ->
a real `mlops serve`, which answers the plugin's example upload and refuses its bad ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import ROOT, issue_key, run, start_service, stop_process, tiny_params, tiny_repo

pytestmark = pytest.mark.integration

PLUGIN = ROOT / "tests" / "plugins" / "mlops_spots"

SPOTS_PARAMS = {
    "simulate": {"n_images": 160, "n_batches": 16, "noise": 12.0},
    "validation": {"min_images": 40, "drift": {"max_mean_shift": 3.0, "max_std_ratio": 2.0}},
    "split": {"val_fraction": 0.25, "test_fraction": 0.25},
    "input": {"size": 16},
    "augment": {"mirror": True},
    "train": {"epochs": 6, "patience": 6},
    "evaluate": {"gradcam_samples": 4},
    "gates": {"min": {"test_accuracy": 0.75}, "max": {}, "tolerance": {"test_accuracy": 0.05}},
}
SPOTS_EXPERIMENT = {
    "objective": {"metric": "val_accuracy", "direction": "maximize"},
    "budget": {"n_trials": 2, "epochs_per_trial": 3, "generation_size": 2},
    "sampler": {"type": "random"},
    "pruner": {"type": "nop"},
    "search_space": {
        "model": {"type": "categorical", "choices": ["cnn"]},
        "channels": {"type": "categorical", "choices": [4]},
        "lr": {"type": "float", "low": 0.005, "high": 0.01, "log": True},
        "batch_size": {"type": "categorical", "choices": [16]},
    },
}


@pytest.mark.timeout(900)
def test_a_sixth_task_from_its_own_package_through_pipeline_registry_and_service(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    code = repo / "plugins" / "mlops_spots"
    shutil.copytree(PLUGIN, code, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
        + [str(code)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (site / "mlops_spots" / "task.py").is_file()
    monkeypatch.setenv("PYTHONPATH", str(site))  # the plugin, for every command below (not for this process)

    base = tiny_params()
    params = {
        "base": base["base"],
        "tasks": {"spots": "plugins/mlops_spots/mlops_spots"},
        "sweep": base["sweep"],
        "spots": SPOTS_PARAMS,
    }
    env = tiny_repo(repo, params, {"spots": SPOTS_EXPERIMENT})
    listed = run(["mlops", "tasks"], repo, env).stderr  # the CLI's console is stderr
    assert "spots" in listed and "mlops_spots.task:SpotsTask" in listed, listed
    run(["dvc", "repro"], repo, env, timeout=700)

    metrics = json.loads((repo / "reports/spots/metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.75, metrics  # the model learned which side holds the spot (chance: 0.5)
    registration = json.loads((repo / "reports/spots/registration.json").read_text())
    assert registration["challenger"], registration
    assert (repo / "reports/spots/eval").is_dir() and any((repo / "reports/spots/eval").rglob("*.png"))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {s for s in lock["stages"] if s.endswith("@spots")} == {
        f"{stage}@spots" for stage in ("validate", "prepare", "sweep", "train", "evaluate", "register")
    }
    code_dep = [d for d in lock["stages"]["train@spots"]["deps"] if d["path"] == "plugins/mlops_spots/mlops_spots"]
    assert code_dep, "the train stage depends on the plugin's code folder"

    run(["mlops", "registry", "promote", "spots", "challenger", "--approver", "t", "--reason", "sixth task"], repo, env)
    env.update(MLOPS_ALIAS_POLL_SECONDS="0")
    key = issue_key(env, "sixth task member")
    proc, url = start_service(repo, env)
    try:
        sys.path.insert(0, str(site))
        from mlops_spots.task import SpotsTask  # the plugin's own declarations of good and bad uploads

        task, raw = SpotsTask(), repo / "data/raw/spots"
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as http:
            example = task.example_upload(raw)
            resp = http.post("/v1/models/spots/predict", files={"file": ("x.png", example.data, example.content_type)})
            assert resp.status_code == 200, resp.text[:2000]
            body = resp.json()
            assert body["task"] == "spots" and body["alias"] == "champion" and body["side"] in ("left", "right")
            for case in task.bad_uploads(raw):
                resp = http.post(
                    "/v1/models/spots/predict", files={"file": (case.filename, case.data, case.content_type)}
                )
                assert resp.status_code == case.status, (case.name, resp.text[:500])
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m.startswith("mlops_spots")]:
            del sys.modules[name]
        stop_process(proc)
