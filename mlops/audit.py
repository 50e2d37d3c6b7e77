"""The data steward's audit of one task: every data version, its validation, its changes, who trained on it.

Sources, each the authority for its part:
- git history of the task's `*.dvc` file and `dvc.lock`: which raw and prepared versions existed, when,
  by whom (the commit), and the validation report committed with each;
- the validation history folder (``--history`` of the validate stage in dvc.yaml): per-version GX
  results, Data Docs pages and sample hashes;
- the DVC cache: a version's file listing (file-level changes), and its files when a version was never
  validated (the audit then profiles and validates it with today's suite, and says so);
- MLflow: runs and registered versions by their lineage tags (``mlops.data.*``), the champion alias;
- the review queue of contributed samples, where the task has one (``mlops.members.review.pending``).
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops.data.versions import (
    cache_dir,
    commits_touching,
    listing_md5,
    lock_md5,
    lock_stages,
    object_path,
    read_dir_object,
    show,
    sub_listing,
    tracking,
    workspace_lock_stages,
)
from mlops.validation.profile import label_distribution
from mlops.validation.records import DOCS, record_of, samples_of, validated_at, version_dir

# Stage names of dvc.yaml whose (resolved) entries in dvc.lock say where a task's data and reports are.
VALIDATE_STAGE, PREPARE_STAGE = "validate", "prepare"
WORKSPACE = "workspace"  # the not-yet-committed state, shown after the last commit


class AuditError(ValueError):
    """The repo lacks what the audit reads; the message says what to run."""


def _option(cmd: str, name: str) -> str | None:
    words = shlex.split(cmd)
    return words[words.index(name) + 1] if name in words[:-1] else None


def task_paths(root: Path, task: str) -> dict[str, str | None]:
    """Raw folder, report, history folder and prepared folder of ``task``, from the resolved stages in dvc.lock."""
    stages = workspace_lock_stages(root)
    validate = stages.get(f"{VALIDATE_STAGE}@{task}")
    if validate is None:
        stage = f"{VALIDATE_STAGE}@{task}"
        raise AuditError(f"dvc.lock has no {stage} stage: run `dvc repro {stage}` first")
    cmd = validate.get("cmd", "")
    cmd = " ".join(cmd) if isinstance(cmd, list) else cmd
    prepared = [o["path"] for o in stages.get(f"{PREPARE_STAGE}@{task}", {}).get("outs", [])]
    return {
        "raw": _option(cmd, "--raw"),
        "report": _option(cmd, "--report"),
        "history": _option(cmd, "--history"),
        "prepared": prepared[0].rstrip("/") if prepared else None,
    }


# --- versions from git history -----------------------------------------------------------------------


def _snapshots(root: Path, dvc_file: str, report: str) -> list[dict[str, Any]]:
    """(commit, data.dvc text, dvc.lock text, report text) for each commit touching them, then the workspace."""
    snaps = []
    for c in commits_touching(root, dvc_file, "dvc.lock", report):
        snaps.append(
            {
                "commit": c.sha,
                "author": c.author,
                "date": c.date,
                "subject": c.subject,
                "dvc": show(root, c.sha, dvc_file),
                "lock": show(root, c.sha, "dvc.lock"),
                "report": show(root, c.sha, report),
            }
        )
    here = {
        name: (root / path).read_text() if (root / path).is_file() else None
        for name, path in (("dvc", dvc_file), ("lock", "dvc.lock"), ("report", report))
    }
    last = snaps[-1] if snaps else {}
    if any(here[k] != last.get(k) for k in here):
        now = datetime.now(UTC).isoformat(timespec="seconds")
        snaps.append({"commit": WORKSPACE, "author": "(uncommitted)", "date": now, "subject": "", **here})
    return snaps


def _whole_md5(text: str | None, tracked_path: str) -> str | None:
    import yaml

    for out in (yaml.safe_load(text or "") or {}).get("outs", []):
        if isinstance(out, dict) and out.get("path", "").rstrip("/") == tracked_path:
            return out.get("md5")
    return None


def collect_versions(root: Path, task: str, paths: dict[str, str | None]) -> dict[str, Any]:
    raw, report_path = paths["raw"], paths["report"]
    tracked = tracking(root, raw)
    if tracked is None:
        raise AuditError(f"{raw} is not tracked by a *.dvc file: run `dvc add` on its data folder first")
    objects = cache_dir(root)
    prefix = raw[len(tracked.path) + 1 :] if raw != tracked.path else ""
    raw_versions: dict[str, dict] = {}
    prepared_versions: dict[str, dict] = {}
    whole_to_task: dict[str, str] = {}

    def seen(table: dict, md5: str, snap: dict, how: str) -> dict:
        entry = table.setdefault(
            md5,
            {"version": md5, "commit": snap["commit"], "date": snap["date"], "author": snap["author"],
             "subject": snap["subject"], "commits": [], "recorded_by": []},
        )  # fmt: skip
        if snap["commit"] not in entry["commits"]:
            entry["commits"].append(snap["commit"])
        if how not in entry["recorded_by"]:
            entry["recorded_by"].append(how)
        return entry

    for snap in _snapshots(root, tracked.dvc_file.name, report_path):
        stages = lock_stages(snap["lock"])
        whole = _whole_md5(snap["dvc"], tracked.path)
        if whole:
            listing = read_dir_object(objects, whole)
            if listing is not None:
                part = sub_listing(listing, prefix) if prefix else listing
                task_md5 = listing_md5(part)
                whole_to_task[whole] = task_md5
                seen(raw_versions, task_md5, snap, tracked.dvc_file.name)
        validated = lock_md5(stages, f"{VALIDATE_STAGE}@{task}", raw, "deps")
        if validated:
            entry = seen(raw_versions, validated, snap, "dvc.lock")
            if whole and whole not in whole_to_task:
                whole_to_task[whole] = validated
            report = _report_of(snap["report"], validated)
            if report is not None:
                entry["committed_report"] = {**report, "commit": snap["commit"]}
        prepared = lock_md5(stages, f"{PREPARE_STAGE}@{task}", paths["prepared"] or "", "outs")
        if prepared:
            entry = seen(prepared_versions, prepared, snap, "dvc.lock")
            entry["raw_version"] = lock_md5(stages, f"{PREPARE_STAGE}@{task}", raw, "deps")
    return {"raw": raw_versions, "prepared": prepared_versions, "whole_to_task": whole_to_task, "prefix": prefix}


def _report_of(text: str | None, version: str) -> dict | None:
    """The committed report when it is about ``version`` (older reports without data_version are taken as is)."""
    if not text:
        return None
    try:
        report = json.loads(text)
    except ValueError:
        return None
    return report if report.get("data_version") in (None, version) else None


# --- validation, profile and files of each version -----------------------------------------------------


def _materialise(objects: Path, listing: dict[str, str], dest: Path) -> bool:
    """Copy a version's files out of the cache; False when an object is missing."""
    for rel, md5 in listing.items():
        src = object_path(objects, md5)
        if not src.is_file():
            return False
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
    return True


def _listing_of(root: Path, version: str, whole_to_task: dict[str, str], prefix: str) -> dict[str, str] | None:
    objects = cache_dir(root)
    own = read_dir_object(objects, version)  # DVC caches a stage dep's listing too (dvc commit / repro)
    if own is not None:
        return own
    for whole, task_md5 in whole_to_task.items():
        if task_md5 == version and (listing := read_dir_object(objects, whole)) is not None:
            return sub_listing(listing, prefix) if prefix else listing
    return None


def describe_versions(
    root: Path, task: str, params: Any, found: dict[str, Any], history: Path | None, docs_dir: Path
) -> list[dict]:
    """Each raw version with its validation (record, committed report, or validated now) and profile."""
    from mlops.tasks import get_task
    from mlops.validation import validate_dataset

    out = []
    for version, entry in found["raw"].items():
        listing = _listing_of(root, version, found["whole_to_task"], found["prefix"])
        entry["n_files"] = len(listing) if listing is not None else None
        entry["listing"] = listing
        record = record_of(history, version) if history else None
        if record is not None:
            entry["validation"] = {**_verdict(record), "source": "validation history (at the time)"}
            entry["profile"] = record.get("profile") or {}
            page = version_dir(history, version) / DOCS
            entry["docs"] = str(page) if page.is_file() else None
        elif "committed_report" in entry:
            report = entry["committed_report"]
            entry["validation"] = {**_verdict(report), "source": f"report committed in {report['commit'][:10]}"}
            entry["profile"] = report.get("profile") or {}
            entry["docs"] = report.get("docs")
        if not entry.get("profile") and listing is not None:
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(tmp) / "data"
                if _materialise(cache_dir(root), listing, data):
                    report = validate_dataset(get_task(task), data, params.task(task), history=Path(tmp) / "h")
                    page = docs_dir / f"{version.removesuffix('.dir')}.html"
                    page.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(report.docs, page)
                    entry["profile"] = report.profile
                    now = {
                        **_verdict(asdict(report)),
                        "validated_at": validated_at(report),
                        "source": "validated by this audit with today's suite",
                    }
                    entry.setdefault("validation", now)
                    entry["docs"] = entry.get("docs") or str(page)
        entry.setdefault("validation", None)
        entry.setdefault("profile", {})
        entry.setdefault("docs", None)
        out.append(entry)
    return out


def _verdict(report: dict) -> dict:
    failures = []
    for f in report.get("failures", []):
        where = f" on {f.get('column')}" if f.get("column") else ""
        samples = f"; samples {f.get('samples')[:5]}" if f.get("samples") else ""
        failures.append(f"{f.get('expectation')}{where}{samples}")
    return {
        "success": bool(report.get("success")),
        "evaluated": report.get("evaluated"),
        "failed": report.get("failed"),
        "validated_at": report.get("validated_at"),
        "baseline": report.get("baseline"),
        "failures": failures,
    }


# --- what changed between consecutive versions ------------------------------------------------------------


def changes(versions: list[dict], history: Path | None) -> list[dict]:
    found = []
    for before, after in zip(versions, versions[1:], strict=False):
        change: dict[str, Any] = {"from": before["version"], "to": after["version"]}
        a, b = before.get("listing"), after.get("listing")
        if a is not None and b is not None:
            change["files"] = {
                "added": sorted(set(b) - set(a)),
                "removed": sorted(set(a) - set(b)),
                "modified": sorted(k for k in set(a) & set(b) if a[k] != b[k]),
            }
        sa = samples_of(history, before["version"]) if history else None
        sb = samples_of(history, after["version"]) if history else None
        if sa is not None and sb is not None:
            change["samples"] = {
                "added": sorted(set(sb) - set(sa)),
                "removed": sorted(set(sa) - set(sb)),
                "changed": sorted(k for k in set(sa) & set(sb) if sa[k] != sb[k]),
            }
        change["shift"] = shift(before.get("profile") or {}, after.get("profile") or {})
        found.append(change)
    return found


def shift(before: dict, after: dict) -> dict[str, Any]:
    """Intensity shift in units of the earlier spread; label shares and their total variation distance."""
    out: dict[str, Any] = {}
    ia, ib = before.get("intensity") or {}, after.get("intensity") or {}
    if ia.get("n") and ib.get("n"):
        spread = max(ia["std"], 1e-9)
        out["intensity"] = {
            "column": ib["column"],
            "mean_before": ia["mean"],
            "mean_after": ib["mean"],
            "mean_shift_in_std": (ib["mean"] - ia["mean"]) / spread,
            "std_ratio": ib["std"] / spread,
        }
    la, lb = label_distribution(before), label_distribution(after)
    if la or lb:
        keys = sorted(set(la) | set(lb))
        out["labels"] = {k: {"before": la.get(k, 0.0), "after": lb.get(k, 0.0)} for k in keys}
        out["label_tv_distance"] = 0.5 * sum(abs(la.get(k, 0.0) - lb.get(k, 0.0)) for k in keys)
    return out


# --- MLflow runs and registered versions ----------------------------------------------------------------


def lineage(settings: Any, task: str) -> dict[str, Any]:
    """Runs and registered versions of ``task`` with their lineage tags; the champion's version."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from mlops.registry.versions import CHAMPION
    from mlops.tracking.lineage import TAG
    from mlops.tracking.runs import connect

    connect(settings)
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.`{TAG}task` = '{task}'", output_format="list"
    )
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{task}'")
    except MlflowException:
        versions = []
    try:
        champion = client.get_model_version_by_alias(task, CHAMPION).version
    except MlflowException:
        champion = None
    return {
        "runs": [
            {
                "run_id": r.info.run_id,
                "name": r.info.run_name,
                "status": r.info.status,
                "started": datetime.fromtimestamp(r.info.start_time / 1000, UTC).isoformat(timespec="seconds"),
                "trial": "mlflow.parentRunId" in r.data.tags,
                "raw_md5": r.data.tags.get(f"{TAG}data.raw_md5"),
                "prepared_md5": r.data.tags.get(f"{TAG}data.prepared_md5"),
                "validation": r.data.tags.get(f"{TAG}validation.docs") or r.data.tags.get(f"{TAG}validation.report"),
            }
            for r in runs
        ],
        "model_versions": [
            {
                "version": mv.version,
                "run_id": mv.run_id,
                "aliases": list(getattr(mv, "aliases", []) or []),
                "champion": mv.version == champion,
                "raw_md5": mv.tags.get(f"{TAG}data.raw_md5"),
                "prepared_md5": mv.tags.get(f"{TAG}data.prepared_md5"),
            }
            for mv in sorted(versions, key=lambda v: int(v.version))
        ],
        "champion": champion,
    }


def _attach_lineage(raw: list[dict], prepared: list[dict], used: dict[str, Any], whole_to_task: dict) -> None:
    """Put each run and model version under the raw and prepared version it read."""
    prepared_to_raw = {p["version"]: p.get("raw_version") for p in prepared}
    by_raw = {v["version"]: v for v in raw}
    by_prepared = {p["version"]: p for p in prepared}
    for kind in ("runs", "model_versions"):
        for item in used[kind]:
            task_md5 = prepared_to_raw.get(item["prepared_md5"]) or whole_to_task.get(item["raw_md5"])
            for owner in (by_raw.get(task_md5), by_prepared.get(item["prepared_md5"])):
                if owner is not None:
                    owner.setdefault(kind, []).append(item)


def pending_review(task: str, settings: Any) -> dict[str, Any]:
    """Contributed samples waiting for the steward (hook: ``mlops.members.review.pending(task)``)."""
    try:
        from mlops.members.review import pending
    except ImportError:
        return {"available": False, "samples": [], "note": "no review queue is installed (mlops.members.review)"}
    try:
        return {"available": True, "samples": list(pending(task, settings)), "note": ""}
    except Exception as exc:  # the queue's database may be unreachable: say so in the report, do not fail it
        return {"available": True, "samples": [], "note": f"review queue unreadable: {exc}"}


# --- the whole audit --------------------------------------------------------------------------------------


def audit(root: Path, task: str, params: Any, settings: Any, docs_dir: Path) -> dict[str, Any]:
    """Everything the report shows; Data Docs of versions validated by the audit itself go to ``docs_dir``."""
    paths = task_paths(root, task)
    history = root / paths["history"] if paths["history"] else None
    found = collect_versions(root, task, paths)
    raw = describe_versions(root, task, params, found, history, docs_dir)
    prepared = list(found["prepared"].values())
    try:
        used = lineage(settings, task)
    except Exception as exc:  # no tracking store reachable: the data part of the audit still stands
        used = {"runs": [], "model_versions": [], "champion": None, "error": str(exc)}
    _attach_lineage(raw, prepared, used, found["whole_to_task"])
    result = {
        "task": task,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "paths": paths,
        "raw_versions": raw,
        "prepared_versions": prepared,
        "changes": changes(raw, history),
        "champion": used.get("champion"),
        "lineage_error": used.get("error"),
        "unlinked_runs": [r for r in used["runs"] if not any(r in v.get("runs", []) for v in raw)],
        "pending_review": pending_review(task, settings),
    }
    for v in raw:
        v.pop("listing", None)
        v.pop("committed_report", None)
    return result
