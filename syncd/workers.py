"""The daemon's workers: threads that take keys from the work queue, one at a time each.

- A key is a target's key (a string) or a `Job` (prune, reload): typed, so no target can
  ever be taken for a job.
- Workers run only while this replica leads; a standby's queue keeps what comes in,
  deduplicated, and the first pass after taking over starts from it.
- A reload takes the `Gate` exclusively: it waits until no other worker is inside a
  reconcile and holds the others off while it swaps the config.
- `health` names a dead worker or one wedged on a key longer than `stuck_after`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Callable, Hashable, Iterator

from syncd.workqueue import WorkQueue

log = logging.getLogger(__name__)


class Job(enum.Enum):
    """Queue keys that are not targets."""

    PRUNE = "prune"  # delete what removed targets left behind
    RELOAD = "reload"  # read the config file again

    def __str__(self) -> str:
        return f"({self.value})"


Process = Callable[[Hashable, str], None]  # (key, reason)


class Gate:
    """Workers pass side by side; an exclusive holder waits until it is alone inside."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside = 0
        self._closed = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._closed)
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Only from inside `shared` (the caller is a worker itself)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._closed)
            self._closed = True
            self._cond.wait_for(lambda: self._inside == 1)
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()


class Workers:
    """`count` threads calling `process(key, reason)` for each queued key while leading."""

    def __init__(
        self,
        queue: WorkQueue,
        process: Process,
        leading: threading.Event,
        stop: threading.Event,
        clock: Callable[[], float],
    ):
        self._queue = queue
        self._process = process
        self._leading = leading
        self._stop = stop
        self._clock = clock
        self.gate = Gate()
        self._busy: dict[str, tuple[Hashable, float]] = {}  # worker -> (key, since)
        self.threads: list[threading.Thread] = []

    def start(self, count: int) -> None:
        self.threads = [
            threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
            for n in range(count)
        ]
        for thread in self.threads:
            thread.start()

    def join(self, deadline: float) -> list[str]:
        """Wait until `deadline` (clock time) for the workers; the names of those still busy."""
        for thread in self.threads:
            thread.join(max(0.0, deadline - self._clock()))
        return [thread.name for thread in self.threads if thread.is_alive()]

    def _work(self) -> None:
        name = threading.current_thread().name
        while not self._stop.is_set():
            if not self._leading.wait(0.5):
                continue  # a standby: the queue keeps what comes in, deduplicated
            item = self._queue.get(timeout=0.5)
            if item is None:
                continue
            key, reason = item
            self._busy[name] = (key, self._clock())
            try:
                if self._leading.is_set():  # leadership may have gone while waiting
                    with self.gate.shared():
                        self._process(key, reason)
            except Exception:
                log.exception("reconciling %s failed unexpectedly; retrying", key)
                self._queue.add_rate_limited(key)
            finally:
                self._busy.pop(name, None)
                self._queue.done(key)

    def health(self, stuck_after: float) -> list[str]:
        """A dead worker, or one busy with one key for longer than `stuck_after`."""
        problems = [f"thread {t.name} has died" for t in self.threads if not t.is_alive()]
        now = self._clock()
        for worker, (key, since) in list(self._busy.items()):
            if now - since > stuck_after:
                problems.append(
                    f"{worker} has been busy with {key} for {now - since:.0f}s "
                    f"(stuck_after {stuck_after:g}s)"
                )
        return problems
