"""Token buckets per key (a session, an IP address), kept in memory with a bounded number of keys."""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass

from server.errors import RateLimited


@dataclass(frozen=True)
class Rate:
    """`burst` requests at once, refilled at `per_minute` a minute."""

    burst: int
    per_minute: float


class RateLimiter:
    def __init__(self, rate: Rate, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.max_keys = max_keys
        # key -> (tokens, last refill time); ordered so the least recently used key is evicted first
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def hit(self, key: str, *, now: float | None = None) -> None:
        """Take one token for `key` or raise RateLimited with the seconds until the next one."""
        now = time.monotonic() if now is None else now
        refill_per_second = self.rate.per_minute / 60.0
        tokens, last = self._buckets.pop(key, (float(self.rate.burst), now))
        tokens = min(float(self.rate.burst), tokens + (now - last) * refill_per_second)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            retry_after = max(1, math.ceil((1.0 - tokens) / refill_per_second))
            raise RateLimited(
                f"Too many requests; please wait {retry_after} s and try again.",
                retry_after=retry_after,
            )
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
