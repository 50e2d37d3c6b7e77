"""Is the data on disk the version DVC recorded, and are the recorded objects intact?

``status``: files under a tracked folder that differ from the `.dir` listing its `*.dvc` file names
(changed without a new `dvc add`). ``verify``: re-hash every object of a version in the local cache
and the default remote; DVC itself trusts a cached object's name and never notices a corrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlops.data.versions import (
    DIR_SUFFIX,
    cache_dir,
    file_md5,
    folder_listing,
    listing_md5,
    lock_stages,
    object_path,
    read_dir_object,
    show,
    sub_listing,
    tracked_outs,
    tracking,
)


class DataChanged(ValueError):
    """The data on disk is not the version DVC recorded; the message says what to do."""


@dataclass
class Status:
    folder: str
    dvc_file: str | None
    recorded: str | None  # md5 the .dvc file records for the tracked folder
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    #: False when the cache lacks the recorded listing: only "differs or not" is known, not which files
    detailed: bool = True
    differs: bool = False

    @property
    def clean(self) -> bool:
        return self.dvc_file is not None and not self.differs

    def message(self) -> str:
        if self.dvc_file is None:
            return f"{self.folder} is not tracked by DVC: run `dvc add` on its data folder, commit the .dvc file."
        if not self.differs:
            return f"{self.folder}: unchanged since {self.dvc_file} (version {self.recorded})"
        parts = [f"{len(v)} {k}: {v[:5]}" for k, v in self._changes().items() if v]
        what = "; ".join(parts) if self.detailed else "(the cache lacks the recorded listing, so not which files)"
        return (
            f"{self.folder} changed since {self.dvc_file} recorded version {self.recorded}: {what}.\n"
            f"If the change is intended: `dvc add {Path(self.dvc_file).stem}` (or `dvc commit {self.dvc_file}`), "
            f"commit {self.dvc_file}, then `dvc repro`.\n"
            f"If not: `dvc checkout {self.dvc_file}` restores the recorded version."
        )

    def _changes(self) -> dict[str, list[str]]:
        return {"added": self.added, "removed": self.removed, "modified": self.modified}

    def to_json(self) -> dict:
        return {
            "folder": self.folder,
            "dvc_file": self.dvc_file,
            "recorded": self.recorded,
            "clean": self.clean,
            "detailed": self.detailed,
            **self._changes(),
        }


def status(root: Path, folder: Path | str) -> Status:
    """Compare ``folder`` (e.g. data/raw/fume_hood) with what its tracking `*.dvc` file records."""
    rel = Path(folder).as_posix().rstrip("/")
    tracked = tracking(root, rel)
    if tracked is None:
        return Status(rel, None, None, differs=True)
    dvc_file = tracked.dvc_file.name
    recorded = read_dir_object(cache_dir(root), tracked.md5) if tracked.md5.endswith(DIR_SUFFIX) else None
    here = root / rel
    current = folder_listing(here) if here.is_dir() else {}
    if recorded is None:
        # Without the listing, hash the whole tracked folder and compare it with the recorded md5.
        whole = root / tracked.path
        differs = not whole.is_dir() or listing_md5(folder_listing(whole)) != tracked.md5
        return Status(rel, dvc_file, tracked.md5, detailed=False, differs=differs)
    if rel != tracked.path:
        recorded = sub_listing(recorded, rel[len(tracked.path) + 1 :])
    result = Status(rel, dvc_file, tracked.md5)
    result.added = sorted(set(current) - set(recorded))
    result.removed = sorted(set(recorded) - set(current))
    result.modified = sorted(k for k in set(current) & set(recorded) if current[k] != recorded[k])
    result.differs = bool(result.added or result.removed or result.modified)
    return result


#: The data version (the .dvc file's md5) the caller recorded on purpose just before `dvc repro`.
ACCEPTED_ENV = "MLOPS_ACCEPTED_DATA_VERSION"


def require_unchanged(root: Path, folder: Path | str) -> Status:
    """The pipeline's gate: refuse data that is not the version DVC recorded before this run started.

    `dvc repro` re-records a changed data source (`data.dvc`) itself before running the stages, so
    inside a run we also refuse a `.dvc` file DVC rewrote moments ago for a folder that differs from
    the version committed to git: the steward looks at the change and reruns to accept it.
    """
    found = status(root, folder)
    if not found.clean:
        raise DataChanged(found.message())
    if found.recorded and os.environ.get(ACCEPTED_ENV) == found.recorded:
        return found  # whoever started this run recorded this version on purpose (run.sh does, after simulating)
    changed = _changed_since_head(root, found) if _rewritten_by_this_run(root / found.dvc_file) else []
    if changed:
        dvc_file = found.dvc_file
        raise DataChanged(
            f"{found.folder} changed without `dvc add` ({len(changed)} files, e.g. {changed[:5]}): this `dvc repro` "
            f"has just re-recorded it in {dvc_file} (now version {found.recorded}).\n"
            f"Look at the change first (`git diff {dvc_file}`, "
            f"`mlops data audit <task>`). If intended: commit {dvc_file} and run `dvc repro` again.\n"
            f"If not: `git checkout {dvc_file} && dvc checkout {dvc_file}` restores the committed version."
        )
    return found


def _rewritten_by_this_run(dvc_file: Path) -> bool:
    """The .dvc file is newer than the `dvc` process running this stage (DVC sets DVC_STAGE for stages)."""
    if "DVC_STAGE" not in os.environ or not dvc_file.is_file():
        return False
    started = _dvc_started()
    return started is not None and dvc_file.stat().st_mtime >= started


def _dvc_started() -> float | None:
    """Start time (epoch s) of the nearest ancestor process running `dvc`; None off Linux or when not found.

    From /proc/uptime (1/100 s), not /proc/stat's whole-second btime: a `dvc commit` just before `dvc repro`
    must not look like a rewrite by the repro itself.
    """
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        now = time.time()
        pid = os.getppid()
        while pid > 1:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if any(Path(a.decode(errors="replace")).name == "dvc" for a in argv[:2]):
                since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in ticks
                return now - (uptime - since_boot)
            pid = int(fields[1])  # field 4: parent pid
    except (OSError, ValueError):
        return None
    return None


def _changed_since_head(root: Path, found: Status) -> list[str]:
    """Files of the folder that differ from the version in the .dvc file committed to git ('?' when unknown)."""
    committed = show(root, "HEAD", found.dvc_file)
    outs = tracked_outs(root, lambda _: committed)
    whole = next((o.md5 for o in outs if f"{found.folder}/".startswith(f"{o.path}/")), None)
    listing = read_dir_object(cache_dir(root), whole) if whole else None
    if listing is None:
        return ["?"]
    tracked = tracking(root, found.folder)
    prefix = found.folder[len(tracked.path) + 1 :] if tracked and found.folder != tracked.path else ""
    before = sub_listing(listing, prefix) if prefix else listing
    now = folder_listing(root / found.folder)
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


# --- verify ------------------------------------------------------------------------------------------


@dataclass
class Verification:
    """Objects of one recorded version, re-hashed in one store (the local cache or a remote)."""

    store: str
    checked: int = 0
    missing: list[str] = field(default_factory=list)  # "<relpath> (<md5>)"
    corrupt: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt

    def to_json(self) -> dict:
        return {"store": self.store, "checked": self.checked, "missing": self.missing, "corrupt": self.corrupt}


def _objects(store_read, md5: str, path: str, result: Verification) -> list[tuple[str, str]]:
    """(label, md5) of every file object of an out; a folder's listing comes from its `.dir` object."""
    if not md5.endswith(DIR_SUFFIX):
        return [(path, md5)]
    data = store_read(md5)
    result.checked += 1
    if data is None:
        result.missing.append(f"{path} listing ({md5})")
        return []
    if file_md5_bytes(data) != md5.removesuffix(DIR_SUFFIX):
        result.corrupt.append(f"{path} listing ({md5})")
        return []
    return [(f"{path}/{e['relpath']}", e["md5"]) for e in json.loads(data)]


def file_md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - DVC's content address


def verify_store(store: str, read, hash_of, outs: dict[str, str]) -> Verification:
    """Check each object of ``outs`` in one store (``read(md5) -> bytes|None``, ``hash_of(md5) -> md5|None``)."""
    result = Verification(store)
    for path, md5 in sorted(outs.items()):
        for label, oid in _objects(read, md5, path, result):
            result.checked += 1
            actual = hash_of(oid)
            if actual is None:
                result.missing.append(f"{label} ({oid})")
            elif actual != oid:
                result.corrupt.append(f"{label} ({oid}, content hashes to {actual})")
    return result


def verify_cache(root: Path, outs: dict[str, str]) -> Verification:
    objects = cache_dir(root)

    def read(md5: str) -> bytes | None:
        path = object_path(objects, md5)
        return path.read_bytes() if path.is_file() else None

    def hash_of(md5: str) -> str | None:
        path = object_path(objects, md5)
        return file_md5(path) if path.is_file() else None

    return verify_store(f"local cache {objects}", read, hash_of, outs)


def verify_remote(root: Path, outs: dict[str, str], remote: str | None = None) -> Verification | None:
    """Same for the default (or named) DVC remote, through DVC's own filesystem for it; None without one."""
    from dvc.repo import Repo

    repo = Repo(str(root))
    try:
        odb = repo.cloud.get_remote_odb(remote, "verify")
    except Exception:  # no remote configured (DVC raises its NoRemoteError)
        return None

    def read(md5: str) -> bytes | None:
        path = odb.oid_to_path(md5)
        return odb.fs.cat_file(path) if odb.fs.exists(path) else None

    def hash_of(md5: str) -> str | None:
        path = odb.oid_to_path(md5)
        if not odb.fs.exists(path):
            return None
        digest = hashlib.md5()  # noqa: S324 - DVC's content address
        with odb.fs.open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    return verify_store(f"remote {odb.path}", read, hash_of, outs)
