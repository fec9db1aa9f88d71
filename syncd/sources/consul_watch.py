"""Following every Consul source of the daemon within a fixed budget of connections.

Consul limits concurrent HTTP connections per client IP (`limits.http_max_conns_per_client`,
200 by default) and a blocking query holds one connection for up to its wait. One blocking
query per target therefore cannot pass ~200 targets. Here the connections are a budget
(`consul.max_connections`, default 32) spent on:

- **watches**: a service small enough (<= BIG_SERVICE instances) gets its own blocking query
  on /v1/health/service/<name>, one connection and one thread each, as long as slots are
  free. Any change (a check, a new instance, a move) arrives within a round trip.
- **three change feeds per datacenter** (started once a service there has no slot of its
  own), each one blocking query:
  - the *health feeds*, /v1/health/state/critical and /v1/health/state/warning: every
    check in the datacenter that is not passing. (One filtered query on state/any would
    do, but Consul evaluates a filter on every check: 37 ms at 35,000 checks against
    1 ms for these, which its state index serves.) Their index moves on any check
    change; the difference between two answers names the checks that changed (service
    checks by service, node checks by node). A check that turned critical or warning is
    applied to the entries syncd holds (no read at all); a check that left a list is
    confirmed with a small filtered read of /v1/health/checks/<service> (it may have
    passed, changed lists, or been deregistered); a check syncd has never seen (a new
    instance) makes syncd read that service again.
  - the *catalog feed*, /v1/catalog/services: its index moves on every registration
    change in the datacenter. Services that appear or vanish are read at once; as the
    catalog does not say which instance changed (a move keeps its checks as they were),
    every feed-followed service of the datacenter is then read once more, paced at
    `consul.sweep_rate` reads per second (a sweep; changes during a sweep are covered by
    one more sweep after it). A read whose index has not moved is not even parsed.
- **a shared pool of readers** (up to 4 connections and threads) for those reads,
  the first read of every feed-followed service, and prepared queries.

So connections and threads stay at most `max_connections` whatever the number of targets;
identical queries of several targets are asked once. The trade-off, measured in the README:
a check change reaches a feed-followed service within two round trips like a watched one;
a new, moved or deregistered instance that changes no check waits for the sweep (seconds
at 1,000 services, about a minute and a half at 10,000 with the default rate). Services
with their own `filter` expression are read again rather than patched, as the filter may
depend on check status.

Index rules as Consul documents them: an unchanged index on a watch's timeout means
nothing changed; an index that goes backwards (an agent restarted, a snapshot restored)
starts over from 0 and, for a feed, re-reads the datacenter's feed-followed services;
after a failure a watch starts over from 0. Edits to checks syncd has applied itself are
ordered by ModifyIndex, so a read that started before a feed's change cannot undo it.

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
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import SourceError
from syncd.model import ConsulSourceConfig
from syncd.observability import CONSUL_CONNECTIONS, CONSUL_READS, CONSUL_SERVICES
from syncd.sources.base import ChangeEmitter, Emit
from syncd.sources.consul import ConsulSource, EntryMemo, scope_params, slim_entry
from syncd.sources.consul_api import ConsulClients, HeldClient, get
from syncd.workqueue import RetryLimiter, WorkQueue

log = logging.getLogger(__name__)

HEALTH_FEEDS = ("critical", "warning")  # the checks that are not passing, by status
FEEDS = len(HEALTH_FEEDS) + 1  # and the catalog's: connections each datacenter keeps
BIG_SERVICE = 256  # instances above which a service is followed by the feeds, not a watch
CONFIRM_BATCH = 32  # checks confirmed in one filtered read; more: read the whole service
WATCH_RETRY_CAP = 5.0  # seconds between a failing watch's attempts, at most
FEED_RETRY_CAP = 10.0  # ... a failing feed's

QueryKey = tuple  # what makes two sources ask Consul the same question
Scope = tuple[str | None, str | None, str | None]  # datacenter, namespace, partition
InstanceKey = tuple[str, str]  # (node, service id)
CheckKey = tuple[str, str]  # (node, check id)


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


# --------------------------------------------------------------------------- pure pieces


@dataclass(frozen=True)
class CheckChange:
    """A check the health feed saw change: its new status as of `index`."""

    check: CheckKey
    service: str  # "" for a node check
    status: str  # "passing" when it left the non-passing list (to be confirmed)
    index: int  # the check's ModifyIndex, or the feed's index when it left the list
    left: bool = False  # left the non-passing list: passed, or was deregistered


NonPassing = dict[CheckKey, tuple[str, str, int]]  # check -> (service, status, ModifyIndex)


def non_passing(rows: Iterable[dict[str, Any]]) -> NonPassing:
    """The health feed's answer, keyed by check."""
    return {
        (str(row.get("Node", "")), str(row.get("CheckID", ""))): (
            str(row.get("ServiceName") or ""),
            str(row.get("Status", "")),
            int(row.get("ModifyIndex") or 0),
        )
        for row in rows
        if isinstance(row, dict)
    }


def check_changes(before: NonPassing, after: NonPassing, index: int) -> list[CheckChange]:
    """What changed between two answers of the health feed (pure)."""
    changes = [
        CheckChange(check, service, status, modify_index)
        for check, (service, status, modify_index) in after.items()
        if before.get(check) != (service, status, modify_index)
    ]
    changes += [
        CheckChange(check, service, "passing", index, left=True)
        for check, (service, _status, _index) in before.items()
        if check not in after
    ]
    return changes


def confirm_filter(checks: Iterable[CheckKey]) -> str:
    """A filter expression selecting exactly these checks of a service."""

    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return " or ".join(
        f"(Node == {quoted(node)} and CheckID == {quoted(check)})" for node, check in checks
    )


# --------------------------------------------------------------------------- one query


@dataclass
class _Subscriber:
    source: ConsulSource
    emitter: ChangeEmitter
    memo: EntryMemo = field(default_factory=dict)


class _Query:
    """One question to Consul and what syncd knows of its answer, shared by the targets
    asking it. Entries are replaced, never edited, so unchanged ones map from the memo."""

    def __init__(self, key: QueryKey, source: ConsulSource):
        self.key = key
        self.source = source  # the first subscriber's; all ask the same
        self.scope = scope_of(source.config)
        self.service = source.config.service
        self.subscribers: dict[int, _Subscriber] = {}
        self.mode = Mode.NEW
        self.lock = threading.RLock()
        self.index = 0  # of the last full read applied
        self.entries: dict[InstanceKey, dict[str, Any]] | None = None  # None: never read
        self.homes: dict[CheckKey, list[InstanceKey]] = {}  # check -> instances carrying it
        self.applied: dict[CheckKey, tuple[str, int]] = {}  # feed edits: (status, as of)
        self.read_started = 0.0  # monotonic start of the last full read applied
        self.failing = False
        self.failed_by_feed = False  # stale because its datacenter's feeds fail
        self.reset_next = False  # Consul's index went backwards: forget the feed edits
        self.stop = threading.Event()  # ends its watch
        self.held: HeldClient | None = None  # its watch's connection

    def stop_watch(self) -> None:
        """End its watch now: the blocking query in flight is cut short."""
        self.stop.set()
        held = self.held
        if held is not None:
            held.interrupt()

    @property
    def patchable(self) -> bool:
        return not self.source.config.filter

    @property
    def size(self) -> int:
        return len(self.entries or ())

    def replace(self, index: int, body: list[dict[str, Any]], started: float, reset: bool) -> None:
        """A full read: it becomes the entries, except feed edits newer than it."""
        with self.lock:
            entries: dict[InstanceKey, dict[str, Any]] = {}
            homes: dict[CheckKey, list[InstanceKey]] = {}
            for entry in map(slim_entry, body):
                node = str((entry.get("Node") or {}).get("Node", ""))
                instance = (node, str((entry.get("Service") or {}).get("ID", "")))
                entries[instance] = entry
                for check in entry.get("Checks") or ():
                    homes.setdefault(
                        (str(check.get("Node", node)), str(check.get("CheckID", ""))), []
                    ).append(instance)
            self.entries, self.homes, self.index = entries, homes, index
            self.read_started = started
            kept = {} if reset else self.applied
            self.applied = {}
            for check, (status, as_of) in kept.items():
                self._apply(check, status, as_of)  # kept where newer than this read

    def apply_changes(self, changes: Iterable[tuple[CheckKey, str, int]]) -> tuple[bool, bool]:
        """Apply check statuses learned elsewhere; returns (anything changed, some check
        is unknown here: read the service again)."""
        changed = unknown = False
        with self.lock:
            if self.entries is None:
                return False, True
            for check, status, as_of in changes:
                if check not in self.homes:
                    unknown = True
                    continue
                changed |= self._apply(check, status, as_of)
        return changed, unknown

    def _apply(self, check_key: CheckKey, status: str, as_of: int) -> bool:
        """Set the check's status where what syncd holds is older than `as_of`; remember
        the edit until a full read at least as new replaces it."""
        assert self.entries is not None
        changed = newer = False
        for instance in self.homes.get(check_key, ()):
            entry = self.entries.get(instance)
            if entry is None:
                continue
            new_checks = []
            edited = False
            for check in entry.get("Checks") or ():
                node = str(check.get("Node", instance[0]))
                if (node, str(check.get("CheckID", ""))) == check_key and int(
                    check.get("ModifyIndex") or 0
                ) < as_of:
                    newer = True
                    edited |= check.get("Status") != status
                    check = {**check, "Status": status, "ModifyIndex": as_of}
                new_checks.append(check)
            if edited:
                changed = True
                self.entries[instance] = {**entry, "Checks": new_checks}
        if newer:
            self.applied[check_key] = (status, as_of)
        return changed

    def publish(self) -> None:
        """Hand the current answer to every subscriber (each maps it for its target)."""
        with self.lock:
            if self.entries is None:
                return
            self.failing = self.failed_by_feed = False
            entries = list(self.entries.values())
            for subscriber in list(self.subscribers.values()):
                snapshot = subscriber.source.snapshot(entries, subscriber.memo)
                subscriber.emitter.answer(snapshot)

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
    """The change feeds of one datacenter and what they last said."""

    scope: Scope
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    non_passing: dict[str, NonPassing] = field(default_factory=dict)  # per health feed
    names: set[str] | None = None  # the catalog feed's last answer
    health_index: dict[str, int] = field(default_factory=dict)  # per health feed
    catalog_index: int = 0
    failing: set[str] = field(default_factory=set)  # feed kinds

    @property
    def answered(self) -> bool:
        """Have both health feeds answered (so a service placed now is read by them)?"""
        return all(kind in self.non_passing for kind in HEALTH_FEEDS)

    sweeping: bool = False
    sweep_again: bool = False
    held: list[HeldClient] = field(default_factory=list)  # the feeds' connections

    def close(self) -> None:
        self.stop.set()
        for held in list(self.held):
            held.interrupt()


_SWEEP_END = "\0sweep-end"  # queue key prefix: a sweep of one scope is due to end
_REBALANCE = "\0rebalance"  # queue key: watch slots were freed; place the queries again


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
        self._confirm: dict[QueryKey, set[CheckKey]] = {}
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

        Two connections per datacenter stay reserved for its feeds even while every
        service has a watch, so a service that grows big can move to the feeds at once.
        """
        with self._lock:
            if self._stopped.is_set():
                return
            queries = list(self._queries.values())
            scopes = {q.scope for q in queries}
            slots = max(0, self._budget - self.clients.size - FEEDS * len(scopes))
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
                self._queue.add(_REBALANCE, "rebalance")  # many ending at once: one commit

    # -- the change feeds

    def _start_feeds(self, scope: Scope) -> None:
        feeds = self._feeds[scope] = _Feeds(scope)
        for kind in (*HEALTH_FEEDS, "catalog"):
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
        path = f"/v1/health/state/{kind}" if kind in HEALTH_FEEDS else "/v1/catalog/services"
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
        if kind in HEALTH_FEEDS:
            last, before = feeds.health_index.get(kind, 0), feeds.non_passing.get(kind)
            first = before is None
            after = non_passing(body if isinstance(body, list) else ())
            feeds.non_passing[kind], feeds.health_index[kind] = after, index
            if before is not None and index >= last:
                self._route(feeds.scope, check_changes(before, after, index))
        else:
            last, first = feeds.catalog_index, feeds.names is None
            names = set(body) if isinstance(body, dict) else set()
            old_names, feeds.names, feeds.catalog_index = feeds.names, names, index
            if not first and index > last and old_names is not None:
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
        """Apply the health feed's changes to the services they concern (lock held)."""
        by_query: dict[QueryKey, list[CheckChange]] = {}
        for change in changes:
            if change.service:
                keys: Iterable[QueryKey] = self._by_service.get((scope, change.service), ())
            else:  # a node check: every service with an instance on that node
                keys = [q.key for q in self._feed_queries(scope) if change.check in q.homes]
            for key in keys:
                by_query.setdefault(key, []).append(change)
        for key, mine in by_query.items():
            query = self._queries.get(key)
            if query is None or query.mode is not Mode.FEED:
                continue
            if not query.patchable:
                self._queue.add(key, "health")
                continue
            left = {change.check for change in mine if change.left}
            if left:
                self._confirm.setdefault(key, set()).update(left)
                self._queue.add((_CONFIRM, key), "health")
            changed, unknown = query.apply_changes(
                (change.check, change.status, change.index) for change in mine if not change.left
            )
            if unknown:
                self._queue.add(key, "health")
            elif changed:
                query.publish()

    def _sweep(self, feeds: _Feeds) -> None:
        """Read every feed-followed service of the scope once, paced (lock held)."""
        if feeds.sweeping:
            feeds.sweep_again = True  # one more after this one covers what comes meanwhile
            return
        keys = [q.key for q in self._feed_queries(feeds.scope)]
        feeds.sweeping = True
        spacing = 1.0 / self._sweep_rate
        for position, key in enumerate(keys):
            self._queue.add_after(key, position * spacing, "sweep")
        self._queue.add_after((_SWEEP_END, feeds.scope), len(keys) * spacing + 0.001, "sweep")

    def _sweep_ended(self, scope: Scope) -> None:
        with self._lock:
            feeds = self._feeds.get(scope)
            if feeds is None:
                return
            feeds.sweeping = False
            if feeds.sweep_again:
                feeds.sweep_again = False
                self._sweep(feeds)

    # -- the shared readers

    def _read_loop(self) -> None:
        while not self._stopped.is_set():
            item = self._queue.get(timeout=1.0)
            if item is None:
                continue
            key, reason = item
            try:
                if key == _REBALANCE:
                    self.commit()
                elif isinstance(key, tuple) and key and key[0] == _CONFIRM:
                    self._confirm_read(key[1])
                elif isinstance(key, tuple) and key and key[0] == _SWEEP_END:
                    self._sweep_ended(key[1])
                else:
                    self._read(key, reason)  # type: ignore[arg-type]
            except Exception:  # a bug must not end a reader
                log.exception("reading %s from Consul failed unexpectedly", key)
            finally:
                self._queue.done(key)

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
            return
        query.replace(reply.index, reply.body, started, reset or reply.index < query.index)
        query.publish()

    def _confirm_read(self, key: QueryKey) -> None:
        """Did these checks pass, or go away? One small filtered read of the service's checks."""
        with self._lock:
            checks = self._confirm.pop(key, set())
            query = self._queries.get(key)
        if not checks or query is None or query.mode is not Mode.FEED:
            return
        if len(checks) > CONFIRM_BATCH:
            self._queue.add(key, "health")
            return
        CONSUL_READS.labels("confirm").inc()
        config = query.source.config
        path = f"/v1/health/checks/{urllib.parse.quote(config.service, safe='')}"
        params = [*scope_params(config), ("filter", confirm_filter(sorted(checks)))]
        try:
            with self.clients.borrow() as client:
                reply = get(
                    client,
                    path,
                    params,
                    kind="consul",
                    name=query.source.describe(),
                    denied="ACL token lacks read access",
                )
        except SourceError:
            self._queue.add(key, "health")  # the full read retries with backoff
            return
        found = {
            (str(c.get("Node", "")), str(c.get("CheckID", ""))): (
                str(c.get("Status", "")),
                int(c.get("ModifyIndex") or 0),
            )
            for c in reply.body or ()
            if isinstance(c, dict)
        }
        if reply.filtered_by_acls or any(check not in found for check in checks):
            self._queue.add(key, "health")  # deregistered (or hidden): read it whole
            return
        changed, unknown = query.apply_changes((check, *found[check]) for check in checks)
        if unknown:
            self._queue.add(key, "health")
        elif changed:
            query.publish()


_CONFIRM = "\0confirm"  # queue key prefix: confirm checks that left the non-passing list


def backoff(failures: int, cap: float) -> float:
    """Capped exponential backoff with full jitter: failing clients spread out."""
    return random.uniform(0.5, 1.0) * min(cap, 0.5 * 2 ** min(failures - 1, 20))


def _scope_name(scope: Scope) -> str:
    datacenter = scope[0]
    return "consul change feeds" + (f"@{datacenter}" if datacenter else "")


__all__ = ["ConsulWatch", "Mode", "Subscription", "check_changes", "confirm_filter", "non_passing"]
