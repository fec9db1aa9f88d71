"""Following every Consul source of the daemon within a fixed budget of connections.

Consul limits concurrent HTTP connections per client IP (`limits.http_max_conns_per_client`,
200 by default) and a blocking query holds one connection for up to its wait. One blocking
query per target therefore cannot pass ~200 targets. Here the connections are a budget
(`consul.max_connections`, default 32) spent on:

- **watches**: a service small enough (<= BIG_SERVICE instances) gets its own blocking query
  on /v1/health/service/<name>, one connection and one thread each, as long as slots are
  free. Any change (a check, a new instance, a move, its node) arrives within a round trip.
- **four change feeds per datacenter** (consul_feeds; started once a service there has no
  slot of its own), each one blocking query; which Consul write reaches syncd through
  which feed:
  - /v1/health/state/critical and /v1/health/state/warning: every check that is not
    passing, service and node checks (maintenance is a critical check) alike. (One
    filtered query on state/any would do, but Consul evaluates a filter on every check:
    37 ms at 35,000 checks against 1 ms for these, which its state index serves.) The
    difference between two answers names the checks that changed, with their node and
    instance. What can only make instances less ready is patched into the entries syncd
    holds at once (no read); everything else (a check passing or leaving, critical
    turning warning, a check of an instance syncd does not hold) is answered by a
    *partial read*: the service filtered to that instance, or to every instance on that
    node, which returns their address and port with their checks (see consul_state).
  - /v1/catalog/nodes: node records. A node whose address, tagged addresses or meta
    changed, or that was deregistered, has its instances read (one partial read per
    service with instances there).
  - /v1/catalog/services: its index moves on every registration in the datacenter.
    Services that appear or vanish are read at once. As it does not say which instance
    changed (a move keeps its checks as they were), it starts a paced **sweep**: every
    feed-followed service whose last read started before the change is read once more,
    at `consul.sweep_rate` reads per second. A change during a sweep extends it rather
    than queueing another, so any change is read within one round (services / rate).
- **a shared pool of readers** (consul_readers; up to 4 connections and threads) for
  those reads, the first read of every feed-followed service, and prepared queries.

So connections and threads stay at most `max_connections` whatever the number of targets;
identical queries of several targets are asked once (consul_query). A patched or partially
read answer that would take a target below its `drain_floor` is not handed out: the service
is read in full first, so drain protection only ever holds on one consistent answer.
Services with their own `filter` expression are read in full rather than patched, as the
filter may depend on check status.

Index rules (consul_blocking): an unchanged index on a wait's timeout means nothing
changed; an index that goes backwards starts over from 0 and, for a feed, re-reads the
datacenter's feed-followed services. Edits learned from the feeds are ordered by their raft
index, so a read that started before a feed's change cannot undo it. Failures back off with
jitter per watch, per feed and per service read, and the targets they serve are reported
stale until an answer comes back; a failing feed makes every service it covers stale, once,
with one log line for all of them.
"""

from __future__ import annotations

import logging
import threading

from syncd.errors import SourceError
from syncd.observability import CONSUL_CONNECTIONS, CONSUL_SERVICES, CONSUL_STREAMS
from syncd.sources.base import ChangeEmitter, Emit
from syncd.sources.consul import ConsulSource
from syncd.sources.consul_api import ConsulClients, HeldClient, Reply
from syncd.sources.consul_blocking import Interruptible, Stop, StopFlag, Update, follow
from syncd.sources.consul_feeds import FEEDS, ChangeFeeds
from syncd.sources.consul_query import (
    Mode,
    Queries,
    Query,
    Rebalance,
    Subscriber,
    Subscription,
)
from syncd.sources.consul_readers import Readers
from syncd.sources.consul_streams import StreamWatch
from syncd.workqueue import RetryLimiter, WorkQueue

log = logging.getLogger(__name__)

BIG_SERVICE = 256  # instances above which a service is followed by the feeds, not a watch
WATCH_RETRY_CAP = 5.0  # seconds between a failing watch's attempts, at most


class ConsulWatch:
    """Every Consul service source of the daemon, followed within `max_connections`:
    which query is watched and which the feeds follow, and the watches themselves."""

    def __init__(self, clients: ConsulClients):
        self.clients = clients
        self._queries = Queries()
        self._lock = self._queries.lock
        self._watchers: dict[int, Query] = {}  # live watch threads (a stopped one lingers
        #                                        until its blocking query returns)
        self._stopped = threading.Event()
        self._queue = WorkQueue(RetryLimiter(base=0.5, cap=30.0, qps=20.0, burst=200))
        self._feeds = ChangeFeeds(
            self._queries, self._queue, clients, clients.connection.sweep_rate
        )
        self._readers = Readers(
            self._queries, self._feeds, self._queue, clients, self.commit, self._stopped
        )
        clients.on_transport = lambda: self._queue.add(Rebalance(), "rebalance")
        CONSUL_CONNECTIONS.set_function(self.connections)
        CONSUL_STREAMS.labels("open").set_function(lambda: self._pool_figure("streams"))
        CONSUL_STREAMS.labels("capacity").set_function(lambda: self._pool_figure("capacity"))
        self._said_how: tuple[bool | None, int, int] | None = None

    # -- subscriptions

    def subscribe(self, source: ConsulSource, emit: Emit) -> Subscription:
        subscriber = Subscriber(source, ChangeEmitter(emit, source.target.key))
        query, subscription = self._queries.add(source, subscriber)
        query.answer_late(subscriber)  # a second target, later: the answer held now
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        query = self._queries.remove(subscription)
        if query is not None:
            query.stop_watch()

    def commit(self) -> None:
        """Place new queries and rebalance after subscriptions changed: watches while
        slots are free, the feeds for the rest; start and stop feeds to match.

        The feeds' connections stay reserved for every datacenter even while every service
        has a watch, so a service that grows big can move to the feeds at once.
        """
        with self._lock:
            if self._stopped.is_set():
                return
            queries = self._queries.all()
            scopes = {q.scope for q in queries}
            reserved = self.clients.size + len(FEEDS) * len(scopes)  # readers and feeds
            pool = self.clients.pool()
            room = pool.capacity(self.clients.budget()) if pool else self.clients.budget()
            slots = max(0, room - reserved)
            alive = len(self._watchers)
            watched = 0
            for query in queries:
                small = query.entries is None or query.size <= BIG_SERVICE
                if query.mode is Mode.WATCH and watched < slots and small:
                    watched += 1
                elif query.mode is not Mode.WATCH and small and watched < slots and alive < slots:
                    watched += 1
                    alive += 1
                    self._to_watch(query)
                elif query.mode is not Mode.FEED:
                    self._to_feed(query)
            feed_scopes = {q.scope for q in queries if q.mode is Mode.FEED}
            for scope in feed_scopes - self._feeds.scopes():
                self._feeds.start(scope)
            for scope in self._feeds.scopes() - feed_scopes:
                self._feeds.close(scope)
            watching = sum(q.mode is Mode.WATCH for q in queries)
            following = sum(q.mode is Mode.FEED for q in queries)
            CONSUL_SERVICES.labels("watch").set(watching)
            CONSUL_SERVICES.labels("feed").set(following)
            self._say_how(watching, following, slots)

    def _say_how(self, watching: int, following: int, slots: int) -> None:
        """One line when how the services are followed changes (at start, mostly)."""
        how = (self.clients.http2, watching, following)
        if how == self._said_how:
            return
        self._said_how = how
        pool = self.clients.pool()
        if pool is not None:
            transport = (
                f"HTTP/2, up to {pool.capacity(self.clients.budget())} queries on "
                f"{self.clients.budget()} connections"
            )
        else:
            transport = f"HTTP/1.1, {self.clients.budget()} connections"
        log.info(
            "consul: %d services watched (%s; %d watch slots), %d followed by the change feeds",
            watching,
            transport,
            slots,
            following,
        )

    def _to_watch(self, query: Query) -> None:
        query.mode = Mode.WATCH
        serial = self._queries.next_id()
        self._watchers[serial] = query
        pool = self.clients.pool()
        if pool is not None:  # a stream on the shared loop, no thread
            watch = ServiceWatch(self, query, serial, StopFlag())
            query.stop = watch.stop
            StreamWatch(pool, query.source, watch, query.slim).start()
            return
        query.stop = stop = threading.Event()
        threading.Thread(
            target=self._watch,
            args=(ServiceWatch(self, query, serial, stop), stop),
            name=f"consul-watch {query.service}",
            daemon=True,
        ).start()

    def _to_feed(self, query: Query) -> None:
        previous = query.mode
        query.mode = Mode.FEED
        query.stop_watch()
        feeds = self._feeds.get(query.scope)
        if previous is not Mode.NEW or (feeds is not None and feeds.answered):
            self._queue.add(query.key, "catch-up")  # else the feeds' first answers read it

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            for query in self._queries.all():
                query.stop_watch()
            self._feeds.close_all()
        self._queue.shut_down()
        self.clients.close()

    def connections(self) -> int:
        """Connections held now, or that the reader pool may open: watches, feeds, readers
        (over HTTP/2, the shared pool's connections, which carry all of them)."""
        pool = self.clients.pool()
        if pool is not None:
            return pool.connections
        with self._lock:
            return len(self._watchers) + self._feeds.connections() + self.clients.size

    def _pool_figure(self, which: str) -> float:
        pool = self.clients.pool()
        if pool is None:
            return 0
        return pool.streams if which == "streams" else pool.capacity(self.clients.budget())

    # -- one service's own watch

    def _watch(self, watch: ServiceWatch, stop: threading.Event) -> None:
        """One service's own blocking queries on a connection and a thread of its own,
        until it is stopped or grows big."""
        try:
            follow(watch, self.clients, stop)  # hub.stop() stops every watch
        finally:
            watch.ended()

    def _watch_ended(self, serial: int) -> None:
        with self._lock:
            self._watchers.pop(serial, None)
        if not self._stopped.is_set():  # its slot is free: another service may take it
            self._queue.add(Rebalance(), "rebalance")  # many at once: one commit

    def _grown_big(self, query: Query, stop: Stop) -> bool:
        """Past BIG_SERVICE instances a service moves to the feeds (a patch per change
        instead of a re-read of everything)."""
        if query.size <= BIG_SERVICE or stop.is_set():
            return False
        log.info(
            "consul service %s has %d instances: followed by the change feeds "
            "from now on (a change then costs a patch, not a re-read)",
            query.service,
            query.size,
        )
        with self._lock:
            if query.mode is Mode.WATCH and query.stop is stop:
                self._to_feed(query)
        return True


class ServiceWatch:
    """What one service's own watch asks and does with its answers, whichever way it asks
    (a thread's loop, or HTTP/2 streams on the pool's loop). One slotted object with
    methods rather than closures: over HTTP/2 there is one per followed service."""

    __slots__ = ("_held", "hub", "index", "query", "serial", "stop")

    retry_cap = WATCH_RETRY_CAP

    def __init__(self, hub: ConsulWatch, query: Query, serial: int, stop: Stop):
        self.hub = hub
        self.query = query
        self.serial = serial
        self.stop = stop
        self.index = query.index if self.answer_known() else 0
        self._held: Interruptible | None = None

    @property
    def name(self) -> str:
        return self.query.service

    def answer_known(self) -> bool:
        return self.query.entries is not None and not self.query.failing

    def ask(self, held: HeldClient, index: int) -> Reply:
        return self.query.source.read(held.client, index, keep=self.query.slim)

    def on_answer(self, answer: Update) -> bool:
        query, reply = self.query, answer.reply
        if reply.index != answer.previous_index or query.failing or query.entries is None:
            query.replace(reply.index, reply.body, answer.started, answer.reset)
            query.publish()
        return not self.hub._grown_big(query, self.stop)

    def on_failure(self, error: SourceError) -> None:
        self.query.fail(error)
        if isinstance(self.stop, StopFlag) and self.hub.clients.http2 is False:
            # a stream's watch, and the agent speaks HTTP/1.1 only after all: placed
            # again, on a connection of its own
            with self.hub._lock:
                if self.query.stop is self.stop:
                    self.query.mode = Mode.NEW
            self.stop.set()

    def cut_short(self) -> bool:  # for a new token: ask again, at once
        restart, self.query.restart = self.query.restart, False
        return restart

    def on_connection(self, held: Interruptible | None) -> None:
        if held is not None:
            self._held = self.query.held = held
        elif self._held is not None and self.query.held is self._held:
            self.query.held = None

    def ended(self) -> None:
        self.hub._watch_ended(self.serial)


__all__ = ["ConsulWatch", "Mode", "Subscription"]
