"""`python -m mlops.pipeline` (what run.sh runs): which stages each task's chain runs, and a failing chain.

That its chains side by side give a plain `dvc repro`'s outputs is tests/test_repro_twice.py's test.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from mlops.pipeline import chain_stages, plan
from tests.conftest import ROOT, run
from tests.test_repro_twice import two_task_repo

pytestmark = pytest.mark.integration


def test_plan_runs_every_stage_when_forced_else_from_the_first_changed_one():
    stages = chain_stages(ROOT / "dvc.yaml")
    assert stages == ["validate", "prepare", "sweep", "train", "evaluate", "register"]
    forced = plan(["a", "b"], stages, None)
    assert forced["a"] == [f"{s}@a" for s in stages] and forced["b"] == [f"{s}@b" for s in stages]
    # b's experiment changed: its chain starts at its sweep; a has nothing changed and gets no chain
    from_sweep = ["sweep@b", "train@b", "evaluate@b", "register@b"]
    assert plan(["a", "b"], stages, {"sweep@b", "evaluate@b"}) == {"b": from_sweep}
    assert plan(["a"], stages, {"data.dvc"}) == {}


@pytest.mark.timeout(600)
def test_a_failing_chain_stops_the_others_and_names_its_log(tmp_path):
    repo = tmp_path / "repo"
    env = two_task_repo(repo)
    # fracture's raw data changed without `dvc add`: its validate stage refuses it
    victim = sorted((repo / "data" / "raw" / "fracture").iterdir())[0]
    shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    failed = run(["python", "-m", "mlops.pipeline", "--force", "--jobs", "2"], repo, env, check=False, timeout=400)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    log = repo / ".mlops" / "logs" / "repro-fracture.log"
    assert "[fracture] validate@fracture FAILED" in failed.stdout and str(log) in failed.stdout
    assert log.is_file() and "validate@fracture" in log.read_text()
    times = json.loads((repo / ".mlops" / "logs" / "repro-times.json").read_text())["chains"]
    # fume_hood finished the stage it was in and started no later one
    assert "register@fume_hood" not in times["fume_hood"]["seconds"]
    assert "[fume_hood] not starting" in failed.stdout
    assert not (repo / "reports" / "fume_hood" / "registration.json").exists()


@pytest.mark.timeout(60)
def test_dvc_lock_is_read_whole_while_dvc_rewrites_it(tmp_path):
    """Stages read dvc.lock (the recorded data versions of their lineage) while another chain's `dvc repro` may be
    rewriting it in place; DVC does that holding its repository lock (taken here with DVC's own lock class)."""
    import threading
    import time

    from dvc.lock import make_lock

    from mlops.data.versions import recorded_versions, workspace_lock_stages

    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    stages = {f"prepare@t{i}": {"outs": [{"path": f"data/prepared/t{i}", "md5": f"{i:032x}.dir"}]} for i in range(300)}
    whole = yaml.safe_dump({"schema": "2.0", "stages": stages})
    lock = make_lock(str(tmp_path / ".dvc" / "tmp" / "lock"))
    lock.lock()
    (tmp_path / "dvc.lock").write_text(whole[: len(whole) // 2])  # DVC half way through writing it
    seen = {}
    reader = threading.Thread(target=lambda: seen.update(stages=workspace_lock_stages(tmp_path)))
    reader.start()
    time.sleep(0.5)
    assert reader.is_alive(), "the reader did not wait for DVC's lock"
    (tmp_path / "dvc.lock").write_text(whole)
    lock.unlock()
    reader.join(10)
    assert seen["stages"] == stages
    assert recorded_versions(tmp_path, None)["data/prepared/t299"] == f"{299:032x}.dir"


@pytest.mark.timeout(120)
def test_outside_the_repository_it_says_where_to_run_it(tmp_path):
    """No params.yaml, then no dvc.yaml: exit 2 with what to do, no traceback."""
    import os

    env = dict(os.environ)
    missing = run(["python", "-m", "mlops.pipeline"], tmp_path, env, check=False)
    assert missing.returncode == 2 and "params.yaml not found" in missing.stderr and "Traceback" not in missing.stderr
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    no_dvc = run(["python", "-m", "mlops.pipeline"], tmp_path, env, check=False)
    assert no_dvc.returncode == 2 and "no dvc.yaml" in no_dvc.stderr and "Traceback" not in no_dvc.stderr
