"""The one blocking-query loop, for a service's own watch and for each change feed.

Index rules as Consul documents them: an unchanged index on the wait's timeout means
nothing changed; an index that goes backwards (an agent restarted, a snapshot restored)
starts over from 0; after a failure the loop starts over from 0, backing off with jitter.
A query cut short on purpose (a new token) asks again at once and is not a failure.
Queries are spaced by at least `min_query_interval`, so a service that changes constantly
cannot make the loop spin.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from syncd.errors import SourceError
from syncd.ratelimit import backoff
from syncd.sources.consul_api import ConsulClients, HeldClient, Reply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Update:
    """One reply of a blocking query, with what the loop knows about it."""

    reply: Reply
    previous_index: int  # the index the query waited on (0: not blocking)
    started: float  # monotonic time the query was sent
    reset: bool  # Consul's index went backwards since the last answer


class Interruptible(Protocol):
    """What a watch holds that another thread may cut short (HeldClient, AsyncHeld)."""

    def interrupt(self) -> None: ...


class Stop(Protocol):
    """What ends a loop: a threading.Event for a thread's loop, which waits on it; a plain
    flag for a stream's callbacks, which never wait (ten thousand Events would cost
    12 MB)."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class StopFlag:
    """A Stop nobody waits on."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True


class Asker(Protocol):
    """What a loop asks and whom it tells: a feed's BlockingQuery of functions, or a
    service's watch (one object with these as methods: there may be ten thousand)."""

    retry_cap: float  # seconds between failing attempts, at most
    index: int  # where to start (an answer already held: its index)

    @property
    def name(self) -> str:
        """For the log."""
        ...

    def ask(self, held: HeldClient, index: int) -> Reply: ...

    def on_answer(self, answer: Update) -> bool:
        """False: stop following (e.g. moved to the feeds)."""
        ...

    def on_failure(self, error: SourceError) -> None: ...

    def cut_short(self) -> bool:
        """Was the query in flight interrupted on purpose? (Clears it.)"""
        ...

    def on_connection(self, held: Interruptible | None) -> None: ...


@dataclass
class BlockingQuery:
    """An Asker made of functions (the change feeds: a few per datacenter)."""

    name: str
    ask: Callable[[HeldClient, int], Reply]  # (connection, index) -> reply
    on_answer: Callable[[Update], bool]
    on_failure: Callable[[SourceError], None]
    cut_short: Callable[[], bool]
    on_connection: Callable[[Interruptible | None], None] = lambda held: None
    retry_cap: float = 5.0
    index: int = 0


class Position:
    """Where a loop is: the index it waits on, whether Consul's went backwards, and the
    failures in a row. What to do after each ask is decided here, for a thread's loop
    (`follow`) and for a stream's callbacks (consul_streams) alike."""

    __slots__ = ("failures", "index", "min_interval", "query", "reset")

    def __init__(self, query: Asker, min_interval: float):
        self.query = query
        self.min_interval = min_interval
        self.index, self.reset, self.failures = query.index, False, 0

    def failed(self, error: SourceError, stopped: bool) -> float | None:
        """After a failed ask: None to stop, else how long to wait (0: ask again now)."""
        if stopped:
            return None
        if self.query.cut_short():
            return 0.0
        self.failures += 1
        self.index = 0  # the agent may have restarted with a lower index: start over
        self.query.on_failure(error)
        return backoff(self.failures, 0.5, self.query.retry_cap)

    def answered(self, reply: Reply, started: float) -> float | None:
        """After an answer: None to stop, else how long to wait before asking again."""
        self.failures = 0
        if reply.index < self.index:
            log.info(
                "%s: Consul index went backwards (%d < %d); starting over",
                self.query.name,
                reply.index,
                self.index,
            )
            self.index, self.reset = 0, True
            return 0.0
        if not self.query.on_answer(Update(reply, self.index, started, self.reset)):
            return None
        self.index, self.reset = max(reply.index, 1), False
        return max(0.0, self.min_interval - (time.monotonic() - started))


def follow(query: Asker, clients: ConsulClients, stop: threading.Event) -> None:
    """Ask, wait for a change, tell, ask again; until `stop` is set or told to stop."""
    held: HeldClient | None = None
    position = Position(query, clients.connection.min_query_interval)
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                if held is None:
                    held = clients.held()
                    query.on_connection(held)
                    if stop.is_set():
                        break
                reply = query.ask(held, position.index)
            except SourceError as error:
                pause = position.failed(error, stop.is_set())
            else:
                clients.answered()
                pause = position.answered(reply, started)
            if pause is None:
                break
            if pause > 0:
                stop.wait(pause)
    finally:
        if held is not None:
            query.on_connection(None)
            held.close()
