"""Validation results kept per data version, each rendered as a Great Expectations Data Docs page.

``<history>/<version>/`` holds ``report.json`` (our readable report with the profile, plus ``validated_at``: the
time, which the validate stage's own report does not hold so that it depends on the data only), ``gx_result.json``
(GX's own validation result), ``samples.json`` (sample id -> content hash, for sample-level diffs) and
``data_docs.html`` (the result rendered by GX's Data Docs page renderer). ``<history>/index.html`` lists
every version. The latest record with a passing result is the "accepted" baseline the next version's
drift bounds are measured against.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPORT, GX_RESULT, SAMPLES = "report.json", "gx_result.json", "samples.json"
DOCS, INDEX = "data_docs.html", "index.html"


def version_dir(history: Path, version: str) -> Path:
    return history / version.removesuffix(".dir")


def save_record(history: Path, report: Any, gx_result: dict, samples: dict[str, str]) -> Path:
    """Write this version's record and Data Docs page; returns the page's path (set as ``report.docs``)."""
    folder = version_dir(history, report.data_version)
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / DOCS
    report.docs = str(page)
    if _same_result(folder, report):
        # Validated before with this very result: the record (and its time) stays as it was, so a rerun of the
        # pipeline rewrites nothing here (these records are committed with the results).
        return page
    (folder / GX_RESULT).write_text(json.dumps(gx_result, indent=1, default=str))
    (folder / SAMPLES).write_text(json.dumps(samples, indent=0, sort_keys=True))
    page.write_text(render_data_docs(gx_result))
    now = datetime.now(UTC).isoformat(timespec="seconds")
    (folder / REPORT).write_text(json.dumps({**asdict(report), "validated_at": now}, indent=2, default=str))
    write_index(history)
    return page


def _same_result(folder: Path, report: Any) -> bool:
    path = folder / REPORT
    if not (path.is_file() and (folder / GX_RESULT).is_file() and (folder / DOCS).is_file()):
        return False
    kept = json.loads(path.read_text())
    kept.pop("validated_at", None)
    return kept == json.loads(json.dumps(asdict(report), default=str))


def render_data_docs(gx_result: dict) -> str:
    """GX's Data Docs page for one validation result (the renderer its Data Docs sites use)."""
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResultSchema
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    # From plain JSON: GX's renderer cannot format numpy scalars in observed values.
    result = ExpectationSuiteValidationResultSchema().load(json.loads(json.dumps(gx_result, default=str)))
    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))


def records(history: Path) -> list[dict]:
    """Every kept report (as dicts), oldest validation first."""
    found = []
    for path in sorted(history.glob(f"*/{REPORT}")) if history.is_dir() else []:
        try:
            found.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return sorted(found, key=lambda r: r.get("validated_at", ""))


def latest_accepted(history: Path, task: str, other_than: str | None) -> dict | None:
    """The newest passing record of ``task`` for a version other than ``other_than``."""
    passing = [
        r
        for r in records(history)
        if r.get("success") and r.get("task") == task and r.get("data_version") != other_than
    ]
    return passing[-1] if passing else None


def record_of(history: Path, version: str) -> dict | None:
    path = version_dir(history, version) / REPORT
    return json.loads(path.read_text()) if path.is_file() else None


def validated_at(report: Any) -> str | None:
    """When ``report``'s data version was last validated: from the history record beside its Data Docs page
    (None when it was validated without a history folder, or the record is gone)."""
    if not report.docs:
        return None
    path = Path(report.docs).parent / REPORT
    try:
        return json.loads(path.read_text()).get("validated_at")
    except (OSError, ValueError):
        return None


def samples_of(history: Path, version: str) -> dict[str, str] | None:
    path = version_dir(history, version) / SAMPLES
    return json.loads(path.read_text()) if path.is_file() else None


def write_index(history: Path) -> None:
    rows = []
    for r in reversed(records(history)):
        folder = version_dir(history, r.get("data_version") or "unknown").name
        verdict = "passed" if r.get("success") else f"FAILED ({r.get('failed')} expectations)"
        rows.append(
            f"<tr><td><a href='{folder}/{DOCS}'>{html.escape(folder)}</a></td><td>{html.escape(verdict)}</td>"
            f"<td>{r.get('n_samples')}</td><td>{html.escape(r.get('validated_at', ''))}</td>"
            f"<td>{html.escape(r.get('baseline') or '-')}</td></tr>"
        )
    task = html.escape(str(records(history)[-1].get("task", ""))) if rows else ""
    (history / INDEX).write_text(
        f"<!doctype html><meta charset='utf-8'><title>{task} validation results</title>"
        f"<h1>{task}: validation result of every data version</h1><table border=1 cellpadding=4>"
        "<tr><th>data version (DVC md5)</th><th>result</th><th>samples</th><th>validated at</th>"
        f"<th>drift baseline</th></tr>{''.join(rows)}</table>"
    )
