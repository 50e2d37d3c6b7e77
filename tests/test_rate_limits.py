"""Rate limits that hold across replicas (token buckets in the real Redis on 127.0.0.1:6379) and failed
authentications limited per address."""

from __future__ import annotations

import time
import uuid

import pytest
from starlette.requests import Request

from mlops.members.keys import AuthError
from mlops.members.ratelimit import RateLimited, RateLimiter, RedisRateLimiter, make_limiter
from mlops.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture()
def prefix():
    """A key prefix of this test's own, its keys deleted afterwards (Redis keeps nothing on disk here)."""
    import redis

    name = f"mlops-test:{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is required for this test: {exc}")
    yield name
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)


def test_replicas_share_one_bucket_per_key_in_redis(prefix):
    """Two service replicas (two limiters on one Redis) allow a key its burst once between them, not once each;
    another key has its own bucket; the refusal says when a token is back (60/min: within about a second)."""
    replicas = [RedisRateLimiter(REDIS_URL, per_minute=60, burst=5, prefix=prefix) for _ in range(2)]
    for i in range(5):
        replicas[i % 2].take("acme")
    for replica in replicas:
        with pytest.raises(RateLimited) as refused:
            replica.take("acme")
        assert refused.value.retry_after in (1, 2)
    replicas[1].take("bob")  # untouched by acme's calls
    # the in-memory limiter, for contrast, gives each replica the whole burst: 10 calls between two
    local = [RateLimiter(60, 5) for _ in range(2)]
    for i in range(10):
        local[i % 2].take("acme")


def test_settings_choose_redis_and_an_unreachable_redis_says_which_setting(prefix):
    assert isinstance(make_limiter(Settings(redis_url=REDIS_URL, _env_file=None)), RedisRateLimiter)
    assert make_limiter(Settings(redis_url=REDIS_URL, redis_prefix=prefix, _env_file=None)).prefix == prefix
    assert isinstance(make_limiter(Settings(redis_url=None, _env_file=None)), RateLimiter)
    with pytest.raises(ConnectionError, match="MLOPS_REDIS_URL"):
        RedisRateLimiter("redis://127.0.0.1:1/0", 60, 5)


def _request(key: str | None, host: str) -> Request:
    headers = [(b"x-api-key", key.encode())] if key else []
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "client": (host, 1234)})


def test_guessing_keys_is_rate_limited_per_address(tmp_path, monkeypatch):
    """Wrong keys spend the caller address's failure bucket (burst 5 here): the sixth guess is a 429, not another
    try; a missing key is no guess; another address and a valid key are unaffected."""
    from mlops.serving.guard import Guard

    monkeypatch.delenv("MLOPS_REDIS_URL", raising=False)
    settings = Settings(home=tmp_path, auth_failures_per_minute=10, auth_failures_burst=5, _env_file=None)
    guard = Guard(settings)
    try:
        _, key = guard.keys.issue("acme", "member", "admin")
        for _ in range(5):
            with pytest.raises(AuthError):
                guard.check(_request("mlk_000000000000_guess", "10.0.0.9"), "member")
        with pytest.raises(RateLimited):
            guard.check(_request("mlk_000000000000_guess", "10.0.0.9"), "member")
        for _ in range(8):
            with pytest.raises(AuthError, match="API key"):
                guard.check(_request(None, "10.0.0.9"), "member")  # no key at all: refused, but no guess
        with pytest.raises(AuthError):
            guard.check(_request("mlk_000000000000_guess", "10.0.0.10"), "member")
        assert guard.check(_request(key, "10.0.0.9"), "member").name == "acme"
    finally:
        guard.log.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_real_server_believes_no_forwarded_for_and_logs_no_query_secret(tmp_path, workers, prefix):
    """A real `mlops serve` (no model needed): a client rotating X-Forwarded-For from 127.0.0.1 still spends one
    address's failed-authentication bucket (uvicorn would believe the header from 127.0.0.1 by default), and a key
    put in a query string does not reach the access log. With ``--workers 2`` the same holds across both processes
    (the bucket lives in Redis), and each process built its own app."""
    import httpx

    from tests.conftest import ROOT, env_for, free_port, start_process, stop_process, wait_ready

    env = env_for(tmp_path / "home")
    env.update(MLOPS_AUTH_FAILURES_PER_MINUTE="1", MLOPS_AUTH_FAILURES_BURST="3")
    if workers > 1:
        env.update(MLOPS_REDIS_URL=REDIS_URL, MLOPS_REDIS_PREFIX=prefix)
    port, log = free_port(), tmp_path / "serve.log"
    proc = start_process(["mlops", "serve", "--port", str(port), "--workers", str(workers)], ROOT, env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, path="/healthz")
        statuses = [
            httpx.post(
                f"{base}/v1/registry/fracture/promote",
                headers={"X-API-Key": f"wrong-{i}", "X-Forwarded-For": f"203.0.113.{i}"},
                json={},
                timeout=30,
            ).status_code
            for i in range(5)
        ]
        assert statuses == [401, 401, 401, 429, 429], statuses
        secret = "mk_" + uuid.uuid4().hex
        httpx.get(f"{base}/healthz?api_key={secret}&task=fracture", timeout=30)
        time.sleep(0.5)  # the access line is written after the response
    finally:
        stop_process(proc)
    text = log.read_text()
    assert "api_key=[redacted]&task=fracture" in text
    assert secret not in text
    assert text.count("Application startup complete") == workers, text
