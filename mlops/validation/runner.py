"""Runs a task's expectation suite over its per-sample manifest and writes a readable report.

Great Expectations is built for tables, so each task computes a manifest with one row per sample
(file checks, shape, intensity statistics, content hash, labels) and its suite tests that table.
Given a history folder, the run also bounds the intensity distribution by the previous accepted
version's and keeps its result per data version with a Data Docs page (``records.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from mlops.validation.columns import declared
from mlops.validation.drift import drift_expectations
from mlops.validation.profile import profile
from mlops.validation.records import latest_accepted, save_record


class Validatable(Protocol):
    """What validation needs of a task (``mlops.tasks.Task`` has it; validation sits below the tasks)."""

    name: str

    def manifest(self, raw_dir: Path, params: Any) -> pd.DataFrame: ...

    def expectations(self, params: Any) -> Iterable[Any]: ...


class ValidationFailed(RuntimeError):
    """The data did not pass its suite; the message lists the failed expectations and samples."""


@dataclass
class Failure:
    expectation: str
    column: str | None
    unexpected_count: int | None
    samples: list[str]
    values: list[Any]
    note: str = ""  # what a bound was relative to (drift)
    bounds: dict[str, Any] = field(default_factory=dict)  # the expectation's bounds / allowed set

    def line(self) -> str:
        where = f" on {self.column}" if self.column else ""
        count = f" ({self.unexpected_count} rows)" if self.unexpected_count is not None else ""
        if self.samples:
            shown = f"; e.g. samples {self.samples[:5]} values {self.values[:5]}"
        elif self.values:
            shown = f"; observed {self.values[:5]}"
        else:
            shown = ""
        allowed = f"; expected {self.bounds}" if self.bounds else ""
        note = f" ({self.note})" if self.note else ""
        return f"{self.expectation}{where}{count}{shown}{allowed}{note}"


@dataclass
class ValidationReport:
    """The validate stage's result (a DVC out): what the data is and how it fared, never when or where it was
    checked. The time a version was validated is kept in its history record (``records.py``)."""

    task: str
    raw_dir: str
    success: bool
    evaluated: int
    failed: int
    n_samples: int
    failures: list[Failure] = field(default_factory=list)
    #: DVC md5 of the validated folder (the version dvc.lock records for it)
    data_version: str | None = None
    #: sample count, label distribution, intensity statistics (profile.py)
    profile: dict[str, Any] = field(default_factory=dict)
    #: the accepted version the drift bounds were measured against (None: none yet, drift not checked)
    baseline: str | None = None
    #: this version's Data Docs page (kept when validated with a history folder)
    docs: str | None = None

    def summary(self) -> str:
        passed = self.evaluated - self.failed
        head = f"{self.task}: {passed}/{self.evaluated} expectations passed on {self.n_samples} samples"
        if self.data_version:
            head += f" (data version {self.data_version})"
        lines = [head, *(f"  FAILED {f.line()}" for f in self.failures)]
        if self.docs:
            lines.append(f"  Data Docs: {self.docs}")
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, default=str))

    @classmethod
    def read(cls, path: Path) -> ValidationReport:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing: run `mlops data validate` (the validate stage) first")
        data = json.loads(Path(path).read_text())
        data["failures"] = [Failure(**f) for f in data.get("failures", [])]
        known = {f.name for f in fields(cls)}  # a history record (or an older report) holds more: validated_at
        return cls(**{k: v for k, v in data.items() if k in known})


def _quiet_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def validate_dataset(task: Validatable, raw_dir: Path, params: Any, history: Path | None = None) -> ValidationReport:
    """Validate ``raw_dir`` with the task's suite. A missing layout is a failed report, not a crash.

    With ``history``: also bound the intensity distribution by the latest accepted version kept there
    (``params.validation.drift``), and keep this result there per data version with its Data Docs page.
    """
    from mlops.data.versions import folder_md5

    if not raw_dir.is_dir():
        failure = Failure(f"dataset folder exists ({raw_dir})", None, None, [], [])
        return ValidationReport(task.name, str(raw_dir), False, 1, 1, 0, [failure])
    version = folder_md5(raw_dir)
    try:
        manifest = task.manifest(raw_dir, params)
    except ValueError as exc:
        failure = Failure(str(exc), None, None, [], [])
        return ValidationReport(task.name, str(raw_dir), False, 1, 1, 0, [failure], data_version=version)

    expectations = list(task.expectations(params))
    baseline = latest_accepted(history, task.name, version) if history is not None else None
    if baseline is not None:
        expectations += drift_expectations(baseline["profile"], baseline["data_version"], params.validation.drift)
    result = _run_suite(task.name, manifest, expectations)

    sample_ids = manifest.iloc[:, 0].astype(str).tolist()
    stats = result.statistics
    report = ValidationReport(
        task=task.name,
        raw_dir=str(raw_dir),
        success=bool(result.success),
        evaluated=int(stats["evaluated_expectations"]),
        failed=int(stats["unsuccessful_expectations"]),
        n_samples=len(manifest),
        failures=[_failure(r, sample_ids) for r in result.results if not r.success],
        data_version=version,
        profile=profile(manifest),
        baseline=baseline["data_version"] if baseline is not None else None,
    )
    if history is not None:
        save_record(history, report, result.to_json_dict(), _sample_hashes(manifest))
    return report


def _run_suite(name: str, manifest: Any, expectations: list[Any]) -> Any:
    import great_expectations as gx

    context = _quiet_context()
    batch = (
        context.data_sources.add_pandas(name)
        .add_dataframe_asset("manifest")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_raw"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=suite, name="raw"))
    return definition.run(batch_parameters={"dataframe": manifest}, result_format={"result_format": "COMPLETE"})


_BOUND_KEYS = ("min_value", "max_value", "value_set")


def _failure(r: Any, sample_ids: list[str]) -> Failure:
    cfg = r.expectation_config
    rows = r.result.get("unexpected_index_list") or []
    observed = r.result.get("partial_unexpected_list")
    if observed is None:
        observed = r.result.get("observed_value")
    values = observed if isinstance(observed, list) else [observed]
    return Failure(
        expectation=cfg.type,
        column=cfg.kwargs.get("column"),
        unexpected_count=r.result.get("unexpected_count"),
        samples=[sample_ids[i] for i in rows[:20] if isinstance(i, int)],
        values=[_plain(v) for v in values[:20]],
        note=str((cfg.meta or {}).get("note", "")),
        bounds={k: _plain(cfg.kwargs[k]) for k in _BOUND_KEYS if cfg.kwargs.get(k) is not None},
    )


def _sample_hashes(manifest: Any) -> dict[str, str]:
    cols = declared(manifest)
    column = cols.content_hash if cols else "content_hash"
    if column not in manifest:
        return {}
    ids = manifest.iloc[:, 0].astype(str)
    return {i: str(h) for i, h in zip(ids, manifest[column], strict=True) if isinstance(h, str)}


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def require_valid(report_path: Path) -> ValidationReport:
    """Refuse to go on when the dataset's validation failed (the pipeline's gate before training)."""
    report = ValidationReport.read(report_path)
    if not report.success:
        raise ValidationFailed(
            f"refusing to use data that failed validation ({report_path}):\n{report.summary()}\n"
            "Fix the data (or the bounds in params.yaml if they are wrong), then rerun `dvc repro`."
        )
    return report
