"""The rate of the write endpoints: one token bucket per key, in this process.

pyrate-limiter is in the lock (through schemathesis), but it keeps a log of every request in
each window, runs a leak thread, and its non-blocking ``try_acquire`` says no without saying
when to come back, which ``Retry-After`` needs; a token bucket is a few lines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBuckets:
    """Buckets of ``burst`` tokens filled at ``rate`` per second, one per key name.

    Only authenticated key names reach it (``writer``, ``admin``), so the dict stays small.
    Per process: uvicorn workers and replicas each hold their own buckets.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def take(self, key: str, n: int = 1) -> float:
        """Take ``n`` tokens (a batch's rows) from ``key``'s bucket: 0.0 if it had them,
        else the seconds until it will (nothing is taken then). A rate of 0 means no limit.

        More than ``burst`` tokens are never there at once: such a batch is taken from a full
        bucket and leaves it below zero, so the key waits until the rate has paid for every
        row; the rate holds on average, and no batch the API accepts is refused forever."""
        if self.rate <= 0:
            return 0.0
        need = min(float(n), self.burst)
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= need:
                self._buckets[key] = (tokens - n, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (need - tokens) / self.rate
