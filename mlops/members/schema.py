"""Tables of the member service (SQLAlchemy Core; created on first use, like the alias history)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

META = sa.MetaData()

API_KEYS = sa.Table(
    "mlops_api_keys",
    META,
    # The public half of a key (``mlk_<key_id>_<secret>``) finds the row; only the SHA-256 of the whole key
    # is stored, so a leaked database does not leak usable keys.
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("revoked_at", sa.String(40)),
)

REQUEST_LOG = sa.Table(
    "mlops_request_log",
    META,
    # Who asked what and how it went; the upload is represented by its size and hash, never its bytes.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("key_id", sa.String(32)),
    sa.Column("member", sa.String(200)),
    sa.Column("route", sa.String(100), nullable=False),
    sa.Column("task", sa.String(100)),
    sa.Column("version", sa.String(20)),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("upload_bytes", sa.Integer),
    sa.Column("upload_sha256", sa.String(64)),
)

CONTRIBUTIONS = sa.Table(
    "mlops_contributions",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("member", sa.String(200), nullable=False),
    sa.Column("key_id", sa.String(32)),
    sa.Column("claimed_label", sa.String(100), nullable=False),
    sa.Column("meta", sa.Text, nullable=False),  # JSON: what the layout needs besides the label
    sa.Column("content_sha256", sa.String(64), nullable=False),
    sa.Column("suffix", sa.String(10), nullable=False),
    sa.Column("received_at", sa.String(40), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # pending | accepted | rejected
    sa.Column("reviewed_by", sa.String(200)),
    sa.Column("reviewed_at", sa.String(40)),
    sa.Column("review_note", sa.Text),
    sa.Column("sample_id", sa.String(200)),  # the id it got in data/raw when accepted
    sa.UniqueConstraint("task", "content_sha256", name="uq_mlops_contributions_task_sha"),
)


def storable(text: str) -> str:
    """``text`` as every supported database can store it. A caller chooses much of what is stored (the path of a
    request, a version or a review note in a JSON body): a lone surrogate (a JSON ``"\\ud800"``, or a non-UTF-8
    command-line argument) cannot be encoded, and PostgreSQL refuses NUL characters; either failed the whole
    statement. Both are kept as their backslash escapes instead."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\\x00")


def _sqlite_wal(dbapi_connection, _record) -> None:
    """Write-ahead logging on a SQLite service store: the serving process's key checks (reads) never wait for a
    writer (the request log's batches, `mlops keys`, MLflow on the same file), and a commit is an append with no
    fsync of the database (synchronous=NORMAL: durable up to the last checkpoint after a power cut, never
    corrupt). WAL is a property of the file, so it stays on once set; an in-memory database keeps its own mode."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


@cache
def engine(url: str) -> sa.Engine:
    """One engine per database URL per process, with the member tables present."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # A fresh checkout has no store folder yet (`mlops keys issue` before any run): SQLite would only say
        # "unable to open database file".
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    eng = sa.create_engine(url, pool_pre_ping=True)
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(eng, "connect", _sqlite_wal)
    try:
        META.create_all(eng, checkfirst=True)
    except (OperationalError, IntegrityError, ProgrammingError):
        # Two processes creating the tables at once: the other one won; they exist now.
        META.create_all(eng, checkfirst=True)
    return eng
