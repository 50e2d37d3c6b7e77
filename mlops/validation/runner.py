"""Runs a task's expectation suite over its per-sample manifest and writes a readable report.

Great Expectations is built for tables, so each task computes a manifest with one row per sample
(file checks, shape, intensity statistics, content hash, labels) and its suite tests that table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops.tasks import Task


class ValidationFailed(RuntimeError):
    """The data did not pass its suite; the message lists the failed expectations and samples."""


@dataclass
class Failure:
    expectation: str
    column: str | None
    unexpected_count: int | None
    samples: list[str]
    values: list[Any]

    def line(self) -> str:
        where = f" on {self.column}" if self.column else ""
        count = f" ({self.unexpected_count} rows)" if self.unexpected_count is not None else ""
        shown = f"; e.g. samples {self.samples[:5]} values {self.values[:5]}" if self.samples else ""
        return f"{self.expectation}{where}{count}{shown}"


@dataclass
class ValidationReport:
    task: str
    raw_dir: str
    success: bool
    evaluated: int
    failed: int
    n_samples: int
    validated_at: str
    failures: list[Failure] = field(default_factory=list)

    def summary(self) -> str:
        passed = self.evaluated - self.failed
        head = f"{self.task}: {passed}/{self.evaluated} expectations passed on {self.n_samples} samples"
        return "\n".join([head, *(f"  FAILED {f.line()}" for f in self.failures)])

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, default=str))

    @classmethod
    def read(cls, path: Path) -> ValidationReport:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing: run `mlops data validate` (the validate stage) first")
        data = json.loads(Path(path).read_text())
        data["failures"] = [Failure(**f) for f in data.get("failures", [])]
        return cls(**data)


def _quiet_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def validate_dataset(task: Task, raw_dir: Path, params: Any) -> ValidationReport:
    """Validate ``raw_dir`` with the task's suite. A missing layout is a failed report, not a crash."""
    import great_expectations as gx

    now = datetime.now(UTC).isoformat(timespec="seconds")
    if not raw_dir.is_dir():
        failure = Failure(f"dataset folder exists ({raw_dir})", None, None, [], [])
        return ValidationReport(task.name, str(raw_dir), False, 1, 1, 0, now, [failure])
    try:
        manifest = task.manifest(raw_dir)
    except ValueError as exc:
        return ValidationReport(task.name, str(raw_dir), False, 1, 1, 0, now, [Failure(str(exc), None, None, [], [])])

    context = _quiet_context()
    batch = (
        context.data_sources.add_pandas(task.name)
        .add_dataframe_asset("manifest")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{task.name}_raw"))
    for expectation in task.expectations(params):
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=suite, name="raw"))
    result = definition.run(batch_parameters={"dataframe": manifest}, result_format={"result_format": "COMPLETE"})

    sample_ids = manifest.iloc[:, 0].astype(str).tolist()
    failures = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        rows = r.result.get("unexpected_index_list") or []
        observed = r.result.get("partial_unexpected_list")
        if observed is None:
            observed = r.result.get("observed_value")
        values = observed if isinstance(observed, list) else [observed]
        failures.append(
            Failure(
                expectation=cfg.type,
                column=cfg.kwargs.get("column"),
                unexpected_count=r.result.get("unexpected_count"),
                samples=[sample_ids[i] for i in rows[:20] if isinstance(i, int)],
                values=[_plain(v) for v in values[:20]],
            )
        )
    stats = result.statistics
    return ValidationReport(
        task=task.name,
        raw_dir=str(raw_dir),
        success=bool(result.success),
        evaluated=int(stats["evaluated_expectations"]),
        failed=int(stats["unsuccessful_expectations"]),
        n_samples=len(manifest),
        validated_at=now,
        failures=failures,
    )


def _plain(value: Any) -> Any:
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
