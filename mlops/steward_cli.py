"""`mlops data check|status|verify|audit`: the data steward's commands (registered on the `data` group by cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

ROOT = Path(".")  # dvc runs every stage in the repo root, and the steward works there too


def _rel(path: Path) -> Path:
    """``path`` relative to the repo root (how *.dvc files and dvc.lock name it)."""
    try:
        return path.resolve().relative_to(ROOT.resolve())
    except ValueError:
        return path


def add_commands(data_app: Any, friendly: Any, console: Any) -> None:
    """Register the steward commands on ``data_app`` (wrapped in ``friendly`` for one-line errors)."""

    @data_app.command("check")
    @friendly
    def data_check(
        task: str,
        raw: Annotated[
            Path | None, typer.Option("--raw", help="the task's raw data folder (default: dvc.yaml's)")
        ] = None,
        report: Annotated[
            Path | None, typer.Option("--report", help="validation report to write (default: dvc.yaml's)")
        ] = None,
        history: Annotated[
            Path | None,
            typer.Option("--history", help="folder of per-version results and Data Docs (default: dvc.yaml's)"),
        ] = None,
        params_path: Annotated[Path, typer.Option("--params")] = Path("params.yaml"),
    ) -> None:
        """The validate stage: data must be the version DVC recorded; suite + drift bounds; kept per version."""
        from mlops.data.integrity import require_unchanged
        from mlops.data.stages import fill_paths
        from mlops.params import load_params
        from mlops.tasks import get_task
        from mlops.validation import validate_dataset

        raw, report, history = fill_paths("validate", task, raw=raw, report=report, history=history)
        require_unchanged(ROOT, _rel(raw))
        params = load_params(params_path)
        result = validate_dataset(get_task(task), raw, params.task(task), history=history)
        result.write(report)
        console.print(escape(result.summary()))
        if result.baseline is None:
            console.print("no earlier accepted version: drift bounds start from this one")
        if not result.success:
            console.print(f"[bold red]validation failed[/]; report: {report}; Data Docs: {result.docs}")
            raise typer.Exit(1)

    @data_app.command("status")
    @friendly
    def data_status(
        folders: Annotated[
            list[Path] | None, typer.Argument(help="data folders (default: each task folder of every *.dvc out)")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable output", metavar="")] = False,
    ) -> None:
        """Which data folders differ from the version their *.dvc file records (exit 1 if any)."""
        from mlops.data.integrity import status
        from mlops.data.versions import tracked_outs

        targets = [_rel(f) for f in folders] if folders else _task_folders(tracked_outs(ROOT))
        results = [status(ROOT, t) for t in targets]
        if as_json:
            sys.stdout.write(json.dumps([r.to_json() for r in results], indent=2) + "\n")
        else:
            for r in results:
                console.print(("[green]ok[/] " if r.clean else "[bold red]CHANGED[/] ") + escape(r.message()))
        if not all(r.clean for r in results):
            raise typer.Exit(1)

    @data_app.command("verify")
    @friendly
    def data_verify(
        rev: Annotated[str | None, typer.Option(help="git revision whose data.dvc/dvc.lock to check")] = None,
        remote: Annotated[
            bool, typer.Option(help="also re-hash the objects in the default DVC remote", metavar="")
        ] = True,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable output", metavar="")] = False,
    ) -> None:
        """Re-hash every object of a recorded version in the local cache and the remote; exit 1 if one is corrupt."""
        from mlops.data.integrity import verify_cache, verify_remote
        from mlops.data.versions import recorded_versions, uncached_outs

        recorded = recorded_versions(ROOT, rev)
        if not recorded:
            raise ValueError(f"no *.dvc file or dvc.lock records any data{f' at {rev}' if rev else ''}")
        # Reports, metrics and plots (cache: false) live in git: the cache never holds them, so they are not missing.
        uncached = uncached_outs(ROOT, rev)
        outs = {path: md5 for path, md5 in recorded.items() if path not in uncached}
        skipped = sorted(set(recorded) - set(outs))
        checks = [verify_cache(ROOT, outs)]
        if remote:
            found = verify_remote(ROOT, outs)
            if found is None:
                console.print("no DVC remote configured: only the local cache was checked")
            else:
                checks.append(found)
        if as_json:
            sys.stdout.write(json.dumps([c.to_json() for c in checks], indent=2) + "\n")
        elif skipped:
            console.print(
                f"{len(skipped)} outputs kept in git, not in the cache (dvc.yaml `cache: false`): not checked"
            )
        for c in checks if not as_json else []:
            console.print(f"{c.store}: {c.checked} objects checked, {len(c.missing)} missing, {len(c.corrupt)} corrupt")
            for line in c.corrupt:
                console.print(f"  [bold red]CORRUPT[/] {escape(line)}")
            for line in c.missing[:10]:
                console.print(f"  missing {escape(line)}")
        if not all(c.ok for c in checks):
            console.print(
                "[bold red]corrupt objects[/]: delete them from that store and restore them "
                "(`dvc fetch`/`dvc pull` from a good remote, or `dvc push` from a good cache)"
            )
            raise typer.Exit(1)

    @data_app.command("audit")
    @friendly
    def data_audit(
        task: str,
        out: Annotated[
            Path | None, typer.Option("--out", help="HTML report (default reports/<task>/audit.html)")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the audit as JSON too", metavar="")] = False,
        params_path: Annotated[Path, typer.Option("--params")] = Path("params.yaml"),
    ) -> None:
        """HTML report of every version of TASK's data: validation, changes, runs and models that used it."""
        from mlops.audit import audit
        from mlops.audit_html import write_html
        from mlops.params import load_params
        from mlops.settings import Settings

        target = out or Path("reports") / task / "audit.html"
        found = audit(ROOT, task, load_params(params_path), Settings(), target.parent / f"{target.stem}_docs")
        write_html(found, target)
        if as_json:
            sys.stdout.write(json.dumps(found, indent=2, default=str) + "\n")
        console.print(
            f"{task}: {len(found['raw_versions'])} raw and {len(found['prepared_versions'])} prepared versions; "
            f"report: {target}"
        )


def _task_folders(tracked) -> list[Path]:
    """Each immediate sub-folder of every tracked folder (one per task), or the folder itself."""
    found = []
    for t in tracked:
        folder = ROOT / t.path
        subs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        found += [_rel(p) for p in subs] or [Path(t.path)]
    return found
