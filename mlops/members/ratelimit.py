"""Per-key token buckets: a sustained rate with a burst allowance; refusals say when to retry.

In memory, per service process: behind a load balancer with N replicas a key gets up to N times the rate
(a shared store such as Redis would be needed to make it exact; see the README's notes).
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
