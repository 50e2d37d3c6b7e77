"""`mlops registry reproduce`: the tiny pipeline's version rebuilt from its lineage alone (commit + data version in a
temporary git worktree, fresh MLOPS_HOME) has the registered weights; an altered version does not; and what cannot
be rebuilt is refused with what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlops.registry.history import new_event, verify_chain
from mlops.registry.release import champion_stack
from mlops.registry.reproduce import (
    REPRODUCED,
    REPRODUCED_COMMIT,
    REPRODUCED_DIGEST,
    CannotReproduce,
    reproduce,
)
from mlops.settings import Settings
from mlops.tracking.lineage import WEIGHTS_TAG
from tests.conftest import BIN, process_log, register_altered_version, run, start_process, stop_process

pytestmark = pytest.mark.integration
TASK = "fume_hood"


def connect_to(pipeline_repo, monkeypatch):
    """This process on the pipeline's store; returns an MLflow client of it."""
    from mlflow import MlflowClient

    from mlops.tracking.runs import connect

    monkeypatch.setenv("MLOPS_HOME", str(pipeline_repo["home"]))
    monkeypatch.chdir(pipeline_repo["repo"])
    connect(Settings())
    return MlflowClient()


def pipeline_version(pipeline_repo, client):
    """The version the pipeline's register stage made (found by the digest registration.json holds)."""
    registration = json.loads((pipeline_repo["repo"] / "reports/fume_hood/registration.json").read_text())
    found = [v for v in client.search_model_versions(f"name='{TASK}'") if v.tags.get(WEIGHTS_TAG)]
    return min(
        (v for v in found if v.tags[WEIGHTS_TAG] == registration["weights_sha256"]), key=lambda v: int(v.version)
    )


def reproduce_cli(pipeline_repo, version: str, log: Path, seconds: float = 480):
    """`mlops registry reproduce` as a process of its own group writing to ``log``; (exit code, output)."""
    proc = start_process(
        [str(BIN / "mlops"), "registry", "reproduce", TASK, version, "--actor", "release-manager"],
        pipeline_repo["repo"],
        pipeline_repo["env"],
        log,
    )
    try:
        code = proc.wait(timeout=seconds)
    finally:
        stop_process(proc)  # SIGTERM first: the command stops its rebuild's group and removes its worktree
    return code, process_log(proc, tail=20000)


def events_of(pipeline_repo, monkeypatch):
    from mlops.registry.release import history

    connect_to(pipeline_repo, monkeypatch)
    return history(TASK, Settings())


def assert_left_nothing_behind(pipeline_repo) -> None:
    worktrees = run(["git", "worktree", "list", "--porcelain"], pipeline_repo["repo"], pipeline_repo["env"]).stdout
    assert worktrees.count("worktree ") == 1, worktrees


def train_runs(client) -> int:
    experiment = client.get_experiment_by_name(TASK)
    return len(client.search_runs([experiment.experiment_id], filter_string="tags.`mlops.run_kind` = 'train'"))


@pytest.mark.timeout(900)
def test_the_pipelines_version_rebuilds_to_the_same_weights(pipeline_repo, monkeypatch, tmp_path):
    client = connect_to(pipeline_repo, monkeypatch)
    version = pipeline_version(pipeline_repo, client)
    assert version.tags["mlops.git_dirty"] == "false"
    runs_before, events_before = train_runs(client), len(events_of(pipeline_repo, monkeypatch))

    code, out = reproduce_cli(pipeline_repo, str(version.version), tmp_path / "reproduce.log")

    assert code == 0, out
    assert "MATCH" in out and version.tags[WEIGHTS_TAG] in out and version.tags["mlops.git_commit"] in out
    assert "train@fume_hood" in out  # the progress lines name the stage running
    tags = connect_to(pipeline_repo, monkeypatch).get_model_version(TASK, version.version).tags
    assert tags[REPRODUCED] == "match"
    assert tags[REPRODUCED_DIGEST] == version.tags[WEIGHTS_TAG]
    assert tags[REPRODUCED_COMMIT] == version.tags["mlops.git_commit"]
    events = events_of(pipeline_repo, monkeypatch)
    assert len(events) == events_before + 1
    last = events[-1]
    expected = ("reproduce", str(version.version), "release-manager", "match")
    assert (last.action, last.to_version, last.actor, last.reason) == expected
    assert json.loads(last.gates)["reproduced"]["passed"] is True
    # The rebuild wrote into its own temporary store and worktree only.
    assert train_runs(connect_to(pipeline_repo, monkeypatch)) == runs_before
    assert_left_nothing_behind(pipeline_repo)
    log = next(line.split("log: ", 1)[1].strip() for line in out.splitlines() if "log: " in line)
    assert "Running stage 'train@fume_hood'" in Path(log).read_text()
    verified = run(["mlops", "registry", "verify"], pipeline_repo["repo"], pipeline_repo["env"], check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.timeout(900)
def test_a_version_with_altered_weights_is_a_mismatch(pipeline_repo, monkeypatch, tmp_path):
    repo, env = pipeline_repo["repo"], pipeline_repo["env"]
    promote = ["mlops", "registry", "promote", TASK, "challenger", "--if-no-champion", "--approver", "t"]
    run([*promote, "--reason", "a champion to alter"], repo, env)
    altered = register_altered_version(repo, env, TASK, seed=7)

    code, out = reproduce_cli(pipeline_repo, str(altered.version), tmp_path / "reproduce.log")

    assert code == 1, out
    assert "MISMATCH" in out and altered.tags[WEIGHTS_TAG] in out
    tags = connect_to(pipeline_repo, monkeypatch).get_model_version(TASK, altered.version).tags
    assert tags[REPRODUCED] == "mismatch"
    assert tags[REPRODUCED_DIGEST] != altered.tags[WEIGHTS_TAG] and tags[REPRODUCED_DIGEST] in out
    last = events_of(pipeline_repo, monkeypatch)[-1]
    assert (last.action, last.to_version, last.reason) == ("reproduce", str(altered.version), "mismatch")
    assert json.loads(last.gates)["reproduced"]["passed"] is False
    assert_left_nothing_behind(pipeline_repo)
    verified = run(["mlops", "registry", "verify"], repo, env, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def version_with(client, source, **changes):
    """A registry version of ``source``'s model whose tags are ``source``'s with ``changes`` (None drops a tag)."""
    lineage = (k for k in source.tags if k.startswith("mlops.") and not k.startswith(REPRODUCED) and k not in changes)
    tags = {k: source.tags[k] for k in lineage}
    tags |= {k: v for k, v in changes.items() if v is not None}
    return client.create_model_version(TASK, source.source, source.run_id, tags=tags)


@pytest.mark.timeout(420)
def test_refuses_what_cannot_be_rebuilt_and_says_what_to_do(pipeline_repo, monkeypatch):
    client = connect_to(pipeline_repo, monkeypatch)
    source = pipeline_version(pipeline_repo, client)
    repo = pipeline_repo["repo"]
    dirty = version_with(client, source, **{"mlops.git_dirty": "true"})
    refused = run(["mlops", "registry", "reproduce", TASK, str(dirty.version)], repo, pipeline_repo["env"], check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "uncommitted code" in refused.stderr and "cannot be rebuilt" in refused.stderr

    # The same checks in process (no CLI start each): unknown commit, data version nowhere, no digest to compare.
    cases = {
        r"commit f{40} is not in this git repository .*`git fetch`": {"mlops.git_commit": "f" * 40},
        r"data version 0{32}\.dir .* not in the DVC cache .* no DVC remote .*`dvc push`": {
            "mlops.data.raw_md5": "0" * 32 + ".dir"
        },
        "no weights digest": {WEIGHTS_TAG: None},
    }
    for message, changes in cases.items():
        version = version_with(client, source, **changes)
        with pytest.raises(CannotReproduce, match=message):
            reproduce(TASK, str(version.version), Settings(), repo)
        assert REPRODUCED not in client.get_model_version(TASK, version.version).tags
    assert_left_nothing_behind(pipeline_repo)


def test_reproduce_events_move_no_alias_and_keep_the_chain():
    """Rollback replays promotions only; a reproduce event in between changes neither the stack nor the chain."""
    events = []
    for action, alias, version in [
        ("promote", "champion", "1"),
        ("reproduce", "", "1"),
        ("promote", "champion", "2"),
        ("reproduce", "", "2"),
    ]:
        event = new_event(events[-1] if events else None, TASK, alias, action, None, version, "t", "r", False, {})
        events.append(type(event)(**{**event.__dict__, "hash": event.digest()}))
    assert champion_stack(events) == ["1", "2"]
    assert verify_chain(events) == []


@pytest.mark.timeout(120)
def test_an_interrupted_rebuild_stops_its_process_group_and_removes_its_worktree(tmp_path):
    """SIGTERM (or Ctrl-C) while a rebuild step runs: the step's whole group is stopped, the worktree removed."""
    import os
    import signal

    from mlops.registry.reproduce import run_logged, sigterm_raises, worktree

    repo, env = tmp_path / "repo", dict(os.environ)
    repo.mkdir()
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(["git", "init", "-q"], repo, env)
    (repo / "file").write_text("x")
    run([*git, "add", "file"], repo, env)
    run([*git, "commit", "-qm", "x"], repo, env)
    commit = run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
    pids: list[int] = []

    def on_line(line: str) -> None:  # the step has started its children: the command is told to stop
        pids.extend(int(p) for p in line.split())
        os.kill(os.getpid(), signal.SIGTERM)

    step = ["sh", "-c", "sleep 300 & echo $$ $!; wait"]
    with pytest.raises(KeyboardInterrupt), sigterm_raises(), worktree(repo, commit) as tree:
        assert (tree / "file").read_text() == "x"
        run_logged(step, tree, env, tmp_path / "step.log", on_line)
    assert len(pids) == 2
    assert not [pid for pid in pids if running(pid)]  # the shell and its background sleep
    assert not tree.exists() and not tree.parent.exists()
    assert run(["git", "worktree", "list", "--porcelain"], repo, env).stdout.count("worktree ") == 1


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's exit may not be reaped yet by whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_re_recorded_data_dvc_does_not_make_a_run_dirty(tmp_path, monkeypatch):
    """run.sh re-records data.dvc before training on new data; the data version is its own tag, so the code is clean."""
    import os

    from mlops.tracking.lineage import git_dirty

    env = dict(os.environ)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(["git", "init", "-q"], tmp_path, env)
    (tmp_path / "reports").mkdir()
    for name in ("data.dvc", "code.py", "reports/metrics.json"):
        (tmp_path / name).write_text("1\n")
    run([*git, "add", "data.dvc", "code.py", "reports/metrics.json"], tmp_path, env)
    run([*git, "commit", "-qm", "x"], tmp_path, env)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.dvc").write_text("2\n")
    (tmp_path / "reports/metrics.json").write_text("2\n")  # a pipeline output, rewritten by every repro
    assert git_dirty() is False
    (tmp_path / "code.py").write_text("2\n")
    assert git_dirty() is True
