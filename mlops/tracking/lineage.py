"""Lineage: what every run (and the model version made from it) records about its origins.

git commit + dirty flag, the DVC hashes of the raw and prepared data read, the params hash, the
validation result, task and sweep ids, and the DVC experiment a `dvc exp run` made the run in. From a
served prediction one walks back: model version -> run -> data version -> validation result -> commit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mlops.runtime import runtime_tags
from mlops.validation import ValidationReport
from mlops.validation.records import validated_at

TAG = "mlops."  # every tag the platform writes (MLflow runs and versions, Optuna trials) starts with this prefix
#: MLflow tag (train run and model version) holding ``inference.model_files.weights_digest`` of the model's weights
WEIGHTS_TAG = f"{TAG}weights_sha256"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_commit() -> str:
    return _git("rev-parse", "HEAD") or "unknown"


#: tracked files whose changes do not make a run "dirty" (see git_dirty)
#: what the pipeline itself writes: outputs (reports/, which dvc.lock pins) are not the code a result came from
DIRTY_EXEMPT = ("dvc.lock", "data.dvc", "reports")


def git_dirty() -> bool:
    """Tracked source files differ from the commit.

    dvc.lock and reports/, rewritten by every repro, do not count; nor does data.dvc, which run.sh re-records before
    training on new data: the data version is its own tag, data.raw_md5, and `registry reproduce` checks that version
    out whatever the commit's data.dvc says."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":(exclude){p}" for p in DIRTY_EXEMPT))
    return bool(status)


def dvc_hash(path: Path | str, root: Path = Path(".")) -> str:
    """The md5 DVC recorded for ``path`` (or the tracked folder containing it), from *.dvc or dvc.lock.

    Returns 'untracked' when DVC records no hash for it (data not yet added or reproduced).
    """
    from mlops.data.versions import recorded_versions

    target = Path(path).as_posix().rstrip("/")
    recorded = recorded_versions(root, None)
    owners = [p for p in recorded if target == p or target.startswith(p + "/")]
    return recorded[max(owners, key=len)] if owners else "untracked"


#: environment variables `dvc exp run` sets for its stages -> the tag each becomes (absent under `dvc repro`)
DVC_EXPERIMENT_ENV = {"DVC_EXP_NAME": f"{TAG}dvc.exp_name", "DVC_EXP_BASELINE_REV": f"{TAG}dvc.exp_baseline"}


def dvc_experiment_tags() -> dict[str, str]:
    """The DVC experiment (name, baseline commit) this stage runs in, so `dvc exp show` rows and MLflow runs join."""
    return {tag: os.environ[var] for var, tag in DVC_EXPERIMENT_ENV.items() if os.environ.get(var)}


def lineage_tags(
    task: str,
    raw_dir: Path,
    prepared_dir: Path,
    params_digest: str,
    validation_report: Path,
    sweep_id: str | None = None,
) -> dict[str, str]:
    report = ValidationReport.read(validation_report)
    tags = {
        f"{TAG}task": task,
        f"{TAG}git_commit": git_commit(),
        f"{TAG}git_dirty": str(git_dirty()).lower(),
        f"{TAG}data.raw_path": str(raw_dir),
        # data/raw as a whole, as data.dvc records it: the version `registry reproduce` checks out
        f"{TAG}data.raw_md5": dvc_hash(raw_dir),
        # this task's own folder of it, the hash dvc.lock (validate/prepare deps) and the audit show
        f"{TAG}data.task_raw_md5": report.data_version or "unknown",
        f"{TAG}data.prepared_path": str(prepared_dir),
        f"{TAG}data.prepared_md5": dvc_hash(prepared_dir),
        f"{TAG}params_hash": params_digest,
        f"{TAG}validation.success": str(report.success).lower(),
        f"{TAG}validation.report": str(validation_report),
        # When this data version was validated (its history record; the report itself holds no time).
        f"{TAG}validation.at": validated_at(report) or "unknown",
        # The Data Docs page of the result this run trained on (kept per data version).
        f"{TAG}validation.docs": report.docs or "",
    }
    tags |= dvc_experiment_tags()
    tags |= runtime_tags(TAG)  # the CPU and dispatch the numbers came from (mlops/runtime.py)
    if sweep_id:
        tags[f"{TAG}sweep_id"] = sweep_id
    return tags
