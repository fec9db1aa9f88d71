"""The change feeds of each datacenter, and what their changes mean for the services they
follow (which Consul write reaches syncd through which feed: see consul_watch's docstring).

Four blocking queries per datacenter. The difference between two answers of a health feed
names the checks that changed; a change that can only make instances less ready is patched
into the entries syncd holds, anything else is a partial read of the instances concerned.
A node record that changed is a partial read of its instances. A registration anywhere
(the catalog feed) starts or extends the paced sweep of every feed-followed service.
Everything here runs under the queries' lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import SourceError
from syncd.sources.consul_api import ConsulClients, HeldClient, get
from syncd.sources.consul_blocking import BlockingQuery, Interruptible, Update, follow
from syncd.sources.consul_query import (
    Mode,
    Queries,
    Query,
    QueryKey,
    ReadInstances,
    Scope,
    SweepStep,
    scope_name,
)
from syncd.sources.consul_state import (
    CheckChange,
    NodeRecords,
    NonPassing,
    Selector,
    changed_nodes,
    check_changes,
    node_records,
    non_passing,
)
from syncd.workqueue import WorkQueue

log = logging.getLogger(__name__)

HEALTH_FEEDS = ("critical", "warning")  # the checks that are not passing, by status
FEED_PATHS = {
    "critical": "/v1/health/state/critical",
    "warning": "/v1/health/state/warning",
    "nodes": "/v1/catalog/nodes",  # node addresses and meta; a node leaving
    "catalog": "/v1/catalog/services",  # services appearing and vanishing; any registration
}
FEEDS = tuple(FEED_PATHS)  # one connection each, per datacenter
FEED_RETRY_CAP = 10.0  # seconds between a failing feed's attempts, at most


@dataclass
class Feeds:
    """The change feeds of one datacenter, what they last said, and its sweep."""

    scope: Scope
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    held: list[Interruptible] = field(default_factory=list)  # the feeds' connections
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


class ChangeFeeds:
    """The feeds of every datacenter with a feed-followed service."""

    def __init__(
        self, queries: Queries, queue: WorkQueue, clients: ConsulClients, sweep_rate: float
    ):
        self._queries = queries
        self._queue = queue
        self._clients = clients
        self._sweep_rate = sweep_rate
        self._feeds: dict[Scope, Feeds] = {}
        self._instances: dict[QueryKey, set[Selector]] = {}  # to read, per query

    # -- starting and stopping (queries' lock held)

    def scopes(self) -> set[Scope]:
        return set(self._feeds)

    def get(self, scope: Scope) -> Feeds | None:
        return self._feeds.get(scope)

    def start(self, scope: Scope) -> None:
        feeds = self._feeds[scope] = Feeds(scope)
        for kind in FEEDS:
            thread = threading.Thread(
                target=self._loop, args=(feeds, kind), name=f"consul-{kind}-feed", daemon=True
            )
            feeds.threads.append(thread)
            thread.start()

    def close(self, scope: Scope) -> None:
        self._feeds.pop(scope).close()

    def close_all(self) -> None:
        for feeds in self._feeds.values():
            feeds.close()
        self._feeds.clear()

    def connections(self) -> int:
        return sum(1 for f in self._feeds.values() for t in f.threads if t.is_alive())

    def cut_short(self) -> list[Interruptible]:
        """A new token: every feed asks again with it (their connections, to interrupt)."""
        held: list[Interruptible] = []
        for feeds in self._feeds.values():
            feeds.restart.update(FEEDS)
            held += feeds.held
        return held

    def connections_held(self, failing_only: bool = False) -> list[Interruptible]:
        """The feeds' connections (to cut: they ask again, from index 0, as after a
        failure); with `failing_only`, those of datacenters where a feed fails."""
        return [
            held
            for feeds in self._feeds.values()
            if feeds.failing or not failing_only
            for held in feeds.held
        ]

    def take_instances(self, key: QueryKey) -> frozenset[Selector]:
        with self._queries.lock:
            return frozenset(self._instances.pop(key, ()))

    # -- one feed

    def _loop(self, feeds: Feeds, kind: str) -> None:
        datacenter = feeds.scope[0]
        name = f"consul {kind} feed" + (f"@{datacenter}" if datacenter else "")
        params = [
            (key, value)
            for key, value in zip(("dc", "ns", "partition"), feeds.scope, strict=True)
            if value
        ]
        wait = f"{int(self._clients.connection.wait)}s"

        def ask(held: HeldClient, index: int) -> Any:
            blocking = [("index", index), ("wait", wait)] if index else []
            return get(
                held.client,
                FEED_PATHS[kind],
                params + blocking,
                kind="consul_feed",
                name=name,
                denied="ACL token may not read it",
            )

        def on_answer(answer: Update) -> bool:
            reply = answer.reply
            if reply.index != answer.previous_index or kind in feeds.failing:
                with self._queries.lock:
                    self._on_feed(feeds, kind, reply.index, reply.body, answer.started)
            return True

        def cut_short() -> bool:
            if kind not in feeds.restart:
                return False
            feeds.restart.discard(kind)
            return True

        def on_connection(held: Interruptible | None) -> None:
            if held is not None:
                feeds.held.append(held)

        follow(
            BlockingQuery(
                name,
                ask,
                on_answer,
                lambda error: self._failed(feeds, kind, error),
                cut_short,
                on_connection,
                FEED_RETRY_CAP,
            ),
            self._clients,
            feeds.stop,
        )

    def _on_feed(self, feeds: Feeds, kind: str, index: int, body: Any, started: float) -> None:
        """A feed's new answer (the queries' lock held)."""
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
                    for key in self._queries.of_service(feeds.scope, service):
                        self._queue.add(key, "catalog")
                self._sweep(feeds)
        if first or index < last:  # (re)started, or Consul's index went backwards
            self._catch_up(feeds.scope, started, backwards=index < last)
        if recovered and not feeds.failing:
            log.warning("%s: the change feeds answer again", scope_name(feeds.scope))
            for query in self._queries.followed_by_feeds(feeds.scope):
                if query.failing and query.failed_by_feed:
                    query.publish()

    def _catch_up(self, scope: Scope, started: float, backwards: bool) -> None:
        """Read every service the feeds follow whose last read is older than their news."""
        for query in self._queries.followed_by_feeds(scope):
            if backwards:
                query.reset_next = True
            if backwards or query.read_started < started:
                self._queue.add(query.key, "catch-up")

    def _failed(self, feeds: Feeds, kind: str, error: SourceError) -> None:
        with self._queries.lock:
            first = not feeds.failing
            feeds.failing.add(kind)
            if not first:
                return
            queries = self._queries.followed_by_feeds(feeds.scope)
        log.warning(
            "%s; the %d services it follows are stale until it answers again (retrying "
            "with backoff)",
            error,
            len(queries),
        )
        for query in queries:
            query.fail(error, quiet=True, by_feed=True)

    # -- what a change means

    def _route(self, scope: Scope, changes: list[CheckChange]) -> None:
        """Take the health feeds' changes to the services they concern: a service check to
        its service's queries, a node check to every query with an instance on that node
        (a check syncd has never seen included)."""
        by_query: dict[QueryKey, list[CheckChange]] = {}
        feed_queries: list[Query] | None = None
        for change in changes:
            if change.service:
                keys: Iterable[QueryKey] = self._queries.of_service(scope, change.service)
            else:
                if feed_queries is None:
                    feed_queries = self._queries.followed_by_feeds(scope)
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
        """Nodes whose address or meta changed, or that left: read their instances."""
        if not nodes:
            return
        for query in self._queries.followed_by_feeds(scope):
            mine = nodes & query.on_node.keys()
            if not mine:
                continue
            if query.patchable:
                self._read_instances(query.key, {(node, None) for node in mine})
            else:
                self._queue.add(query.key, "node")

    def _read_instances(self, key: QueryKey, selectors: Iterable[Selector]) -> None:
        self._instances.setdefault(key, set()).update(selectors)
        self._queue.add(ReadInstances(key), "instances")

    # -- the sweep

    def _sweep(self, feeds: Feeds) -> None:
        """Read every feed-followed service of the scope whose last read started before
        now, paced at sweep_rate. A sweep under way just extends: each service is read
        once after the latest change, so a change waits at most one round."""
        feeds.changed_at = time.monotonic()
        if not feeds.sweeping:
            feeds.sweeping = True
            feeds.ring = [q.key for q in self._queries.followed_by_feeds(feeds.scope)]
            feeds.cursor = 0
            self._queue.add(SweepStep(feeds.scope), "sweep")

    def sweep_step(self, scope: Scope) -> None:
        """Queue the next service the sweep must read; come back after one spacing."""
        with self._queries.lock:
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
                        self._queue.add_after(SweepStep(scope), 1.0 / self._sweep_rate, "sweep")
                        return
                # a round ended: go round again only for services not read since the change
                feeds.ring = [q.key for q in self._queries.followed_by_feeds(scope)]
                feeds.cursor = 0
            feeds.sweeping = False
