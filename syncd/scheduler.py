"""Many small timed jobs on a few threads: DNS TTL refreshes, file and prepared-query polls,
probe rounds, the config file check and the resync ticker.

One timer thread keeps the jobs in a heap; due jobs run on a bounded pool of daemon threads,
so the number of threads does not grow with the number of targets, and a shutdown never
waits for a slow lookup (daemon threads end with the process). A job that wants to run
again schedules itself again when it finishes, so one job never runs twice at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class DaemonPool:
    """A fixed number of daemon threads running submitted callables in order."""

    def __init__(self, size: int, name: str):
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            try:
                task()
            except Exception:  # a job's bug must not kill the pool
                log.exception("a background job failed")

    def shutdown(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)

    @property
    def size(self) -> int:
        return len(self._threads)


@dataclass(order=True)
class _Entry:
    due: float
    sequence: int
    job: Callable[[], None] = field(compare=False)


class Scheduler:
    """Run jobs at given monotonic times on a bounded pool of daemon threads."""

    def __init__(self, workers: int = 8, name: str = "jobs"):
        self._pool = DaemonPool(workers, name)
        self._heap: list[_Entry] = []
        self._sequence = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._timer = threading.Thread(target=self._run, name=f"{name}-timer", daemon=True)
        self._timer.start()

    def call_later(self, delay: float, job: Callable[[], None]) -> None:
        self.call_at(time.monotonic() + max(0.0, delay), job)

    def call_at(self, when: float, job: Callable[[], None]) -> None:
        entry = _Entry(when, next(self._sequence), job)
        with self._cond:
            heapq.heappush(self._heap, entry)
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0].due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                self._pool.submit(heapq.heappop(self._heap).job)

    @property
    def alive(self) -> bool:
        return self._timer.is_alive() or self._stopped

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        self._pool.shutdown()

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)
