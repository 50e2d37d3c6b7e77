"""Per-key token buckets: a sustained rate with a burst allowance; refusals say when to retry.

``RateLimiter`` keeps the buckets in memory, per service process: behind a load balancer with N replicas a key
would get N times the rate. ``RedisRateLimiter`` keeps them in Redis (``MLOPS_REDIS_URL``), one bucket per key
for every replica, updated atomically by a Lua script on Redis's own clock. ``make_limiter`` picks by settings.
"""

from __future__ import annotations

import math
import threading
import time


class RateLimited(RuntimeError):
    def __init__(self, retry_after: int, limit_per_minute: int):
        super().__init__(f"rate limit of {limit_per_minute} requests per minute reached; retry in {retry_after} s")
        self.retry_after = retry_after


class RateLimiter:
    def __init__(self, per_minute: int, burst: int, clock=time.monotonic):
        if per_minute <= 0 or burst <= 0:
            raise ValueError("rate limits must be positive (MLOPS_RATE_LIMIT_PER_MINUTE, MLOPS_RATE_LIMIT_BURST)")
        self.per_minute, self.burst = per_minute, burst
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one token of ``key``'s bucket, or raise RateLimited with the seconds until one is back."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise RateLimited(max(1, math.ceil((1.0 - tokens) / self.rate)), self.per_minute)
            self._buckets[key] = (tokens - 1.0, now)


# KEYS[1] the bucket; ARGV: rate (tokens/s), burst. Returns {allowed (1/0), seconds until a token is back}.
# Redis's clock, not the replicas': buckets stay right when the replicas' clocks disagree.
_TAKE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or t
tokens = math.min(burst, tokens + math.max(0, t - at) * rate)
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(t))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"""


class RedisRateLimiter:
    """The same token buckets, shared by every replica through Redis."""

    def __init__(self, url: str, per_minute: int, burst: int, prefix: str = "mlops:ratelimit:"):
        import redis

        if per_minute <= 0 or burst <= 0:
            raise ValueError("rate limits must be positive (MLOPS_RATE_LIMIT_PER_MINUTE, MLOPS_RATE_LIMIT_BURST)")
        self.per_minute, self.burst, self.rate, self.prefix = per_minute, burst, per_minute / 60.0, prefix
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise ConnectionError(f"Redis at {url} (MLOPS_REDIS_URL) is unreachable: {exc}") from exc
        self._take = self.client.register_script(_TAKE)

    def take(self, key: str) -> None:
        allowed, wait = self._take(keys=[self.prefix + key], args=[self.rate, self.burst])
        if not int(allowed):
            raise RateLimited(max(1, math.ceil(float(wait))), self.per_minute)


def make_limiter(settings, per_minute: int | None = None, burst: int | None = None):
    """Redis-backed when ``settings.redis_url`` is set (replicas share the rate), else in memory."""
    per_minute = per_minute or settings.rate_limit_per_minute
    burst = burst or settings.rate_limit_burst
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url, per_minute, burst, settings.redis_prefix)
    return RateLimiter(per_minute, burst)
