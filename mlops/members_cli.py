"""`mlops keys ...` (admin: API keys, request log) and `mlops data review ...` (steward: contribution queue).

Both act on the service's database directly, so they run where that database is reachable. Reviewing
needs a steward's key (``--key`` or MLOPS_API_KEY): the reviewer recorded is the key's member, and a
member's key is refused, exactly as through the service.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mlops.terminal import table_console

KeyOpt = Annotated[str, typer.Option("--key", envvar="MLOPS_API_KEY", help="your steward API key")]


def _settings():
    from mlops.settings import Settings

    return Settings()


def _steward(key: str):
    from mlops.members.keys import KeyStore

    member = KeyStore(_settings().resolved_service_db_uri).authenticate(key)
    member.require("steward")
    return member


def _queue():
    from mlops.members.review import ReviewQueue

    s = _settings()
    return ReviewQueue(s.resolved_service_db_uri, s.contributions_dir)


def add_commands(app: Any, data_app: Any, friendly: Any, console: Console) -> None:
    keys_app = typer.Typer(help="API keys of the member service (issue, revoke, list) and its request log.")
    review_app = typer.Typer(help="Review members' contributions: list, show, accept, reject.")
    app.add_typer(keys_app, name="keys")
    data_app.add_typer(review_app, name="review")

    @keys_app.command("issue")
    @friendly
    def keys_issue(
        name: Annotated[str, typer.Argument(help="the member (person or company) the key belongs to")],
        role: Annotated[str, typer.Option(help="member | steward | admin")] = "member",
        by: Annotated[str, typer.Option(help="who issues it")] = "admin",
    ) -> None:
        """Issue a key. It is printed once (last line) and only its hash is stored: hand it over now."""
        from mlops.members.keys import KeyStore

        member, key = KeyStore(_settings().resolved_service_db_uri).issue(name, role, by)
        console.print(f"issued key {member.key_id} for {member.name} ({member.role}); it is shown only once:")
        sys.stdout.write(key + "\n")

    @keys_app.command("revoke")
    @friendly
    def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (`mlops keys list`)")]) -> None:
        """Revoke a key; the service refuses it from the next request on."""
        from mlops.members.keys import KeyStore

        member = KeyStore(_settings().resolved_service_db_uri).revoke(key_id)
        console.print(f"revoked key {member.key_id} of {member.name}")

    @keys_app.command("list")
    @friendly
    def keys_list(as_json: Annotated[bool, typer.Option("--json", metavar="")] = False) -> None:
        """Every key: id, member, role, created, revoked (never the key itself)."""
        from mlops.members.keys import KeyStore

        rows = KeyStore(_settings().resolved_service_db_uri).list()
        if as_json:
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        table = Table(title="API keys")
        for col in ("id", "member", "role", "created", "by", "revoked"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["key_id"], r["name"], r["role"], r["created_at"], r["created_by"], r["revoked_at"] or "")
        table_console().print(table)

    @keys_app.command("log")
    @friendly
    def keys_log(
        member: Annotated[str | None, typer.Option(help="only this member's calls")] = None,
        limit: int = 50,
        as_json: Annotated[bool, typer.Option("--json", metavar="")] = False,
    ) -> None:
        """The request log: who called which route, for which task and version, with what result."""
        from mlops.members.requestlog import RequestLog

        log = RequestLog(_settings().resolved_service_db_uri)
        rows = log.rows(member, limit)
        log.close()
        if as_json:
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        table = Table(title="request log (newest first)")
        for col in ("at", "member", "route", "task", "version", "status", "ms", "bytes", "sha256"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["at"],
                r["member"] or "-",
                r["route"],
                r["task"] or "",
                r["version"] or "",
                str(r["status"]),
                f"{r['latency_ms']:.0f}",
                str(r["upload_bytes"] or ""),
                (r["upload_sha256"] or "")[:12],
            )
        table_console().print(table)

    @review_app.command("list")
    @friendly
    def review_list(
        task: Annotated[str | None, typer.Option(help="only this task")] = None,
        status: Annotated[str, typer.Option(help="pending | accepted | rejected | all")] = "pending",
        as_json: Annotated[bool, typer.Option("--json", metavar="")] = False,
    ) -> None:
        """Contributions waiting for review (or with another status)."""
        items = _queue().list(task, None if status == "all" else status)
        if as_json:
            sys.stdout.write(json.dumps([asdict(c) for c in items], indent=2) + "\n")
            return
        table = Table(title=f"contributions ({status})")
        for col in ("#", "task", "member", "claimed", "meta", "received", "sha256", "status", "reviewed by"):
            table.add_column(col)
        for c in items:
            table.add_row(
                str(c.id),
                c.task,
                c.member,
                c.claimed_label,
                json.dumps(c.meta),
                c.received_at,
                c.content_sha256[:12],
                c.status,
                c.reviewed_by or "",
            )
        table_console().print(table)

    @review_app.command("show")
    @friendly
    def review_show(contribution_id: int, key: KeyOpt = "") -> None:
        """One contribution's record and the path of its stored image (open it to look)."""
        _steward(key)
        queue = _queue()
        c = queue.get(contribution_id)
        sys.stdout.write(json.dumps({**asdict(c), "image": str(queue.blob(c))}, indent=2) + "\n")

    @review_app.command("accept")
    @friendly
    def review_accept(
        contribution_id: int,
        key: KeyOpt = "",
        note: Annotated[str, typer.Option(help="why (kept with the decision)")] = "",
        raw_dir: Annotated[Path | None, typer.Option(help="raw data root (default: what data.dvc tracks)")] = None,
    ) -> None:
        """Write the contribution into the raw data (real-data layout); then make a new data version."""
        from mlops.members.review import raw_root

        reviewer = _steward(key)
        c, written = _queue().accept(contribution_id, reviewer.name, raw_dir or raw_root(), note)
        console.print(f"accepted #{c.id} as {c.sample_id} ({c.claimed_label}) -> {written}")
        console.print("next: `dvc commit -f data.dvc && dvc repro` (validates the new data version, then retrains)")

    @review_app.command("reject")
    @friendly
    def review_reject(
        contribution_id: int,
        key: KeyOpt = "",
        reason: Annotated[str, typer.Option(help="why it is rejected")] = "",
    ) -> None:
        """Reject a contribution (kept, with the reason; it never reaches the data)."""
        reviewer = _steward(key)
        c = _queue().reject(contribution_id, reviewer.name, reason)
        console.print(f"rejected #{c.id} ({c.claimed_label} from {c.member}): {reason}")
