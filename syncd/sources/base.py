"""The contract every source keeps."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

import tenacity

from syncd.errors import SourceError
from syncd.model import Snapshot


class Source(Protocol):
    """Reads one registry for one target."""

    def describe(self) -> str:
        """Short human name used in logs, e.g. 'static file backends.yaml'."""
        ...

    def fetch(self) -> Snapshot:
        """The registry's current answer; raise SourceError when it cannot answer.

        An empty snapshot means the registry says "no backends". A failure must never be
        reported as empty: callers keep the last applied state on SourceError.
        """
        ...

    def watch(self, stop: threading.Event, emit: Callable[[Snapshot | SourceError], None]):
        """Until `stop` is set: emit the first answer, then every change and every new failure."""
        ...


log = logging.getLogger(__name__)


class ChangeEmitter:
    """What a watcher passes on: answers that differ from the last, one error per streak.

    A failure right after an answer is reported once (the caller then keeps the last state
    and retries); the next good answer is always passed on, changed or not, to end the
    streak.
    """

    def __init__(self, emit: Callable[[Snapshot | SourceError], None], label: str):
        self._emit = emit
        self._label = label
        self.last: Snapshot | SourceError | None = None

    def answer(self, snapshot: Snapshot) -> None:
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


__all__ = ["ChangeEmitter", "Source", "SourceError", "retry_until_stopped"]


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

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(SourceError),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=max_backoff),
        stop=tenacity.stop_when_event_set(stop),
        sleep=stop.wait,
        before_sleep=before_sleep,
        reraise=False,
    )
