"""Outputs hold results only: a second `dvc repro --force` on the same machine leaves dvc.lock unchanged.

Nothing a stage writes into a DVC-tracked output may depend on when or where it ran (run ids, timestamps,
registry versions, absolute paths go to MLflow or to untracked files), and training and sweeps are seeded.
Its own tiny repo (not the session's `pipeline_repo`, which a forced rerun would change under other tests).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tests.conftest import run, tiny_experiment, tiny_repo

pytestmark = pytest.mark.integration


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


@pytest.mark.timeout(480)
def test_second_forced_repro_leaves_every_out_hash_unchanged(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    exp = tiny_experiment()
    exp["budget"]["n_trials"] = 1  # per arm: two arms are enough to compare
    env = tiny_repo(repo, experiments={"fume_hood": exp})
    # As in a real repo, the data version is committed: a forced repro re-records data.dvc, and the validate
    # stage refuses a data.dvc rewritten by this run that differs from git's.
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run([*git, "add", "data.dvc"], repo, env)
    run([*git, "commit", "-qm", "data"], repo, env)
    run(["dvc", "repro", "--force"], repo, env)
    first = out_hashes(repo)
    outs = sorted({key.split(" ", 1)[1] for key in first})
    first_files = file_hashes(repo, outs)
    run(["dvc", "repro", "--force"], repo, env)
    second = out_hashes(repo)
    second_files = file_hashes(repo, outs)

    assert set(first) == set(second)
    changed = sorted(k for k in first if first[k] != second[k])
    files = sorted(k for k in first_files.keys() | second_files.keys() if first_files.get(k) != second_files.get(k))
    assert not changed, (
        "outs whose dvc.lock hash changed between two forced runs of the same pipeline on the same data:\n  "
        + "\n  ".join(f"{k}: {first[k]} -> {second[k]}" for k in changed)
        + "\nfiles that differ:\n  "
        + "\n  ".join(files)
    )
