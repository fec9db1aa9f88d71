"""A token bucket: at most `rate` events per second on average, `burst` at once.

Used for client-side API request limits (like client-go's `qps`/`burst`) and for the work
queue's overall retry limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


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

    def wait(self) -> None:
        """Block until a token is ours."""
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)
