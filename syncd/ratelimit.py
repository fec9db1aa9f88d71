"""How fast to go, and how long to wait after failing: the one backoff and a token bucket.

`backoff` is what every retry loop waits (polled sources, Consul watches and feeds, the
cluster cache's watches, the work queue's per-key retries): capped exponential with
jitter, so clients that failed together spread out. The token bucket (at most `rate` events
per second on average, `burst` at once) is the client-side API request limit (like
client-go's `qps`/`burst`) and the work queue's overall retry limit."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable


def backoff(
    failures: int, base: float, cap: float, jitter: tuple[float, float] = (0.5, 1.0)
) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1: the first): `base`
    doubling each time up to `cap`, times a random factor in `jitter`."""
    return random.uniform(*jitter) * min(cap, base * 2 ** min(max(failures, 1) - 1, 30))


class TokenBucket:
    """Client-side rate limit: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self._rate = rate
        self._burst = max(1, burst)
        self._tokens = float(self._burst)
        self._clock = clock
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; returns how long to wait before using it (0: now)."""
        if self._rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def try_take(self) -> bool:
        """Take a token if one is there now; False (nothing taken) when none is."""
        if self._rate <= 0:
            return True
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True

    def wait(self) -> None:
        """Block until a token is ours."""
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)
