"""The contract every source keeps, and what the drivers share to run them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import tenacity

from syncd.errors import SourceError
from syncd.model import Snapshot

log = logging.getLogger(__name__)

Answer = Snapshot | SourceError
Emit = Callable[[Answer], None]


class Source(Protocol):
    """Reads one registry for one target."""

    def describe(self) -> str:
        """Short human name used in logs, e.g. 'static file backends.yaml'."""
        ...

    def fetch(self) -> Snapshot:
        """The registry's current answer, in one non-blocking read (render, --once).

        An empty snapshot means the registry says "no backends". A failure must never be
        reported as empty: raise SourceError, and callers keep the last applied state.
        """
        ...


@runtime_checkable
class PolledSource(Source, Protocol):
    """A source the daemon asks again and again on its shared scheduler."""

    def poll(self) -> tuple[Snapshot, float | None]:
        """The current answer and how many seconds until it should be asked again (None:
        never; the answer cannot change). Raises SourceError when it cannot answer."""
        ...


@runtime_checkable
class WatchedSource(Source, Protocol):
    """A source that follows its registry itself (Consul blocking queries)."""

    def watch(self, stop: threading.Event, emit: Emit) -> None:
        """Until `stop` is set: emit the first answer, then every change and every new failure."""
        ...


class ChangeEmitter:
    """What a watcher passes on: answers that differ from the last, one error per streak.

    A failure right after an answer is reported once (the caller then keeps the last state
    and retries); the next good answer is always passed on, changed or not, to end the
    streak. A snapshot's warnings (dropped registry entries) are logged once when they
    appear, not again with every answer that still carries them.
    """

    def __init__(self, emit: Emit, label: str):
        self._emit = emit
        self._label = label
        self._warned: frozenset[str] = frozenset()
        self.last: Answer | None = None

    def answer(self, snapshot: Snapshot) -> None:
        warnings = frozenset(snapshot.warnings)
        for warning in snapshot.warnings:
            if warning not in self._warned:
                log.warning("%s: %s: %s", self._label, snapshot.source, warning)
        self._warned = warnings
        last = self.last
        if (
            last is None
            or isinstance(last, SourceError)
            or (snapshot.backends != last.backends or snapshot.source != last.source)
        ):
            self.last = snapshot
            self._emit(snapshot)

    def failure(self, error: SourceError) -> None:
        if not isinstance(self.last, SourceError):
            log.warning("%s: %s; keeping the last state, retrying", self._label, error)
            self.last = error
            self._emit(error)


def retry_until_stopped(
    stop: threading.Event,
    on_failure: Callable[[SourceError], None],
    max_backoff: float = 5.0,
) -> tenacity.Retrying:
    """Retry a failing registry read with capped, jittered backoff until `stop` is set.

    `on_failure` sees every failure before the pause; sleeping is `stop.wait`, so shutdown
    interrupts it. A stop while failing ends the retries with tenacity.RetryError.
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, SourceError):
            on_failure(error)

    def pause(seconds: float) -> None:
        stop.wait(seconds)  # a shutdown cuts it short

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(SourceError),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=max_backoff),
        stop=tenacity.stop_when_event_set(stop),
        sleep=pause,
        before_sleep=before_sleep,
        reraise=False,
    )


__all__ = [
    "Answer",
    "ChangeEmitter",
    "Emit",
    "PolledSource",
    "Source",
    "SourceError",
    "WatchedSource",
    "retry_until_stopped",
]
