"""`mlops registry reproduce`: rebuild a registered version from its lineage alone and compare the weights.

The version's lineage tags name a commit (clean), a raw data version (DVC md5 of data/raw) and an arm; the
rebuild checks that commit out in a temporary `git worktree`, checks the data version out there from the
DVC cache this repo uses (or its default remote), and runs `dvc repro --force train@<task>` with the
commit's own code (``PYTHONPATH``) and a fresh temporary ``MLOPS_HOME`` (its own MLflow store and Optuna
storage), so it writes nothing into this repo's stores or cache. The rebuilt arm's :func:`weights_digest`
is compared with the version's ``WEIGHTS_TAG``; the outcome is tagged on the version and appended to the
task's release history (event ``reproduce``). The worktree and its temporary home are removed afterwards,
also on failure or Ctrl-C; the rebuild's log stays under ``<MLOPS_HOME>/reproduce/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from mlops.data.integrity import ACCEPTED_ENV
from mlops.data.versions import DIR_SUFFIX, cache_dir, lock_md5, lock_stages, object_path, read_dir_object
from mlops.inference.model_files import weights_digest
from mlops.settings import Settings
from mlops.tracking.lineage import TAG, WEIGHTS_TAG

#: Tags the outcome leaves on the version: match|mismatch, the rebuilt digest, when, and from which commit.
REPRODUCED = f"{TAG}reproduced"
REPRODUCED_DIGEST = f"{TAG}reproduced_digest"
REPRODUCED_AT = f"{TAG}reproduced_at"
REPRODUCED_COMMIT = f"{TAG}reproduced_commit"
#: The release-history event kind (not an alias move: `rollback` and `verify` replay moves only).
ACTION = "reproduce"
RAW = "data/raw"  # what data.dvc tracks and `mlops.data.raw_md5` names
RUNTIME = f"{TAG}runtime."  # the numeric environment a train run records (mlops/runtime.py)
BIN = Path(sys.executable).parent


class CannotReproduce(RuntimeError):
    """The version cannot be rebuilt from its lineage; the message says why and what to do."""


class RebuildFailed(RuntimeError):
    """The rebuild ran and failed (a stage exited non-zero); the message names the log."""


@dataclass(frozen=True)
class Lineage:
    """What a version says it was made from (its ``mlops.*`` tags)."""

    task: str
    version: str
    commit: str
    raw_md5: str
    prepared_md5: str
    arm: str
    params_hash: str
    weights: str
    run_id: str = ""
    #: ``mlops.runtime.*`` tags without the prefix (torch, cpu, dispatch, pins); empty for older versions
    runtime: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rebuilt:
    """What the rebuild produced: its weights' digest, and its train run's tags and hyperparameters."""

    digest: str
    tags: dict[str, str]
    params: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    lineage: Lineage
    digest: str  # of the rebuilt arm's weights
    prepared_md5: str  # of the rebuilt prepared data
    log: Path
    seconds: float
    #: where the rebuild's train run differs from the original's (hyperparameters, runtime), for a mismatch
    differences: tuple[str, ...] = ()

    @property
    def match(self) -> bool:
        return self.digest == self.lineage.weights

    def summary(self) -> str:
        ln = self.lineage
        verdict = "MATCH: the rebuild has the registered weights" if self.match else "MISMATCH: the weights differ"
        same_prepared = "same" if self.prepared_md5 == ln.prepared_md5 else f"DIFFERENT: rebuilt {self.prepared_md5}"
        lines = [
            f"{ln.task} v{ln.version} ({ln.arm}) reproduced from its lineage: {verdict}",
            f"  registered weights sha256: {ln.weights}",
            f"  rebuilt weights sha256:    {self.digest}",
            f"  commit:    {ln.commit}",
            f"  raw data:  {ln.raw_md5}",
            f"  prepared:  {ln.prepared_md5} ({same_prepared})",
        ]
        lines += [f"  differs:   {d}" for d in self.differences]
        lines.append(f"  rebuild:   {self.seconds:.0f} s; log: {self.log}")
        return "\n".join(lines)


# --- what the version says, and whether it can be rebuilt here --------------------------------------


def lineage_of(task: str, mv) -> Lineage:
    """The version's lineage; CannotReproduce when it lacks what a rebuild needs or was trained from a dirty tree."""
    tags, version = mv.tags, str(mv.version)
    weights = tags.get(WEIGHTS_TAG)
    if not weights:
        raise CannotReproduce(
            f"{task} v{version} has no weights digest ({WEIGHTS_TAG}): it was registered before digests were "
            "recorded, so there is nothing to compare a rebuild with. Register a new version (`dvc repro`)."
        )
    commit = tags.get(f"{TAG}git_commit", "")
    if len(commit) not in (40, 64) or not all(ch in "0123456789abcdef" for ch in commit):
        raise CannotReproduce(f"{task} v{version} records no git commit ({TAG}git_commit={commit or '-'})")
    dirty = tags.get(f"{TAG}git_dirty")
    if dirty == "true":
        raise CannotReproduce(
            f"{task} v{version} was trained from uncommitted code (git_dirty=true at {commit[:12]}): its code "
            "exists nowhere, so it cannot be rebuilt. Commit, then retrain and register a new version."
        )
    if dirty != "false":
        raise CannotReproduce(f"{task} v{version} records no {TAG}git_dirty: whether its code was committed is unknown")
    raw = tags.get(f"{TAG}data.raw_md5", "")
    if not raw.endswith(DIR_SUFFIX):
        raise CannotReproduce(f"{task} v{version} records no DVC version of {RAW} ({TAG}data.raw_md5={raw or '-'})")
    arm = tags.get(f"{TAG}arm")
    if not arm:
        raise CannotReproduce(f"{task} v{version} records no arm ({TAG}arm)")
    prepared, params = tags.get(f"{TAG}data.prepared_md5", ""), tags.get(f"{TAG}params_hash", "")
    runtime = {k.removeprefix(RUNTIME): v for k, v in tags.items() if k.startswith(RUNTIME)}
    run_id = tags.get(f"{TAG}run_id") or mv.run_id or ""
    return Lineage(task, version, commit, raw, prepared, arm, params, weights, run_id, runtime)


def repo_root(path: Path) -> Path:
    out = _git(path, "rev-parse", "--show-toplevel")
    if out.returncode != 0:
        raise CannotReproduce(f"{path.resolve()} is not in a git repository: run this in the project's clone")
    return Path(out.stdout.strip())


def require_commit(root: Path, commit: str) -> None:
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise CannotReproduce(
            f"commit {commit} is not in this git repository ({root}): `git fetch` the branch or remote that "
            "has it, then rerun"
        )


def data_location(root: Path, md5: str) -> str:
    """'cache' or 'remote': where every object of data version ``md5`` is; CannotReproduce when neither has it."""
    objects = cache_dir(root)
    listing = read_dir_object(objects, md5)
    if listing is not None and all(object_path(objects, m).is_file() for m in listing.values()):
        return "cache"
    remote, complete = remote_has(root, md5)
    if complete:
        return "remote"
    where = f"the DVC cache ({objects.parent.parent})" + (
        f" nor on the default remote ({remote})" if remote else " and no DVC remote is configured"
    )
    raise CannotReproduce(
        f"data version {md5} ({RAW}) is not in {where}: on the machine that has it, `dvc push` "
        f"(with data.dvc at that version), then rerun here"
    )


def remote_has(root: Path, md5: str) -> tuple[str | None, bool]:
    """(the default remote's location or None, whether it holds every object of data version ``md5``)."""
    import json

    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        try:
            odb = repo.cloud.get_remote_odb(None, "reproduce")
        except Exception:  # no remote configured (DVC raises its NoRemoteError)
            return None, False
        path = odb.oid_to_path(md5)
        if not odb.fs.exists(path):
            return str(odb.path), False
        listing = json.loads(odb.fs.cat_file(path))
        return str(odb.path), all(odb.fs.exists(odb.oid_to_path(e["md5"])) for e in listing)


# --- the rebuild --------------------------------------------------------------------------------------


@contextlib.contextmanager
def worktree(root: Path, commit: str) -> Iterator[Path]:
    """A temporary detached `git worktree` of ``commit``, removed afterwards whatever happens."""
    base = Path(tempfile.mkdtemp(prefix="mlops-reproduce-"))
    path = base / "worktree"
    try:
        added = _git(root, "worktree", "add", "--detach", str(path), commit)
        if added.returncode != 0:
            raise CannotReproduce(f"`git worktree add` of {commit} failed: {added.stderr.strip()}")
        yield path
    finally:
        _git(root, "worktree", "remove", "--force", str(path))
        shutil.rmtree(base, ignore_errors=True)
        _git(root, "worktree", "prune")


def share_cache_and_remote(tree: Path, root: Path) -> None:
    """The worktree uses this repo's DVC cache and default remote (in its own, untracked config.local)."""
    from dvc.repo import Repo

    with Repo(str(root)) as here:
        name = here.config["core"].get("remote")
        remote = dict(here.config.get("remote", {}).get(name) or {}) if name else {}
    with Repo(str(tree)) as repo, repo.config.edit("local") as conf:
        conf["cache"]["dir"] = str(cache_dir(root).parent.parent)
        if remote:
            conf["remote"][name] = remote
            conf["core"]["remote"] = name


def pin_raw_data(tree: Path, raw_md5: str) -> bool:
    """Make the worktree's data.dvc record ``raw_md5`` for data/raw; True when it had to be rewritten.

    run.sh records data with `dvc commit -f data.dvc` and trains before data.dvc is committed, so the commit's
    data.dvc may name another version (or none): the lineage's md5 is what the model was trained on.
    """
    dvc_file = tree / "data.dvc"
    recorded = yaml.safe_load(dvc_file.read_text()) if dvc_file.is_file() else None
    outs = (recorded or {}).get("outs") or []
    if any(o.get("path", "").rstrip("/") == RAW and o.get("md5") == raw_md5 for o in outs if isinstance(o, dict)):
        return False
    dvc_file.write_text(yaml.safe_dump({"outs": [{"path": RAW, "md5": raw_md5, "hash": "md5"}]}, sort_keys=False))
    return True


def rebuild_env(tree: Path, home: Path, lineage: Lineage) -> dict[str, str]:
    """The commit's code first on the path, a fresh MLOPS_HOME, none of this shell's stores or settings files,
    and the CPU dispatch the version was trained with (its ``runtime`` tags), when it recorded one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_", "PYTHONPATH"))}
    env.update(
        MLOPS_HOME=str(home),
        MLOPS_ENV_FILE="",
        PYTHONPATH=str(tree),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        GIT_PYTHON_REFRESH="quiet",
    )
    # The validate stage accepts a data.dvc written just before the run when it names this version (as run.sh).
    env[ACCEPTED_ENV] = lineage.raw_md5
    if lineage.runtime.get("dispatch"):
        env["MLOPS_CPU_DISPATCH"] = lineage.runtime["dispatch"]
    for pin in lineage.runtime.get("pins", "").split():  # NAME=value; an empty value was unset
        name, _, value = pin.partition("=")
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    return env


def run_logged(
    cmd: list[str], cwd: Path, env: dict[str, str], log: Path, on_line: Callable[[str], None] | None = None
) -> int:
    """Run ``cmd`` in its own process group with its output appended to ``log``; feed its lines to ``on_line``.

    On any exception while waiting (Ctrl-C, SIGTERM, a test timeout) the whole group is stopped first.
    """
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        start = out.tell()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        with open(log, "rb") as follow:
            follow.seek(start)
            pending = b""
            while proc.poll() is None:
                time.sleep(0.5)
                pending = _feed(pending + follow.read(), on_line)
            _feed(pending + follow.read() + b"\n", on_line)
    except BaseException:
        stop_group(proc)
        raise
    return proc.returncode


def _feed(data: bytes, on_line: Callable[[str], None] | None) -> bytes:
    """Hand the complete lines of ``data`` to ``on_line``; return the incomplete rest."""
    *lines, rest = data.split(b"\n")
    for line in lines:
        text = line.decode(errors="replace").strip()
        if on_line is not None and text:
            on_line(text)
    return rest


def stop_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process group, then SIGKILL whatever of it is left after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM/SIGHUP become KeyboardInterrupt while rebuilding, so the group and the worktree are cleaned up."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    before = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _step(cmd: list[str], tree: Path, env: dict[str, str], log: Path, what: str, on_line=None) -> None:
    if run_logged(cmd, tree, env, log, on_line) != 0:
        raise RebuildFailed(f"{what} failed; see the log {log}")


def rebuild(
    lineage: Lineage, root: Path, location: str, log: Path, on_progress: Callable[[str], None] | None = None
) -> Rebuilt:
    """Rebuild ``lineage``'s arm in a temporary worktree: its weights' digest and its train run's record.

    ``location`` ('cache' or 'remote', from :func:`data_location`) says how the data version is checked out.
    """
    dvc = str(BIN / "dvc") if (BIN / "dvc").is_file() else "dvc"
    say = on_progress or (lambda _msg: None)
    with sigterm_raises(), worktree(root, lineage.commit) as tree:
        home = tree.parent / "mlops-home"
        env = rebuild_env(tree, home, lineage)
        share_cache_and_remote(tree, root)
        rewritten = pin_raw_data(tree, lineage.raw_md5)
        with open(log, "a") as out:
            out.write(f"worktree {tree} at {lineage.commit}; MLOPS_HOME {home}; data {lineage.raw_md5} ({location})")
            out.write(" (data.dvc rewritten to it)\n" if rewritten else "\n")
        say(f"data {lineage.raw_md5[:12]} from the {location}")
        fetch = ["checkout"] if location == "cache" else ["pull"]
        _step([dvc, *fetch, "data.dvc"], tree, env, log, f"dvc {fetch[0]} of the data version")
        _check_params(lineage, tree, env)

        def on_line(line: str) -> None:
            if line.startswith("Running stage "):
                say("stage " + line.removeprefix("Running stage ").rstrip(":").strip("'"))

        stage = f"train@{lineage.task}"
        repro = [dvc, "repro", "--force", "--no-run-cache", "--no-commit", stage]
        _step(repro, tree, env, log, f"`dvc repro {stage}` at {lineage.commit[:12]}", on_line)
        digest = weights_digest(tree / "models" / lineage.task / lineage.arm)
        tags, params = rebuilt_run(home, lineage.task, lineage.arm)
        tags.setdefault(f"{TAG}data.prepared_md5", _prepared_md5(tree, lineage.task))
        return Rebuilt(digest, tags, params)


def rebuilt_run(home: Path, task: str, arm: str) -> tuple[dict[str, str], dict[str, str]]:
    """Tags and params of the rebuild's train run of ``arm``, from the rebuild's own MLflow store."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(task)
    if experiment is None:
        return {}, {}
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG}run_kind` = 'train' and tags.`{TAG}arm` = '{arm}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return (dict(runs[0].data.tags), dict(runs[0].data.params)) if runs else ({}, {})


def differences(lineage: Lineage, original_params: dict[str, str], rebuilt: Rebuilt) -> list[str]:
    """Where the rebuild's train run differs from the original's: hyperparameters (the sweep chose others), the
    params hash, the numeric runtime (torch version, CPU capability, dispatch pins)."""
    found = [
        f"hyperparameter {k}: original {original_params[k]}, rebuilt {rebuilt.params[k]}"
        for k in sorted(original_params.keys() & rebuilt.params.keys())
        if original_params[k] != rebuilt.params[k]
    ]
    params_hash = rebuilt.tags.get(f"{TAG}params_hash")
    if lineage.params_hash and params_hash and params_hash != lineage.params_hash:
        found.append(f"params hash: original {lineage.params_hash}, rebuilt {params_hash}")
    for key, value in sorted(lineage.runtime.items()):
        again = rebuilt.tags.get(f"{RUNTIME}{key}")
        if again is not None and again != value:
            found.append(f"runtime {key}: original {value!r}, rebuilt {again!r}")
    return found


def _check_params(lineage: Lineage, tree: Path, env: dict[str, str]) -> None:
    """The commit's params.yaml must hash (with the commit's code) to the version's params hash."""
    if not lineage.params_hash:
        return
    # load_params lives in mlops.params since the layering of issue 17, in mlops.config at earlier commits
    code = "\n".join(
        (
            "try:",
            "    from mlops.params import load_params",
            "except ImportError:",
            "    from mlops.config import load_params",
            f"print(load_params('params.yaml').digest({lineage.task!r}))",
        )
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    found = out.stdout.strip()
    if out.returncode != 0:
        raise CannotReproduce(
            f"could not read params.yaml at {lineage.commit[:12]} with that commit's code:\n{out.stderr}"
        )
    if found != lineage.params_hash:
        raise CannotReproduce(
            f"params.yaml at {lineage.commit[:12]} hashes to {found}, but {lineage.task} v{lineage.version} was "
            f"trained with params hash {lineage.params_hash}: the version's lineage does not describe that commit"
        )


def _prepared_md5(tree: Path, task: str) -> str:
    lock = tree / "dvc.lock"
    stages = lock_stages(lock.read_text() if lock.is_file() else None)
    return lock_md5(stages, f"prepare@{task}", f"data/prepared/{task}", "outs") or "unknown"


# --- recording the outcome ----------------------------------------------------------------------------


def record(settings: Settings, outcome: Outcome, actor: str, attempts: int = 30) -> None:
    """Tags on the version and a ``reproduce`` event in the task's release history (under its release lock)."""
    from mlops.registry.history import PromotionConflict, new_event
    from mlops.registry.release import _holder, open_history
    from mlops.registry.versions import client

    ln = outcome.lineage
    c = client()
    verdict = "match" if outcome.match else "mismatch"
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in (
        (REPRODUCED, verdict),
        (REPRODUCED_DIGEST, outcome.digest),
        (REPRODUCED_AT, now),
        (REPRODUCED_COMMIT, ln.commit),
    ):
        c.set_model_version_tag(ln.task, ln.version, key, value)
    detail = (
        f"rebuilt weights sha256 {outcome.digest}, registered {ln.weights}; commit {ln.commit}; data {ln.raw_md5}; "
        f"log {outcome.log}"
    )
    gates = {"reproduced": {"passed": outcome.match, "detail": detail}}
    history = open_history(settings)
    for attempt in range(attempts):
        try:
            with history.release_lock(ln.task, _holder()):
                last = history.last(ln.task)
                event = new_event(last, ln.task, "", ACTION, None, ln.version, actor, verdict, False, gates)
                history.append(event)
            return
        except PromotionConflict:
            if attempt == attempts - 1:
                raise
            time.sleep(1)


# --- the command ----------------------------------------------------------------------------------------


def reproduce(
    task: str,
    version: str,
    settings: Settings,
    repo: Path = Path("."),
    actor: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Outcome:
    """Rebuild ``task`` ``version`` (number or alias) from its lineage, compare, record; the outcome."""
    from mlops.registry.release import _resolve
    from mlops.registry.versions import client
    from mlops.tracking.runs import connect

    connect(settings)
    lineage = lineage_of(task, _resolve(client(), task, version))
    root = repo_root(repo)
    require_commit(root, lineage.commit)
    location = data_location(root, lineage.raw_md5)
    log_dir = settings.home_dir / "reproduce"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{task}-v{lineage.version}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.log"
    started = time.monotonic()
    rebuilt = rebuild(lineage, root, location, log, on_progress)
    connect(settings)
    original = _run_params(lineage.run_id)
    prepared = rebuilt.tags.get(f"{TAG}data.prepared_md5", "unknown")
    found = tuple(differences(lineage, original, rebuilt))
    outcome = Outcome(lineage, rebuilt.digest, prepared, log, time.monotonic() - started, found)
    record(settings, outcome, actor or default_actor())
    return outcome


def _run_params(run_id: str) -> dict[str, str]:
    """The hyperparameters the version's train run logged (empty when the run is gone)."""
    from mlflow.exceptions import MlflowException

    from mlops.registry.versions import client

    if not run_id:
        return {}
    try:
        return dict(client().get_run(run_id).data.params)
    except MlflowException:
        return {}


def default_actor() -> str:
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()}"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=120, check=False)
