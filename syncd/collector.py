"""Pausing Python's cycle collector while syncd builds large data that all survives.

The collector runs each time allocations outnumber frees by a few hundred, and every run
walks the young objects that are still alive. Parsing a config of 10,000 targets or listing
10,000 slices allocates millions of objects that all stay: each of those walks finds
nothing, and together they cost about a second of a 10,000-target `--once` run
(docs/performance.md). Reference counting still frees everything that is not a cycle
while paused; a cycle made meanwhile is found by the first collection after.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager


class _Pauses:
    """Nested and concurrent pauses (a relist per informer thread): the collector runs
    again when the last one ends, and only if it was running when the first began."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._was_enabled:
                    gc.enable()


_PAUSES = _Pauses()  # the collector is one per process, and so is this


def collector_paused() -> AbstractContextManager[None]:
    """`with collector_paused():` around building data that is meant to stay."""
    return _PAUSES.paused()
