"""Following every Consul source of the daemon within a fixed budget of connections.

Consul limits concurrent HTTP connections per client IP (`limits.http_max_conns_per_client`,
200 by default) and a blocking query holds one connection for up to its wait. One blocking
query per target therefore cannot pass ~200 targets. Here the connections are a budget
(`consul.max_connections`, default 32) spent on:

- **watches**: a service small enough (<= BIG_SERVICE instances) gets its own blocking query
  on /v1/health/service/<name>, one connection and one thread each, as long as slots are
  free. Any change (a check, a new instance, a move, its node) arrives within a round trip.
- **four change feeds per datacenter** (started once a service there has no slot of its
  own), each one blocking query; which Consul write reaches syncd through which feed:
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
    A read whose index has not moved is not even parsed.
- **a shared pool of readers** (up to 4 connections and threads) for those reads,
  the first read of every feed-followed service, and prepared queries.

So connections and threads stay at most `max_connections` whatever the number of targets;
identical queries of several targets are asked once. A patched or partially read answer
that would take a target below its `drain_floor` is not handed out: the service is read in
full first, so drain protection only ever holds on one consistent answer. Services with
their own `filter` expression are read in full rather than patched, as the filter may
depend on check status.

Index rules as Consul documents them: an unchanged index on a watch's timeout means
nothing changed; an index that goes backwards (an agent restarted, a snapshot restored)
starts over from 0 and, for a feed, re-reads the datacenter's feed-followed services;
after a failure a watch starts over from 0. Edits learned from the feeds are ordered by
their raft index, so a read that started before a feed's change cannot undo it.

Failures back off with jitter per watch, per feed and per service read (reads retry
through a rate-limited queue: a Consul outage cannot become a storm), and the targets
they serve are reported stale (metric and log) until an answer comes back; a failing feed
makes every service it covers stale, once, with one log line for all of them.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import SourceError
from syncd.model import ConsulSourceConfig, ready_count
from syncd.observability import CONSUL_CONNECTIONS, CONSUL_READS, CONSUL_SERVICES
from syncd.sources.base import ChangeEmitter, Emit
from syncd.sources.consul import ConsulSource, EntryMemo
from syncd.sources.consul_api import ConsulClients, HeldClient, get
from syncd.sources.consul_state import (
    CheckChange,
    NodeRecords,
    NonPassing,
    QueryState,
    Selector,
    changed_nodes,
    check_changes,
    node_records,
    non_passing,
    selector_filter,
)
from syncd.workqueue import RetryLimiter, WorkQueue

log = logging.getLogger(__name__)

BIG_SERVICE = 256  # instances above which a service is followed by the feeds, not a watch
CONFIRM_BATCH = 32  # instances read in one filtered read; more: read the whole service
WATCH_RETRY_CAP = 5.0  # seconds between a failing watch's attempts, at most
FEED_RETRY_CAP = 10.0  # ... a failing feed's
TOKEN_CHECK = 1.0  # seconds between looks at a token file (a stat; read when it changed)

QueryKey = tuple  # what makes two sources ask Consul the same question
Scope = tuple[str | None, str | None, str | None]  # datacenter, namespace, partition


def query_key(config: ConsulSourceConfig) -> QueryKey:
    return (
        config.service,
        config.tags,
        config.datacenter,
        config.node_meta,
        config.filter,
        config.namespace,
        config.partition,
        config.consistency,
    )


def scope_of(config: ConsulSourceConfig) -> Scope:
    return (config.datacenter, config.namespace, config.partition)


class Mode(enum.Enum):
    NEW = "new"  # not placed yet
    WATCH = "watch"  # its own blocking query
    FEED = "feed"  # the change feeds and the shared readers


# --------------------------------------------------------------------------- one query


@dataclass
class _Subscriber:
    source: ConsulSource
    emitter: ChangeEmitter
    memo: EntryMemo = field(default_factory=dict)


class _Query(QueryState):
    """One question to Consul, its answer (QueryState) and the targets asking it."""

    def __init__(self, key: QueryKey, source: ConsulSource):
        super().__init__()
        self.key = key
        self.source = source  # the first subscriber's; all ask the same
        self.scope = scope_of(source.config)
        self.service = source.config.service
        self.subscribers: dict[int, _Subscriber] = {}
        self.mode = Mode.NEW
        self.failing = False
        self.failed_by_feed = False  # stale because its datacenter's feeds fail
        self.reset_next = False  # Consul's index went backwards: forget the feed edits
        self.stop = threading.Event()  # ends its watch
        self.held: HeldClient | None = None  # its watch's connection
        self.restart = False  # its query in flight was cut short on purpose: ask again

    def stop_watch(self) -> None:
        """End its watch now: the blocking query in flight is cut short."""
        self.stop.set()
        held = self.held
        if held is not None:
            held.interrupt()

    @property
    def patchable(self) -> bool:
        return not self.source.config.filter

    def publish(self, unless_draining: bool = False) -> bool:
        """Hand the current answer to every subscriber (each maps it for its target).

        With `unless_draining` (a patched answer), nothing is handed out if it would leave
        some target below its drain floor: the caller reads the service in full first, so
        drain protection only ever holds on a consistent answer. Returns whether it did."""
        with self.lock:
            if self.entries is None:
                return False
            entries = list(self.entries.values())
            snapshots = [
                (subscriber, subscriber.source.snapshot(entries, subscriber.memo))
                for subscriber in list(self.subscribers.values())
            ]
            if unless_draining and any(
                ready_count(snapshot.backends) < subscriber.source.target.drain_floor
                for subscriber, snapshot in snapshots
            ):
                return False
            self.failing = self.failed_by_feed = False
            for subscriber, snapshot in snapshots:
                subscriber.emitter.answer(snapshot)
            return True

    def fail(self, error: SourceError, quiet: bool = False, by_feed: bool = False) -> None:
        with self.lock:
            self.failing = True
            self.failed_by_feed = by_feed
            for subscriber in list(self.subscribers.values()):
                subscriber.emitter.failure(error, quiet=quiet)


# --------------------------------------------------------------------------- the hub


@dataclass(frozen=True)
class Subscription:
    key: QueryKey
    id: int


@dataclass
class _Feeds:
    """The change feeds of one datacenter, what they last said, and its sweep."""

    scope: Scope
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    held: list[HeldClient] = field(default_factory=list)  # the feeds' connections
    restart: set[str] = field(default_factory=set)  # feeds cut short on purpose: ask again
    failing: set[str] = field(default_factory=set)  # feed kinds
    indexes: dict[str, int] = field(default_factory=dict)  # per feed kind
    non_passing: dict[str, NonPassing] = field(default_factory=dict)  # per health feed
    names: set[str] | None = None  # the catalog feed's last answer
    nodes: NodeRecords | None = None  # the node feed's last answer
    # the sweep: every feed-followed service read once after `changed_at`, in ring order
    changed_at: float = 0.0
    sweeping: bool = False
    ring: list[QueryKey] = field(default_factory=list)
    cursor: int = 0

    @property
    def answered(self) -> bool:
        """Have both health feeds answered (so a service placed now is read by them)?"""
        return all(kind in self.non_passing for kind in HEALTH_FEEDS)

    def close(self) -> None:
        self.stop.set()
        for held in list(self.held):
            held.interrupt()


class _Job(enum.Enum):
    """Queue keys of the readers' work that is not a full read of one query."""

    CONFIRM = "confirm"  # (CONFIRM, query key): a partial read of the instances in _confirm
    SWEEP = "sweep"  # (SWEEP, scope): the sweep's next step
    REBALANCE = "rebalance"  # (REBALANCE,): watch slots were freed; place the queries again
    TOKEN = "token"  # (TOKEN,): has the token file changed? (every TOKEN_CHECK seconds)


class ConsulWatch:
    """Every Consul service source of the daemon, followed within `max_connections`."""

    def __init__(self, clients: ConsulClients):
        self.clients = clients
        connection = clients.connection
        self._budget = connection.max_connections
        self._sweep_rate = connection.sweep_rate
        self._queries: dict[QueryKey, _Query] = {}
        self._by_service: dict[tuple[Scope, str], set[QueryKey]] = {}
        self._feeds: dict[Scope, _Feeds] = {}
        self._confirm: dict[QueryKey, set[Selector]] = {}
        self._watchers: dict[int, _Query] = {}  # live watch threads (a stopped one lingers
        #                                          until its blocking query returns)
        self._lock = threading.RLock()
        self._ids = 0
        self._stopped = threading.Event()
        self._queue = WorkQueue(RetryLimiter(base=0.5, cap=30.0, qps=20.0, burst=200))
        self._readers = [
            threading.Thread(target=self._read_loop, name=f"consul-reader-{n}", daemon=True)
            for n in range(clients.size)
        ]
        for reader in self._readers:
            reader.start()
        self._token_generation = clients.token.generation if clients.token else 0
        if clients.token is not None and clients.token.rereadable:
            self._queue.add_after((_Job.TOKEN,), TOKEN_CHECK, "token")
        CONSUL_CONNECTIONS.set_function(self.connections)

    # -- subscriptions

    def subscribe(self, source: ConsulSource, emit: Emit) -> Subscription:
        key = query_key(source.config)
        with self._lock:
            query = self._queries.get(key)
            if query is None:
                query = self._queries[key] = _Query(key, source)
                self._by_service.setdefault((query.scope, query.service), set()).add(key)
            self._ids += 1
            subscriber = _Subscriber(source, ChangeEmitter(emit, source.target.key))
            query.subscribers[self._ids] = subscriber
            subscription = Subscription(key, self._ids)
        if query.entries is not None and not query.failing:  # a second target, later
            with query.lock:
                entries = list(query.entries.values())
                subscriber.emitter.answer(subscriber.source.snapshot(entries, subscriber.memo))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            query = self._queries.get(subscription.key)
            if query is None:
                return
            query.subscribers.pop(subscription.id, None)
            if query.subscribers:
                return
            del self._queries[query.key]
            names = self._by_service.get((query.scope, query.service))
            if names is not None:
                names.discard(query.key)
                if not names:
                    del self._by_service[(query.scope, query.service)]
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
            queries = list(self._queries.values())
            scopes = {q.scope for q in queries}
            slots = max(0, self._budget - self.clients.size - len(FEEDS) * len(scopes))
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
            for scope in feed_scopes - set(self._feeds):
                self._start_feeds(scope)
            for scope in set(self._feeds) - feed_scopes:
                self._feeds.pop(scope).close()
            CONSUL_SERVICES.labels("watch").set(sum(q.mode is Mode.WATCH for q in queries))
            CONSUL_SERVICES.labels("feed").set(sum(q.mode is Mode.FEED for q in queries))

    def _to_watch(self, query: _Query) -> None:
        query.mode = Mode.WATCH
        query.stop = stop = threading.Event()
        self._ids += 1
        serial = self._ids
        self._watchers[serial] = query
        threading.Thread(
            target=self._watch_loop,
            args=(query, stop, serial),
            name=f"consul-watch {query.service}",
            daemon=True,
        ).start()

    def _to_feed(self, query: _Query) -> None:
        previous = query.mode
        query.mode = Mode.FEED
        query.stop_watch()
        feeds = self._feeds.get(query.scope)
        if previous is not Mode.NEW or (feeds is not None and feeds.answered):
            self._queue.add(query.key, "catch-up")  # else the feeds' first answers read it

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            for query in self._queries.values():
                query.stop_watch()
            for feeds in self._feeds.values():
                feeds.close()
            self._feeds.clear()
        self._queue.shut_down()

    def connections(self) -> int:
        """Connections held now, or that the reader pool may open: watches, feeds, readers."""
        with self._lock:
            feeds = sum(1 for f in self._feeds.values() for t in f.threads if t.is_alive())
            return len(self._watchers) + feeds + self.clients.size

    # -- watches

    def _watch_loop(self, query: _Query, stop: threading.Event, serial: int) -> None:
        """One service's own blocking queries, until it is stopped or grows big."""
        held: HeldClient | None = None
        index = query.index if query.entries is not None and not query.failing else 0
        reset = False
        failures = 0
        try:
            while not stop.is_set() and not self._stopped.is_set():
                started = time.monotonic()
                try:
                    if held is None:
                        held = query.held = self.clients.held()
                        if stop.is_set():
                            break
                    reply = query.source.read(held.client, index)
                except SourceError as error:
                    if stop.is_set():
                        break
                    if query.restart:  # cut short for a new token: ask again, at once
                        query.restart = False
                        continue
                    failures += 1
                    index = 0  # the agent may have restarted with a lower index: start over
                    query.fail(error)
                    stop.wait(backoff(failures, WATCH_RETRY_CAP))
                    continue
                failures = 0
                if reply.index < index:
                    log.info(
                        "%s: Consul index went backwards (%d < %d); starting over",
                        query.service,
                        reply.index,
                        index,
                    )
                    index, reset = 0, True
                    continue
                if reply.index != index or query.failing or query.entries is None:
                    query.replace(reply.index, reply.body, started, reset)
                    query.publish()
                    index, reset = max(reply.index, 1), False
                if query.size > BIG_SERVICE and not stop.is_set():
                    log.info(
                        "consul service %s has %d instances: followed by the change feeds "
                        "from now on (a change then costs a patch, not a re-read)",
                        query.service,
                        query.size,
                    )
                    with self._lock:
                        if query.mode is Mode.WATCH and query.stop is stop:
                            self._to_feed(query)
                    break
                pause = self.clients.connection.min_query_interval - (time.monotonic() - started)
                if pause > 0:
                    stop.wait(pause)
        finally:
            if held is not None:
                if query.held is held:
                    query.held = None
                held.close()
            with self._lock:
                self._watchers.pop(serial, None)
            if not self._stopped.is_set():  # its slot is free: another service may take it
                self._queue.add((_Job.REBALANCE,), "rebalance")  # many at once: one commit

    # -- the change feeds

    def _start_feeds(self, scope: Scope) -> None:
        feeds = self._feeds[scope] = _Feeds(scope)
        for kind in FEEDS:
            thread = threading.Thread(
                target=self._feed_loop,
                args=(feeds, kind),
                name=f"consul-{kind}-feed",
                daemon=True,
            )
            feeds.threads.append(thread)
            thread.start()

    def _feed_loop(self, feeds: _Feeds, kind: str) -> None:
        datacenter = feeds.scope[0]
        name = f"consul {kind} feed" + (f"@{datacenter}" if datacenter else "")
        params = [
            (key, value)
            for key, value in zip(("dc", "ns", "partition"), feeds.scope, strict=True)
            if value
        ]
        path = FEED_PATHS[kind]
        wait = f"{int(self.clients.connection.wait)}s"
        held: HeldClient | None = None
        index = failures = 0
        try:
            while not feeds.stop.is_set():
                started = time.monotonic()
                try:
                    if held is None:
                        held = self.clients.held()
                        feeds.held.append(held)
                        if feeds.stop.is_set():
                            break
                    blocking = [("index", index), ("wait", wait)] if index else []
                    reply = get(
                        held.client,
                        path,
                        params + blocking,
                        kind="consul_feed",
                        name=name,
                        denied="ACL token may not read it",
                    )
                except SourceError as error:
                    if feeds.stop.is_set():
                        break
                    if kind in feeds.restart:  # cut short for a new token: ask again
                        feeds.restart.discard(kind)
                        continue
                    failures += 1
                    index = 0
                    self._feed_failed(feeds, kind, error)
                    feeds.stop.wait(backoff(failures, FEED_RETRY_CAP))
                    continue
                failures = 0
                if reply.index < index:
                    log.info("%s: Consul index went backwards; starting over", name)
                    index = 0
                    continue
                if reply.index != index or kind in feeds.failing:
                    with self._lock:
                        self._on_feed(feeds, kind, reply.index, reply.body, started)
                    index = max(reply.index, 1)
                pause = self.clients.connection.min_query_interval - (time.monotonic() - started)
                if pause > 0:
                    feeds.stop.wait(pause)
        finally:
            if held is not None:
                held.close()

    def _feed_queries(self, scope: Scope) -> list[_Query]:
        return [q for q in self._queries.values() if q.scope == scope and q.mode is Mode.FEED]

    def _on_feed(self, feeds: _Feeds, kind: str, index: int, body: Any, started: float) -> None:
        """A feed's new answer (called with the hub's lock held)."""
        if feeds.stop.is_set():
            return
        recovered = kind in feeds.failing
        feeds.failing.discard(kind)
        last = feeds.indexes.get(kind, 0)
        first = kind not in feeds.indexes
        feeds.indexes[kind] = index
        moved_on = not first and index >= last
        rows = body if isinstance(body, list) else ()
        if kind in HEALTH_FEEDS:
            before = feeds.non_passing.get(kind)
            after = feeds.non_passing[kind] = non_passing(rows)
            if before is not None and moved_on:
                self._route(feeds.scope, check_changes(before, after, index))
        elif kind == "nodes":
            old_nodes, feeds.nodes = feeds.nodes, node_records(rows)
            if old_nodes is not None and moved_on:
                self._nodes_changed(feeds.scope, changed_nodes(old_nodes, feeds.nodes))
        else:
            names = set(body) if isinstance(body, dict) else set()
            old_names, feeds.names = feeds.names, names
            if old_names is not None and moved_on and index > last:
                for service in names ^ old_names:  # appeared or vanished: read them now
                    for key in self._by_service.get((feeds.scope, service), ()):
                        self._queue.add(key, "catalog")
                self._sweep(feeds)
        if first or index < last:  # (re)started, or Consul's index went backwards
            for query in self._feed_queries(feeds.scope):
                if index < last:
                    query.reset_next = True
                if index < last or query.read_started < started:
                    self._queue.add(query.key, "catch-up")
        if recovered and not feeds.failing:
            log.warning("%s: the change feeds answer again", _scope_name(feeds.scope))
            for query in self._feed_queries(feeds.scope):
                if query.failing and query.failed_by_feed:
                    query.publish()

    def _feed_failed(self, feeds: _Feeds, kind: str, error: SourceError) -> None:
        with self._lock:
            first = not feeds.failing
            feeds.failing.add(kind)
            if not first:
                return
            queries = self._feed_queries(feeds.scope)
        log.warning(
            "%s; the %d services it follows are stale until it answers again (retrying "
            "with backoff)",
            error,
            len(queries),
        )
        for query in queries:
            query.fail(error, quiet=True, by_feed=True)

    def _route(self, scope: Scope, changes: list[CheckChange]) -> None:
        """Take the health feeds' changes to the services they concern (lock held): a
        service check to its service's queries, a node check to every query with an
        instance on that node (a check syncd has never seen included)."""
        by_query: dict[QueryKey, list[CheckChange]] = {}
        feed_queries: list[_Query] | None = None
        for change in changes:
            if change.service:
                keys: Iterable[QueryKey] = self._by_service.get((scope, change.service), ())
            else:
                if feed_queries is None:
                    feed_queries = self._feed_queries(scope)
                keys = [q.key for q in feed_queries if change.node in q.on_node]
            for key in keys:
                by_query.setdefault(key, []).append(change)
        for key, mine in by_query.items():
            query = self._queries.get(key)
            if query is None or query.mode is not Mode.FEED:
                continue
            if not query.patchable or any(c.service and not c.service_id for c in mine):
                self._queue.add(key, "health")  # a filter, or a check naming no instance
                continue
            result = query.patch(mine)
            if result.reads:
                self._read_instances(key, result.reads)
            if result.changed and not query.publish(unless_draining=True):
                self._queue.add(key, "verify")  # read in full before drain protection holds

    def _nodes_changed(self, scope: Scope, nodes: set[str]) -> None:
        """Nodes whose address or meta changed, or that left: read their instances (lock
        held)."""
        if not nodes:
            return
        for query in self._feed_queries(scope):
            mine = nodes & query.on_node.keys()
            if not mine:
                continue
            if query.patchable:
                self._read_instances(query.key, {(node, None) for node in mine})
            else:
                self._queue.add(query.key, "node")

    def _read_instances(self, key: QueryKey, selectors: Iterable[Selector]) -> None:
        self._confirm.setdefault(key, set()).update(selectors)
        self._queue.add((_Job.CONFIRM, key), "instances")

    def _sweep(self, feeds: _Feeds) -> None:
        """Read every feed-followed service of the scope whose last read started before
        now, paced at sweep_rate (lock held). A sweep under way just extends: each service
        is read once after the latest change, so a change waits at most one round."""
        feeds.changed_at = time.monotonic()
        if not feeds.sweeping:
            feeds.sweeping = True
            feeds.ring, feeds.cursor = [q.key for q in self._feed_queries(feeds.scope)], 0
            self._queue.add((_Job.SWEEP, feeds.scope), "sweep")

    def _sweep_step(self, scope: Scope) -> None:
        """Queue the next service the sweep must read; come back after one spacing."""
        with self._lock:
            feeds = self._feeds.get(scope)
            if feeds is None or not feeds.sweeping:
                return
            for _lap in range(2):
                while feeds.cursor < len(feeds.ring):
                    key = feeds.ring[feeds.cursor]
                    feeds.cursor += 1
                    query = self._queries.get(key)
                    if (
                        query is not None
                        and query.mode is Mode.FEED
                        and query.read_started < feeds.changed_at
                    ):
                        self._queue.add(key, "sweep")
                        self._queue.add_after((_Job.SWEEP, scope), 1.0 / self._sweep_rate, "sweep")
                        return
                # a round ended: go round again only for services not read since the change
                feeds.ring, feeds.cursor = [q.key for q in self._feed_queries(scope)], 0
            feeds.sweeping = False

    # -- the shared readers

    def _read_loop(self) -> None:
        while not self._stopped.is_set():
            item = self._queue.get(timeout=1.0)
            if item is None:
                continue
            key, reason = item
            try:
                if key == (_Job.REBALANCE,):
                    self.commit()
                elif key == (_Job.TOKEN,):
                    self._check_token()
                elif isinstance(key, tuple) and key and key[0] is _Job.CONFIRM:
                    self._partial_read(key[1])
                elif isinstance(key, tuple) and key and key[0] is _Job.SWEEP:
                    self._sweep_step(key[1])
                else:
                    self._read(key, reason)  # type: ignore[arg-type]
            except Exception:  # a bug must not end a reader
                log.exception("reading %s from Consul failed unexpectedly", key)
            finally:
                self._queue.done(key)

    def _check_token(self) -> None:
        """A rotated token file: blocking queries in flight carry the old token for up to
        their wait, and the old token may be revoked any moment now. Cut them short so
        they ask again with the new one (not a failure: nothing is reported stale)."""
        token = self.clients.token
        assert token is not None
        token.current()  # reads the file again if it changed
        if token.generation != self._token_generation:
            self._token_generation = token.generation
            with self._lock:
                held: list[HeldClient] = []
                for query in self._queries.values():
                    if query.mode is Mode.WATCH and query.held is not None:
                        query.restart = True
                        held.append(query.held)
                for feeds in self._feeds.values():
                    feeds.restart.update(FEEDS)
                    held += feeds.held
            log.info("the Consul token changed; %d blocking queries ask again with it", len(held))
            for client in held:
                client.interrupt()
        self._queue.add_after((_Job.TOKEN,), TOKEN_CHECK, "token")

    def _read(self, key: QueryKey, reason: str) -> None:
        query = self._queries.get(key)
        if query is None or query.mode is not Mode.FEED:
            return  # gone, or its own watch reads it
        CONSUL_READS.labels(reason or "other").inc()
        reset, query.reset_next = query.reset_next, False
        known = query.entries is not None and not query.failing and not reset
        started = time.monotonic()
        try:
            with self.clients.borrow() as client:
                reply = query.source.read(client, 0, unless_index=query.index if known else None)
        except SourceError as error:
            query.fail(error)
            if reset:
                query.reset_next = True
            self._queue.add_rate_limited(key)
            return
        self._queue.forget(key)
        if reply.body is None:  # its index has not moved: nothing changed
            with query.lock:
                query.read_started = max(query.read_started, started)
            return
        query.replace(reply.index, reply.body, started, reset or reply.index < query.index)
        query.publish()

    def _partial_read(self, key: QueryKey) -> None:
        """Read just the instances a feed named (one filtered read of the service): they
        may have moved, passed, or gone since syncd last read them."""
        with self._lock:
            selectors = frozenset(self._confirm.pop(key, ()))
            query = self._queries.get(key)
        if not selectors or query is None or query.mode is not Mode.FEED:
            return
        if len(selectors) > CONFIRM_BATCH:
            self._queue.add(key, "health")  # many at once: one full read is cheaper
            return
        CONSUL_READS.labels("confirm").inc()
        try:
            with self.clients.borrow() as client:
                reply = query.source.read(client, 0, selection=selector_filter(selectors))
        except SourceError:
            self._queue.add(key, "health")  # the full read retries with backoff
            return
        query.refresh(selectors, reply.index, reply.body or [])
        if not query.publish(unless_draining=True):
            self._queue.add(key, "verify")


HEALTH_FEEDS = ("critical", "warning")  # the checks that are not passing, by status
FEED_PATHS = {
    "critical": "/v1/health/state/critical",
    "warning": "/v1/health/state/warning",
    "nodes": "/v1/catalog/nodes",  # node addresses and meta; a node leaving
    "catalog": "/v1/catalog/services",  # services appearing and vanishing; any registration
}
FEEDS = tuple(FEED_PATHS)  # one connection each, per datacenter


def backoff(failures: int, cap: float) -> float:
    """Capped exponential backoff with full jitter: failing clients spread out."""
    return random.uniform(0.5, 1.0) * min(cap, 0.5 * 2 ** min(failures - 1, 20))


def _scope_name(scope: Scope) -> str:
    datacenter = scope[0]
    return "consul change feeds" + (f"@{datacenter}" if datacenter else "")


__all__ = ["ConsulWatch", "Mode", "Subscription"]
