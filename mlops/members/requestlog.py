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

from mlops.members.schema import REQUEST_LOG, engine

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
        self._queue.put(row)

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
                try:
                    with self.engine.begin() as conn:
                        conn.execute(REQUEST_LOG.insert(), rows)
                except Exception:  # the log must never take the service down; say so loudly and go on
                    logger.exception("could not write %d request-log rows", len(rows))
            for event in waiting:
                event.set()

    def rows(self, member: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = sa.select(REQUEST_LOG).order_by(REQUEST_LOG.c.id.desc()).limit(limit)
        if member:
            query = query.where(REQUEST_LOG.c.member == member)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
