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


@dataclass
class BlockingQuery:
    """What a loop asks and whom it tells."""

    name: str  # for the log
    ask: Callable[[HeldClient, int], Reply]  # (connection, index) -> reply
    on_answer: Callable[[Update], bool]  # False: stop following (e.g. moved to the feeds)
    on_failure: Callable[[SourceError], None]
    cut_short: Callable[[], bool]  # was the query in flight interrupted on purpose? (clears it)
    on_connection: Callable[[HeldClient | None], None] = lambda held: None
    retry_cap: float = 5.0
    index: int = 0  # where to start (an answer already held: its index)


def follow(query: BlockingQuery, clients: ConsulClients, stop: threading.Event) -> None:
    """Ask, wait for a change, tell, ask again; until `stop` is set or told to stop."""
    held: HeldClient | None = None
    index, reset, failures = query.index, False, 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                if held is None:
                    held = clients.held()
                    query.on_connection(held)
                    if stop.is_set():
                        break
                reply = query.ask(held, index)
            except SourceError as error:
                if stop.is_set():
                    break
                if query.cut_short():
                    continue
                failures += 1
                index = 0  # the agent may have restarted with a lower index: start over
                query.on_failure(error)
                stop.wait(backoff(failures, 0.5, query.retry_cap))
                continue
            failures = 0
            if reply.index < index:
                log.info(
                    "%s: Consul index went backwards (%d < %d); starting over",
                    query.name,
                    reply.index,
                    index,
                )
                index, reset = 0, True
                continue
            if not query.on_answer(Update(reply, index, started, reset)):
                break
            index, reset = max(reply.index, 1), False
            pause = clients.connection.min_query_interval - (time.monotonic() - started)
            if pause > 0:
                stop.wait(pause)
    finally:
        if held is not None:
            query.on_connection(None)
            held.close()
