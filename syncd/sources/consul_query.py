"""One question to Consul and the targets asking it; the set of them, by service.

Several targets asking Consul the same question (same service, tags, datacenter, filter
...) share one `Query`: it is asked once, and its answer is handed to each of them, mapped
for its own target. Where a query is followed is its `Mode`: its own watch, or the change
feeds and the shared readers (see `syncd.sources.consul_watch`).
"""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import SourceError
from syncd.model import ready_count
from syncd.sources.base import ChangeEmitter
from syncd.sources.consul import ConsulSource, EntryMemo, Instance, name_meta_key, slim_entry
from syncd.sources.consul_blocking import Interruptible, Stop
from syncd.sources.consul_config import ConsulAddress, ConsulSourceConfig
from syncd.sources.consul_state import QueryState
from syncd.tuple_index import index_add, index_remove

QueryKey = tuple  # what makes two sources ask Consul the same question
Scope = tuple[str | None, str | None, str | None]  # datacenter, namespace, partition


def query_key(config: ConsulSourceConfig) -> QueryKey:
    """Sources with equal keys share one query. What an instance keeps of its entry depends
    on the address and meta keys the source reads (see `slim_entry`), so they are part of it:
    two targets reading different addresses of one service ask twice."""
    return (
        config.service,
        config.address,
        config.zone_meta,
        name_meta_key(config.hostname_from),
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


def scope_name(scope: Scope) -> str:
    datacenter = scope[0]
    return "consul change feeds" + (f"@{datacenter}" if datacenter else "")


class Mode(enum.Enum):
    NEW = "new"  # not placed yet
    WATCH = "watch"  # its own blocking query
    FEED = "feed"  # the change feeds and the shared readers


@dataclass(slots=True)
class Subscriber:
    source: ConsulSource
    emitter: ChangeEmitter
    memo: EntryMemo = field(default_factory=dict)


@dataclass(frozen=True)
class Subscription:
    key: QueryKey
    id: int


class Query(QueryState):
    """One question to Consul, its answer (QueryState) and the targets asking it."""

    __slots__ = (
        "failed_by_feed",
        "failing",
        "held",
        "key",
        "mode",
        "reset_next",
        "restart",
        "scope",
        "service",
        "source",
        "stop",
        "subscribers",
    )

    def __init__(self, key: QueryKey, source: ConsulSource):
        super().__init__()
        config = source.config
        self.slim = _slimmer(config.address, config.zone_meta, name_meta_key(config.hostname_from))
        self.key = key
        self.source = source  # the first subscriber's; all ask the same
        self.scope = scope_of(source.config)
        self.service = source.config.service
        self.subscribers: dict[int, Subscriber] = {}
        self.mode = Mode.NEW
        self.failing = False
        self.failed_by_feed = False  # stale because its datacenter's feeds fail
        self.reset_next = False  # Consul's index went backwards: forget the feed edits
        self.stop: Stop | None = None  # ends its watch (made when it has one)
        self.held: Interruptible | None = None  # its watch's connection (or stream)
        self.restart = False  # its query in flight was cut short on purpose: ask again

    def stop_watch(self) -> None:
        """End its watch now: the blocking query in flight is cut short."""
        if self.stop is not None:
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

    def answer_late(self, subscriber: Subscriber) -> None:
        """A target subscribing after the first answer gets it at once."""
        with self.lock:
            if self.entries is None or self.failing:
                return
            entries = list(self.entries.values())
        subscriber.emitter.answer(subscriber.source.snapshot(entries, subscriber.memo))

    def fail(self, error: SourceError, quiet: bool = False, by_feed: bool = False) -> None:
        with self.lock:
            self.failing = True
            self.failed_by_feed = by_feed
            for subscriber in list(self.subscribers.values()):
                subscriber.emitter.failure(error, quiet=quiet)


@functools.cache
def _slimmer(
    address: ConsulAddress, zone_meta: str, name_meta: str | None
) -> Callable[[Mapping[str, Any]], Instance]:
    """One slimming function per (address, meta keys), shared by the queries using it."""
    return functools.partial(slim_entry, address=address, zone_meta=zone_meta, name_meta=name_meta)


class Queries:
    """Every query of the hub, by key and by (scope, service); one lock for all."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._by_key: dict[QueryKey, Query] = {}
        # (scope, service) -> its queries' keys (most services are asked one question)
        self._by_service: dict[tuple[Scope, str], tuple[QueryKey, ...]] = {}
        self._ids = 0

    def next_id(self) -> int:
        with self.lock:
            self._ids += 1
            return self._ids

    def get(self, key: QueryKey) -> Query | None:
        return self._by_key.get(key)

    def all(self) -> list[Query]:
        with self.lock:
            return list(self._by_key.values())

    def add(self, source: ConsulSource, subscriber: Subscriber) -> tuple[Query, Subscription]:
        key = query_key(source.config)
        with self.lock:
            query = self._by_key.get(key)
            if query is None:
                query = self._by_key[key] = Query(key, source)
                index_add(self._by_service, (query.scope, query.service), key)
            subscription = Subscription(key, self.next_id())
            query.subscribers[subscription.id] = subscriber
        return query, subscription

    def remove(self, subscription: Subscription) -> Query | None:
        """Drop a subscriber; the query when it was the last one (the caller stops it)."""
        with self.lock:
            query = self._by_key.get(subscription.key)
            if query is None:
                return None
            query.subscribers.pop(subscription.id, None)
            if query.subscribers:
                return None
            del self._by_key[query.key]
            index_remove(self._by_service, (query.scope, query.service), query.key)
            return query

    def of_service(self, scope: Scope, service: str) -> Iterable[QueryKey]:
        return self._by_service.get((scope, service), ())

    def followed_by_feeds(self, scope: Scope) -> list[Query]:
        with self.lock:
            return [q for q in self._by_key.values() if q.scope == scope and q.mode is Mode.FEED]


# The shared readers' queue keys: a query's key (a tuple) is a full read of it; these are
# the other jobs.


@dataclass(frozen=True)
class ReadInstances:
    """A partial read of the instances the feeds named for one query."""

    key: QueryKey


@dataclass(frozen=True)
class SweepStep:
    """The next step of one datacenter's sweep."""

    scope: Scope


@dataclass(frozen=True)
class Rebalance:
    """Watch slots were freed: place the queries again (many at once: one commit)."""


@dataclass(frozen=True)
class AgentCheck:
    """Does the agent answer at all? (every AGENT_CHECK seconds: a stalled network says
    nothing, and a blocking query on it would wait out its whole deadline)"""


@dataclass(frozen=True)
class TokenCheck:
    """Has the token file changed? (every TOKEN_CHECK seconds)"""
