"""Data versions as DVC records them: folder hashes, `.dir` listings in the cache, `*.dvc` / `dvc.lock` in git.

DVC names a folder by the md5 of its sorted (relpath, file md5) listing (``<md5>.dir``). We compute that
hash with DVC's own ``dvc_data`` tree, so a version computed here is the one `dvc.lock` and `data.dvc`
record, without running the ``dvc`` command (which would wait for the lock a running ``dvc repro`` holds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

DIR_SUFFIX = ".dir"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - DVC's content address, not a security hash
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_listing(folder: Path) -> dict[str, str]:
    """relpath (posix) -> md5 of every file under ``folder`` (what DVC's `.dir` object lists)."""
    return {p.relative_to(folder).as_posix(): file_md5(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def listing_md5(listing: dict[str, str]) -> str:
    """DVC's hash of a folder with this listing (``<md5>.dir``), computed by DVC's own tree code."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for rel, md5 in listing.items():
        tree.add(tuple(rel.split("/")), Meta(), HashInfo("md5", md5))
    tree.digest()
    return tree.hash_info.value


def folder_md5(folder: Path) -> str:
    return listing_md5(folder_listing(folder))


def sub_listing(listing: dict[str, str], prefix: str) -> dict[str, str]:
    """The part of a parent folder's listing under ``prefix`` (relpaths made relative to it)."""
    head = prefix.strip("/") + "/"
    return {rel[len(head) :]: md5 for rel, md5 in listing.items() if rel.startswith(head)}


# --- the DVC cache -----------------------------------------------------------------------------------


def cache_dir(root: Path) -> Path:
    """The local cache's md5 object folder (honours `cache.dir` in the repo's config)."""
    from dvc.config import Config

    config = Config(dvc_dir=str(root / ".dvc"))
    configured = (config.get("cache") or {}).get("dir")
    # A relative cache.dir is relative to the .dvc folder that holds the config.
    base = root / ".dvc" / (configured or "cache")
    return base.resolve() / "files" / "md5"


def object_path(objects: Path, md5: str) -> Path:
    return objects / md5[:2] / md5[2:]


def read_dir_object(objects: Path, md5: str) -> dict[str, str] | None:
    """The listing a `.dir` object holds, or None when the cache does not have it (not pulled, or corrupt)."""
    path = object_path(objects, md5)
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {e["relpath"]: e["md5"] for e in entries}


# --- what the repo's *.dvc files and dvc.lock record -------------------------------------------------


@dataclass(frozen=True)
class Tracked:
    """A folder tracked by a top-level `*.dvc` file."""

    dvc_file: Path
    path: str  # as written in the .dvc file, relative to the repo root
    md5: str


def tracked_outs(root: Path, text_of=None) -> list[Tracked]:
    """Outs of the top-level `*.dvc` files (``text_of(name)`` reads a file at another revision)."""
    found = []
    for name in [p.name for p in sorted(root.glob("*.dvc")) if p.is_file()]:
        text = (root / name).read_text() if text_of is None else text_of(name)
        for out in (yaml.safe_load(text or "") or {}).get("outs", []):
            if isinstance(out, dict) and "path" in out:
                found.append(Tracked(root / name, out["path"].rstrip("/"), out.get("md5", "")))
    return found


def tracking(root: Path, folder: Path | str) -> Tracked | None:
    """The `*.dvc` out that tracks ``folder`` (itself or a parent), or None."""
    target = Path(folder).as_posix().rstrip("/")
    for t in tracked_outs(root):
        if target == t.path or target.startswith(t.path + "/"):
            return t
    return None


def lock_stages(text: str | None) -> dict[str, dict]:
    return (yaml.safe_load(text or "") or {}).get("stages", {}) if text else {}


def lock_md5(stages: dict[str, dict], stage: str, path: str, kind: str) -> str | None:
    """md5 that ``dvc.lock`` records for ``path`` among ``kind`` ('deps' or 'outs') of ``stage``."""
    for entry in stages.get(stage, {}).get(kind, []):
        if isinstance(entry, dict) and entry.get("path", "").rstrip("/") == path:
            return entry.get("md5")
    return None


#: seconds a reader of dvc.lock waits for DVC's repository lock before it reads without it
REPO_LOCK_WAIT_S = 120.0


@contextlib.contextmanager
def dvc_repo_lock(root: Path, wait_s: float = REPO_LOCK_WAIT_S) -> Iterator[None]:
    """Hold DVC's repository lock (``.dvc/tmp/lock``, the ``flock`` DVC itself takes) for a short read.

    DVC rewrites dvc.lock in place, holding this lock, each time a stage ends. While a stage's command runs its own
    `dvc repro` has released the lock, so the command can take it; with tasks' chains side by side
    (``mlops.pipeline``) another chain's stage may end during the read, and a read without the lock once saw half a
    file. No DVC repository here, or no lock within ``wait_s`` (another DVC command holds it, e.g. a long push): the
    read goes ahead unlocked, and :func:`workspace_lock_stages` retries a file that does not parse."""
    import fcntl

    path = root / ".dvc" / "tmp" / "lock"
    if not path.parent.is_dir():
        yield
        return
    with path.open("a") as handle:
        deadline, locked = time.monotonic() + wait_s, False
        while not locked and time.monotonic() <= deadline:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                time.sleep(0.05)
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def workspace_lock_stages(root: Path, attempts: int = 5) -> dict[str, dict]:
    """The stages of the workspace's dvc.lock (empty if absent), read whole under DVC's repository lock
    (:func:`dvc_repo_lock`) and parsed once."""
    path = root / "dvc.lock"
    for attempt in range(attempts):
        with dvc_repo_lock(root):
            text = path.read_text() if path.is_file() else None
        try:
            return lock_stages(text)
        except yaml.YAMLError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    return {}


def recorded_versions(root: Path, rev: str | None) -> dict[str, str]:
    """path -> md5 of every out the `*.dvc` files and dvc.lock record (in the workspace, or at git ``rev``)."""
    text_of = None if rev is None else (lambda name: show(root, rev, name))
    found = {t.path: t.md5 for t in tracked_outs(root, text_of)}
    stages = workspace_lock_stages(root) if rev is None else lock_stages(show(root, rev, "dvc.lock"))
    for entry in stages.values():
        for out in entry.get("outs", []):
            if isinstance(out, dict) and out.get("md5"):
                found.setdefault(out["path"].rstrip("/"), out["md5"])
    return found


def uncached_outs(root: Path, rev: str | None) -> set[str]:
    """Outputs dvc.yaml declares with ``cache: false`` (reports, metrics, plots): kept in git, never in the cache.

    A ``foreach`` stage's ``${key}``/``${item}`` expand over params.yaml ``tasks`` (at ``rev`` when given).
    """

    def text(name: str) -> str | None:
        if rev is not None:
            return show(root, rev, name)
        return (root / name).read_text() if (root / name).is_file() else None

    stages = (yaml.safe_load(text("dvc.yaml") or "") or {}).get("stages", {})
    tasks = (yaml.safe_load(text("params.yaml") or "") or {}).get("tasks", {}) or {}
    found: set[str] = set()
    for definition in stages.values():
        body = definition.get("do", definition)
        items = tasks.items() if "foreach" in definition else [("", "")]
        for section in ("outs", "metrics", "plots"):
            for entry in body.get(section, []) or []:
                if not isinstance(entry, dict):
                    continue
                for path, options in entry.items():
                    if isinstance(options, dict) and options.get("cache") is False:
                        found |= {path.replace("${key}", k).replace("${item}", str(i)).rstrip("/") for k, i in items}
    return found


# --- git -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str
    date: str
    subject: str


def git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def commits_touching(root: Path, *paths: str) -> list[Commit]:
    """Commits that changed any of ``paths``, oldest first."""
    out = git(root, "log", "--reverse", "--format=%H%x1f%an <%ae>%x1f%aI%x1f%s", "--", *paths) or ""
    return [Commit(*line.split("\x1f", 3)) for line in out.splitlines() if line.count("\x1f") == 3]


def show(root: Path, sha: str, path: str) -> str | None:
    """A file's content at a commit, or None when it did not exist there."""
    return git(root, "show", f"{sha}:{path}")
