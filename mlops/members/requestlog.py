"""The request log: one row per predict/contribute call, written by a background thread.

Writing in the background keeps a database round trip (and SQLite's single writer) off every request's
path; rows are flushed in small batches and at shutdown.
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from mlops.members.schema import REQUEST_LOG, engine, storable

logger = logging.getLogger(__name__)


class RequestLog:
    def __init__(self, url: str, flush_seconds: float = 0.5):
        self.engine = engine(url)
        self._queue: queue.Queue[dict[str, Any] | threading.Event | None] = queue.Queue()
        self._flush_seconds = flush_seconds
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def record(self, **row: Any) -> None:
        row.setdefault("at", datetime.now(UTC).isoformat(timespec="milliseconds"))
        self._queue.put(fitted(row))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every row recorded so far is in the database."""
        written = threading.Event()
        self._queue.put(written)
        written.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        done = False
        while not done:
            rows, waiting = [], []
            try:
                item = self._queue.get(timeout=self._flush_seconds)
                while True:
                    if item is None:
                        done = True
                        break
                    if isinstance(item, threading.Event):
                        waiting.append(item)
                    else:
                        rows.append(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            if rows:
                self._write(rows)
            for event in waiting:
                event.set()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """One batch insert; if it fails, each row on its own, so one bad row never costs the others theirs."""
        try:
            with self.engine.begin() as conn:
                conn.execute(REQUEST_LOG.insert(), rows)
            return
        except Exception:  # the log must never take the service down; say so loudly and go on
            if len(rows) == 1:
                logger.exception("could not write a request-log row: %s", rows[0])
                return
        for row in rows:
            self._write([row])

    def rows(self, member: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = sa.select(REQUEST_LOG).order_by(REQUEST_LOG.c.id.desc()).limit(limit)
        if member:
            query = query.where(REQUEST_LOG.c.member == member)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


def fitted(row: dict[str, Any]) -> dict[str, Any]:
    """The row cut to the table: every column (None where unknown: a batch insert takes its columns from the first
    row, so rows with other keys would lose fields), strings storable (``storable``: a NUL in the URL's path or a
    lone surrogate in a body's version failed the insert, and the call went unlogged) and within their column's
    length (a caller chooses the task name in the URL: on PostgreSQL an over-long one would fail the insert),
    integers within 32 bits."""
    out: dict[str, Any] = {}
    for column in REQUEST_LOG.c:
        name, value = column.name, row.get(column.name)
        if name == "id":
            continue
        length = getattr(column.type, "length", None)
        if isinstance(value, str):
            value = storable(value)[:length] if length is not None else storable(value)
        elif isinstance(column.type, sa.Integer) and isinstance(value, int) and not -(2**31) <= value < 2**31:
            value = None
        out[name] = value
    return out
