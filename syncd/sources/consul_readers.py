"""The shared readers: a few connections (`ConsulClients.size`) that do every read that is
not a watch's: the first read of a feed-followed service, the full and partial reads the
feeds ask for, the sweep's steps, prepared queries; and the hub's own chores (placing the
queries again, looking at the token file).

Reads go through a rate-limited work queue: a failing read retries with its own backoff
and a Consul outage cannot become a storm. A full read whose index has not moved is not
even parsed (`unless_index`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

from syncd.errors import SourceError, SourceUnreachable
from syncd.observability import CONSUL_READS
from syncd.sources.consul_api import ConsulClients, get
from syncd.sources.consul_blocking import Interruptible
from syncd.sources.consul_feeds import ChangeFeeds
from syncd.sources.consul_query import (
    AgentCheck,
    Mode,
    Queries,
    QueryKey,
    ReadInstances,
    Rebalance,
    SweepStep,
    TokenCheck,
)
from syncd.sources.consul_state import selector_filter
from syncd.workqueue import WorkQueue

log = logging.getLogger(__name__)

INSTANCES_BATCH = 32  # instances read in one filtered read; more: read the whole service
TOKEN_CHECK = 1.0  # seconds between looks at a token file (a stat; read when it changed)
# Seconds between two looks at whether the agent answers (GET /v1/status/leader, within
# consul.timeout). A blocking query says nothing for up to its wait, so a stalled network
# (bytes dropped, nothing closed) would otherwise go unnoticed for minutes: this bounds
# the time to notice to AGENT_CHECK + consul.timeout, and the time to ask again once it
# answers to AGENT_CHECK.
AGENT_CHECK = 5.0


class Readers:
    def __init__(
        self,
        queries: Queries,
        feeds: ChangeFeeds,
        queue: WorkQueue,
        clients: ConsulClients,
        rebalance: Callable[[], None],
        stopped: threading.Event,
    ):
        self._queries = queries
        self._feeds = feeds
        self._queue = queue
        self._clients = clients
        self._rebalance = rebalance
        self._stopped = stopped
        self._token_generation = clients.token.generation if clients.token else 0
        if clients.token is not None and clients.token.rereadable:
            queue.add_after(TokenCheck(), TOKEN_CHECK, "token")
        self._agent_down: SourceError | None = None  # why the agent did not answer
        queue.add_after(AgentCheck(), AGENT_CHECK, "agent")
        self.threads = [
            threading.Thread(target=self._loop, name=f"consul-reader-{n}", daemon=True)
            for n in range(clients.size)
        ]
        for thread in self.threads:
            thread.start()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            item = self._queue.get(timeout=1.0)
            if item is None:
                continue
            key, reason = item
            try:
                self._do(key, reason)
            except Exception:  # a bug must not end a reader
                log.exception("reading %s from Consul failed unexpectedly", key)
            finally:
                self._queue.done(key)

    def _do(self, key: Hashable, reason: str) -> None:
        if isinstance(key, Rebalance):
            self._rebalance()
        elif isinstance(key, TokenCheck):
            self._check_token()
        elif isinstance(key, AgentCheck):
            self._check_agent()
        elif isinstance(key, ReadInstances):
            self._read_instances(key.key)
        elif isinstance(key, SweepStep):
            self._feeds.sweep_step(key.scope)
        else:
            assert isinstance(key, tuple), key
            self._read(key, reason)

    def _check_token(self) -> None:
        """A rotated token file: blocking queries in flight carry the old token for up to
        their wait, and the old token may be revoked any moment now. Cut them short so
        they ask again with the new one (not a failure: nothing is reported stale)."""
        token = self._clients.token
        assert token is not None
        token.current()  # reads the file again if it changed
        if token.generation != self._token_generation:
            self._token_generation = token.generation
            with self._queries.lock:
                held: list[Interruptible] = []
                for query in self._queries.all():
                    if query.mode is Mode.WATCH and query.held is not None:
                        query.restart = True
                        held.append(query.held)
                held += self._feeds.cut_short()
            log.info("the Consul token changed; %d blocking queries ask again with it", len(held))
            for client in held:
                client.interrupt()
        self._queue.add_after(TokenCheck(), TOKEN_CHECK, "token")

    def _check_agent(self) -> None:
        """Is the agent answering? When it stops (the check fails and no other request
        was answered for a check period and a timeout), every Consul target is reported stale
        (what is applied is kept) and every blocking query is cut, to be asked again from
        index 0; when it answers again, those still failing are cut once more, so none
        waits out its deadline on a connection that was stalled."""
        try:
            with self._clients.borrow() as client:
                get(
                    client,
                    "/v1/status/leader",
                    None,
                    kind="consul_agent",  # counted apart from the services' reads
                    name="the Consul agent",
                    denied="the ACL token may not ask it",
                )
        except SourceUnreachable as error:
            # Busy, not gone, while other answers keep coming (a cold start of thousands
            # of queries can hold the check up): lost only when nothing answered either.
            quiet = self._clients.silent_for() > AGENT_CHECK + self._clients.connection.timeout
            if self._agent_down is None and quiet:
                self._agent_down = error
                self._agent_lost(error)
        except SourceError:  # it answered, with an error (429, 403, 500): it is there
            self._clients.answered()
        else:
            self._clients.answered()
            if self._agent_down is not None:
                self._agent_down = None
                self._agent_back()
        finally:
            self._queue.add_after(AgentCheck(), AGENT_CHECK, "agent")

    def _agent_lost(self, error: SourceError) -> None:
        with self._queries.lock:
            queries = list(self._queries.all())
            held = [q.held for q in queries if q.mode is Mode.WATCH and q.held is not None]
            held += self._feeds.connections_held()
        log.warning(
            "%s; the %d Consul services syncd follows are stale (what is applied is kept) "
            "and their blocking queries are asked again until it answers",
            error,
            len(queries),
        )
        for query in queries:
            query.fail(error, quiet=True)
        self._cut(held)

    def _agent_back(self) -> None:
        with self._queries.lock:
            stalled = [
                q.held
                for q in self._queries.all()
                if q.mode is Mode.WATCH and q.failing and q.held is not None
            ]
            stalled += self._feeds.connections_held(failing_only=True)
            feed_followed = [q.key for q in self._queries.all() if q.mode is Mode.FEED]
        log.warning(
            "the Consul agent answers again; %d blocking queries still failing are asked again",
            len(stalled),
        )
        for key in feed_followed:  # their last reads may have failed too: one read each
            self._queue.add(key, "catch-up")
        if stalled:
            self._cut(stalled)

    def _cut(self, held: list[Interruptible]) -> None:
        pool = self._clients.pool()
        if pool is not None:
            pool.reconnect()  # every stream of a stalled connection, at once
        for client in held:
            client.interrupt()

    def _read(self, key: QueryKey, reason: str) -> None:
        query = self._queries.get(key)
        if query is None or query.mode is not Mode.FEED:
            return  # gone, or its own watch reads it
        CONSUL_READS.labels(reason or "other").inc()
        reset, query.reset_next = query.reset_next, False
        known = query.entries is not None and not query.failing and not reset
        started = time.monotonic()
        try:
            with self._clients.borrow() as client:
                reply = query.source.read(
                    client, 0, unless_index=query.index if known else None, keep=query.slim
                )
        except SourceError as error:
            query.fail(error)
            if reset:
                query.reset_next = True
            self._queue.add_rate_limited(key)
            return
        self._clients.answered()
        self._queue.forget(key)
        if reply.body is None:  # its index has not moved: nothing changed
            with query.lock:
                query.read_started = max(query.read_started, started)
            return
        query.replace(reply.index, reply.body, started, reset or reply.index < query.index)
        query.publish()

    def _read_instances(self, key: QueryKey) -> None:
        """Read just the instances a feed named (one filtered read of the service): they
        may have moved, passed, or gone since syncd last read them."""
        selectors = self._feeds.take_instances(key)
        query = self._queries.get(key)
        if not selectors or query is None or query.mode is not Mode.FEED:
            return
        if len(selectors) > INSTANCES_BATCH:
            self._queue.add(key, "health")  # many at once: one full read is cheaper
            return
        CONSUL_READS.labels("confirm").inc()
        try:
            with self._clients.borrow() as client:
                reply = query.source.read(
                    client, 0, selection=selector_filter(selectors), keep=query.slim
                )
        except SourceError:
            self._queue.add(key, "health")  # the full read retries with backoff
            return
        self._clients.answered()
        query.refresh(selectors, reply.index, reply.body or [])
        if not query.publish(unless_draining=True):
            self._queue.add(key, "verify")
