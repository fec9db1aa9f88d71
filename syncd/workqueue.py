"""The daemon's work queue: keys (targets) to reconcile, with the guarantees workers rely on.

Modelled on client-go's rate-limited work queue:

- A key waiting in the queue is not added twice: bursts of events coalesce, and the worker
  that gets it sees the latest state of everything.
- A key is never handed to two workers at once. A key added while it is being processed
  is remembered and handed out again after `done`, so no change is lost.
- `add_after` queues a key later (hold-downs, rechecks); the earliest request wins.
- Every add says why (a source answered, the cluster changed, resync, retry ...); `get`
  returns the reason of the first add since the key was last taken, for metrics.
- `add_rate_limited` is for retries: each key backs off on its own (capped, jittered
  exponential: one failing target never slows the others) and all retries together are
  bounded by a token bucket, so a thousand failing targets cannot flood the API server.
  `forget` resets a key's backoff after a success.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable, Hashable, Iterable

from syncd.ratelimit import TokenBucket, backoff


class RetryLimiter:
    """How long a key waits before its next retry: max(own backoff, overall bucket)."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 120.0,
        qps: float = 10.0,
        burst: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._base = base
        self._cap = cap
        self._failures: dict[Hashable, int] = {}
        self._bucket = TokenBucket(qps, burst, clock)
        self._lock = threading.Lock()

    def when(self, key: Hashable) -> float:
        with self._lock:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        own = backoff(failures + 1, self._base, self._cap, jitter=(0.8, 1.2))
        return max(own, self._bucket.reserve())

    def failures(self, key: Hashable) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._failures.pop(key, None)


class WorkQueue:
    """Keys to process; see the module docstring for the guarantees."""

    def __init__(
        self,
        limiter: RetryLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_depth: Callable[[int], None] | None = None,
    ):
        self._limiter = limiter or RetryLimiter()
        self._clock = clock
        self._on_depth = on_depth
        self._cond = threading.Condition()
        self._queue: collections.deque[Hashable] = collections.deque()
        self._dirty: dict[Hashable, str] = {}  # waiting keys and why they were added
        self._processing: set[Hashable] = set()
        self._delayed: list[tuple[float, int, Hashable, str]] = []
        self._due: dict[Hashable, float] = {}
        self._sequence = itertools.count()
        self._shut_down = False

    # -- adding

    def add(self, key: Hashable, reason: str = "") -> None:
        with self._cond:
            self._add_locked(key, reason)

    def _add_locked(self, key: Hashable, reason: str) -> None:
        if self._shut_down or key in self._dirty:
            return
        self._dirty[key] = reason
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify_all()
            self._report_depth()

    def add_after(self, key: Hashable, delay: float, reason: str = "") -> None:
        """Queue `key` in `delay` seconds (at once if delay <= 0); the earliest request wins."""
        if delay <= 0:
            self.add(key, reason)
            return
        with self._cond:
            if self._shut_down:
                return
            due = self._clock() + delay
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._delayed, (due, next(self._sequence), key, reason))
            self._cond.notify_all()

    def add_rate_limited(self, key: Hashable, reason: str = "retry") -> float:
        """Queue `key` after its own backoff (see RetryLimiter); returns the delay."""
        delay = self._limiter.when(key)
        self.add_after(key, delay, reason)
        return delay

    def forget(self, key: Hashable) -> None:
        self._limiter.forget(key)

    def retries(self, key: Hashable) -> int:
        return self._limiter.failures(key)

    # -- taking

    def get(self, timeout: float | None = None) -> tuple[Hashable, str] | None:
        """The next key and why it was queued (mark it `done` afterwards), or None on
        timeout or shutdown."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                if self._shut_down:  # what is still queued is dropped: the process is ending
                    return None
                self._move_due_locked()
                if self._queue:
                    key = self._queue.popleft()
                    reason = self._dirty.pop(key, "")
                    self._processing.add(key)
                    self._report_depth()
                    return key, reason
                wait = None if deadline is None else deadline - self._clock()
                if self._delayed:
                    until_due = self._delayed[0][0] - self._clock()
                    wait = until_due if wait is None else min(wait, until_due)
                if wait is not None and wait <= 0:
                    if deadline is not None and self._clock() >= deadline:
                        return None
                    continue
                self._cond.wait(wait)

    def _move_due_locked(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            due, _seq, key, reason = heapq.heappop(self._delayed)
            if self._due.get(key) == due:
                del self._due[key]
                self._add_locked(key, reason)

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify_all()
                self._report_depth()

    # -- lifecycle and introspection

    def shut_down(self) -> None:
        with self._cond:
            self._shut_down = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def _report_depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._queue))


class ResyncPacer:
    """Which keys to resync at each tick, so every key comes once per `interval`, evenly.

    Keys are taken round-robin from a shuffled order (instances started together do not
    resync in step); fractions carry over between ticks, so 3 keys over 300 s are one key
    every 100 s, not one per tick. `next_batch` returns True as its second value when a
    full round has just completed.
    """

    def __init__(self, interval: float, tick: float):
        self._interval = interval
        self._tick = tick
        self._order: list[Hashable] = []
        self._cursor = 0
        self._credit = 0.0

    def reset(self, keys: Iterable[Hashable]) -> None:
        self._order = list(keys)
        random.shuffle(self._order)
        self._cursor = 0
        self._credit = 0.0

    def next_batch(self) -> tuple[list[Hashable], bool]:
        if not self._order:
            return [], False
        self._credit += len(self._order) * self._tick / self._interval
        count = int(self._credit)
        self._credit -= count
        batch = self._order[self._cursor : self._cursor + count]
        self._cursor += count
        if self._cursor >= len(self._order):
            self._cursor = 0
            return batch, True
        return batch, False
