"""Outputs hold results only: a second forced run of the pipeline on the same machine leaves dvc.lock unchanged.

Nothing a stage writes into a DVC-tracked output may depend on when or where it ran (run ids, timestamps,
registry versions, absolute paths go to MLflow or to untracked files), nor on what ran beside it, and training and
sweeps are seeded. The first run is a plain `dvc repro --force` (one stage at a time); the second is what run.sh
runs, `python -m mlops.pipeline --force`, two tasks' chains of stages side by side: the same outputs show that the
two ways of running give the same results. Its own tiny repo with two tasks, real `dvc`, MLflow and Optuna stores
(not the session's `pipeline_repo`, which a forced rerun would change under other tests).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from mlops.pipeline import chain_stages
from tests.conftest import ROOT, TINY, deep_update, run, tiny_experiment, tiny_params, tiny_repo

pytestmark = pytest.mark.integration

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def out_hashes(repo: Path) -> dict[str, str]:
    """``<stage> <out path>`` -> the md5 dvc.lock records for it."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {f"{stage} {out['path']}": out["md5"] for stage, entry in lock["stages"].items() for out in entry["outs"]}


def file_hashes(repo: Path, outs: list[str]) -> dict[str, str]:
    """sha256 of every file under the given outs (to say which files of a folder out changed)."""
    found = {}
    for out in outs:
        root = repo / out
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file():
                found[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def two_task_repo(repo: Path) -> dict[str, str]:
    """fume_hood and fracture on tiny data and one-trial budgets, the data version committed (as in a real clone:
    a forced `dvc repro` re-records data.dvc, and the validate stage refuses a data.dvc rewritten by this run that
    differs from git's)."""
    full = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = tiny_params()
    params["tasks"]["fracture"] = full["tasks"]["fracture"]
    fracture = deep_update(full["fracture"], TINY["fracture"])
    fracture["train"].update(epochs=2, patience=2)
    fracture["gates"] = {"min": {}, "max": {}, "tolerance": {}}
    params["fracture"] = fracture
    exp = tiny_experiment()
    exp["budget"]["n_trials"] = 1  # per arm: two arms are enough to compare
    fracture_exp = yaml.safe_load((ROOT / "experiments" / "fracture.yaml").read_text())
    fracture_exp["budget"] = {"n_trials": 1, "epochs_per_trial": 2, "generation_size": 2}
    fracture_exp["sampler"] = {"type": "random"}
    repo.mkdir()
    env = tiny_repo(repo, params=params, experiments={"fume_hood": exp, "fracture": fracture_exp})
    run([*GIT, "add", "data.dvc"], repo, env)
    run([*GIT, "commit", "-qm", "data"], repo, env)
    return env


@pytest.mark.timeout(900)
def test_second_forced_run_with_tasks_side_by_side_leaves_every_out_hash_unchanged(tmp_path):
    repo = tmp_path / "repo"
    env = two_task_repo(repo)
    stages = {f"{stage}@{task}" for stage in chain_stages(repo / "dvc.yaml") for task in ("fume_hood", "fracture")}
    run(["dvc", "repro", "--force"], repo, env, timeout=600)
    first = out_hashes(repo)
    assert {key.split(" ", 1)[0] for key in first} == stages
    outs = sorted({key.split(" ", 1)[1] for key in first})
    first_files = file_hashes(repo, outs)

    side_by_side = run(["python", "-m", "mlops.pipeline", "--force", "--jobs", "2"], repo, env, timeout=600)
    assert "[fume_hood] register@fume_hood done" in side_by_side.stdout
    assert "[fracture] register@fracture done" in side_by_side.stdout
    logs = repo / ".mlops" / "logs"
    times = json.loads((logs / "repro-times.json").read_text())["chains"]
    for task, chain in times.items():
        assert list(chain["seconds"]) == [f"{stage}@{task}" for stage in chain_stages(repo / "dvc.yaml")]
    a, b = times["fume_hood"], times["fracture"]
    assert a["started"] < b["ended"] and b["started"] < a["ended"], f"the chains did not run side by side: {times}"
    assert "Running stage 'register@fracture'" in (logs / "repro-fracture.log").read_text()  # each chain's log, whole
    assert json.loads(run(["dvc", "status", "--json"], repo, env).stdout) == {}
    second = out_hashes(repo)
    second_files = file_hashes(repo, outs)

    assert set(first) == set(second)
    changed = sorted(k for k in first if first[k] != second[k])
    files = sorted(k for k in first_files.keys() | second_files.keys() if first_files.get(k) != second_files.get(k))
    assert not changed, (
        "outs whose dvc.lock hash changed between a plain forced run and one with the tasks side by side:\n  "
        + "\n  ".join(f"{k}: {first[k]} -> {second[k]}" for k in changed)
        + "\nfiles that differ:\n  "
        + "\n  ".join(files)
    )

    # Nothing changed: no chain runs, and the closing `dvc repro` finds everything up to date.
    again = run(["python", "-m", "mlops.pipeline"], repo, env, timeout=300)
    assert "[fume_hood]" not in again.stdout and "[fracture]" not in again.stdout, again.stdout
    assert json.loads((logs / "repro-times.json").read_text())["chains"] == {}
