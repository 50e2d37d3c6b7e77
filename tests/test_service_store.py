"""The service's own tables on SQLite: key checks never wait for a writer (write-ahead logging).

The serving process checks API keys while the request log's thread, `mlops keys` or MLflow write to the same
file; in SQLite's default rollback journal a writer's commit locks readers out ("database is locked").
"""

from __future__ import annotations

import sqlite3

import pytest

pytestmark = pytest.mark.timeout(60)


def test_a_key_check_reads_while_another_process_holds_the_write_lock(tmp_path):
    from mlops.members.keys import KeyStore
    from mlops.members.schema import engine

    db = tmp_path / "store" / "mlflow.db"
    url = f"sqlite:///{db}"
    member, key = KeyStore(url).issue("Acme", "member", "tests")
    with engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"  # a property of the file from now on

    writer = sqlite3.connect(db, timeout=1, isolation_level=None)  # as another process would open it
    try:
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute(
            "INSERT INTO mlops_request_log (at, route, status, latency_ms) VALUES ('2026-12-01', '/x', 200, 1.0)"
        )
        # the writer holds its lock mid-transaction: a fresh (uncached) check still reads the committed keys
        assert KeyStore(url).authenticate(key) == member
        writer.execute("COMMIT")
    finally:
        writer.close()
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM mlops_request_log").fetchone()[0]
    assert rows == 1
