"""Append-only, hash-chained history of alias moves, in the MLflow backend store's database.

Each task has its own chain: event ``seq`` n stores the hash of event n-1, and its own hash covers every
field, so an edited row breaks its hash, and a deleted row breaks the next row's link (a deleted last
row shows as a mismatch between the chain and the registry's alias, which ``verify`` also checks).
The chain also holds ``reproduce`` events (`mlops registry reproduce`: a version rebuilt from its lineage, the
outcome in ``gates``); they move no alias, and rollback and ``verify`` replay only the moves.

Promotions of one task are serialised by a per-task lock row taken with NOWAIT semantics: a second
promotion while one is in flight fails at once with ``PromotionConflict`` instead of interleaving.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

GENESIS = "0" * 64
_META = sa.MetaData()
EVENTS = sa.Table(
    "mlops_alias_events",
    _META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("alias", sa.String(50), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("from_version", sa.String(20)),
    sa.Column("to_version", sa.String(20), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("forced", sa.Boolean, nullable=False),
    sa.Column("gates", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint("task", "seq", name="uq_mlops_alias_events_task_seq"),
)
LOCKS = sa.Table(
    "mlops_release_locks",
    _META,
    sa.Column("task", sa.String(100), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("since", sa.Float, nullable=False),
)
STALE_LOCK_SECONDS = 600


class PromotionConflict(RuntimeError):
    """Another promotion or rollback of the same task is in flight; nothing was changed."""


@dataclass(frozen=True)
class AliasEvent:
    task: str
    seq: int
    alias: str
    action: str  # promote | force | rollback (alias moves); reproduce (alias "", a rebuild's outcome in gates)
    from_version: str | None
    to_version: str
    actor: str
    reason: str
    at: str
    forced: bool
    gates: str  # JSON: gate name -> {"passed": bool, "detail": str}
    prev_hash: str
    hash: str = ""

    def digest(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "hash"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class History:
    def __init__(self, url: str):
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        try:
            _META.create_all(self.engine, checkfirst=True)
        except (OperationalError, IntegrityError, ProgrammingError):
            # Two processes creating the tables at once: the other one won; they exist now.
            _META.create_all(self.engine, checkfirst=True)

    def events(self, task: str) -> list[AliasEvent]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(EVENTS).where(EVENTS.c.task == task).order_by(EVENTS.c.seq)).mappings()
            return [AliasEvent(**{k: v for k, v in row.items() if k != "id"}) for row in rows]

    @contextmanager
    def release_lock(self, task: str, holder: str) -> Iterator[None]:
        """Hold the task's release lock for the duration; PromotionConflict if someone else holds it.

        The lock is a row, inserted and deleted in short transactions of their own, so MLflow can keep
        writing to the same database (SQLite has one writer at a time) while we move its aliases. A lock
        older than ``STALE_LOCK_SECONDS`` (a crashed promotion) is taken over.
        """
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(LOCKS.delete().where(LOCKS.c.task == task, LOCKS.c.since < now - STALE_LOCK_SECONDS))
        try:
            with self.engine.begin() as conn:
                conn.execute(LOCKS.insert().values(task=task, holder=holder, since=now))
        except IntegrityError as exc:
            raise PromotionConflict(
                f"another promotion or rollback of {task} is in progress; nothing changed — retry when it ends"
            ) from exc
        try:
            yield
        finally:
            with self.engine.begin() as conn:
                conn.execute(LOCKS.delete().where(LOCKS.c.task == task, LOCKS.c.holder == holder))

    def append(self, event: AliasEvent) -> AliasEvent:
        """Append (within a held release lock); the (task, seq) constraint rejects a lost race too."""
        sealed = AliasEvent(**{**asdict(event), "hash": ""})
        sealed = AliasEvent(**{**asdict(sealed), "hash": sealed.digest()})
        try:
            with self.engine.begin() as conn:
                conn.execute(EVENTS.insert().values(**asdict(sealed)))
        except IntegrityError as exc:
            raise PromotionConflict(f"event {event.seq} of {event.task} was written concurrently") from exc
        return sealed

    def last(self, task: str) -> AliasEvent | None:
        events = self.events(task)
        return events[-1] if events else None


def new_event(
    last: AliasEvent | None,
    task: str,
    alias: str,
    action: str,
    from_version: str | None,
    to_version: str,
    actor: str,
    reason: str,
    forced: bool,
    gates: dict,
) -> AliasEvent:
    return AliasEvent(
        task=task,
        seq=(last.seq + 1) if last else 1,
        alias=alias,
        action=action,
        from_version=from_version,
        to_version=to_version,
        actor=actor,
        reason=reason,
        at=datetime.now(UTC).isoformat(timespec="microseconds"),
        forced=forced,
        gates=json.dumps(gates, sort_keys=True),
        prev_hash=last.hash if last else GENESIS,
    )


def verify_chain(events: list[AliasEvent]) -> list[str]:
    """Problems in one task's chain (empty when intact)."""
    problems = []
    prev, expected_seq = GENESIS, 1
    for e in events:
        if e.seq != expected_seq:
            problems.append(f"{e.task}: event {expected_seq} is missing (next found is {e.seq})")
        if e.prev_hash != prev:
            problems.append(f"{e.task}: event {e.seq} does not link to the event before it (deleted or edited)")
        if e.digest() != e.hash:
            problems.append(f"{e.task}: event {e.seq} was modified after it was written")
        prev, expected_seq = e.hash, e.seq + 1
    return problems


def champion_at(events: list[AliasEvent], alias: str, when: str) -> AliasEvent | None:
    """The event that set ``alias`` last at or before ``when`` (ISO timestamp, UTC if naive)."""
    moment = datetime.fromisoformat(when)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    chosen = None
    for e in events:
        if e.alias == alias and datetime.fromisoformat(e.at) <= moment:
            chosen = e
    return chosen


def pause_for_tests() -> None:
    """Widen the lock-holding window when MLOPS_PROMOTION_HOLD_SECONDS is set (race tests only)."""
    import os

    hold = float(os.environ.get("MLOPS_PROMOTION_HOLD_SECONDS", "0") or 0)
    if hold > 0:
        time.sleep(hold)
