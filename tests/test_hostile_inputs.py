"""Inputs an attacker would send to the member service's stores and checks, each answered without a 5xx and
without losing what is already stored: over-long request-log fields on the real PostgreSQL, odd webhook headers,
two identical contributions racing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import threading
import time

import pytest
from PIL import Image

from mlops.members.keys import AuthError
from mlops.members.requestlog import RequestLog
from mlops.members.review import ReviewError, ReviewQueue
from mlops.serving.registry_routes import verify_mlflow_signature
from tests.conftest import pg_database


def test_one_over_long_row_does_not_cost_the_others_theirs_on_postgresql():
    """A task name is whatever the caller put in the URL: 300 characters overflow the column on PostgreSQL, which
    used to fail the whole batch insert and drop the other members' rows with it."""
    with pg_database() as url:
        log = RequestLog(url, flush_seconds=5)  # long enough that all three rows go in one batch
        try:
            log.record(member="acme", route="/v1/models/fracture/predict", status=200, latency_ms=1.0)
            log.record(member="eve", route="/v1/models/x/predict", task="x" * 300, status=404, latency_ms=1.0)
            log.record(member="bob", route="/v1/models/fracture/predict", status=200, latency_ms=1.0,
                       upload_bytes=10**12, not_a_column="ignored")  # fmt: skip
            log.flush()
            rows = {r["member"]: r for r in log.rows()}
            assert set(rows) == {"acme", "eve", "bob"}
            assert rows["eve"]["task"] == "x" * 100  # cut to the column
            assert rows["bob"]["upload_bytes"] is None  # beyond a 32-bit column: not recorded rather than lost
        finally:
            log.close()


def _signed(secret: str, delivery: str, stamp: str, body: bytes) -> str:
    signed = f"{delivery}.{stamp}.{body.decode()}".encode()
    return "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()


@pytest.mark.parametrize(
    ("stamp", "signature", "words"),
    [
        ("²", None, "timestamp"),  # a digit to str.isdigit, not to int()
        ("١٢٣", None, "timestamp"),  # Arabic-Indic digits: the same
        (None, "v1,\xe9\xe9\xe9", "does not match"),  # latin-1 characters in the header
    ],
)
def test_odd_webhook_headers_are_refused_as_unsigned(stamp, signature, words):
    now, body = time.time(), b'{"event": "alias.created"}'
    good_stamp = str(int(now))
    headers = {
        "x-mlflow-delivery-id": "d1",
        "x-mlflow-timestamp": stamp or good_stamp,
        "x-mlflow-signature": signature or _signed("s", "d1", good_stamp, body),
    }
    with pytest.raises(AuthError, match=words):
        verify_mlflow_signature("s", headers, body, now=now)
    headers = {**headers, "x-mlflow-timestamp": good_stamp, "x-mlflow-signature": _signed("s", "d1", good_stamp, body)}
    verify_mlflow_signature("s", headers, body, now=now)  # the well-formed delivery passes


def test_identical_contributions_racing_store_one_blob_and_one_row(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (40, 40), 128).save(buf, format="PNG")
    queue = ReviewQueue(f"sqlite:///{tmp_path / 'service.db'}", tmp_path / "blobs")
    start, outcomes = threading.Barrier(4), []

    def submit() -> None:
        start.wait()
        try:
            outcomes.append(queue.submit("fracture", "acme", None, buf.getvalue(), "fatigue", {"magnification": "5"}))
        except ReviewError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    accepted = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(outcomes) == 4 and len(accepted) == 1, outcomes
    assert all("already contributed" in str(o) for o in outcomes if isinstance(o, Exception))
    blobs = list((tmp_path / "blobs").rglob("*"))
    assert [p.suffix for p in blobs if p.is_file()] == [".png"]  # no .part file left behind
