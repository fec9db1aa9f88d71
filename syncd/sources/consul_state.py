"""What the Consul hub knows of one query's answer, and the pure reading of its feeds.

`QueryState` holds the entries of one `/v1/health/service/<name>` question (shared by every
target asking it) and takes three kinds of news:

- a **full read** (`replace`): one consistent answer from Consul;
- a **partial read** (`refresh`): the same question filtered to a few instances (one
  instance, or every instance on one node), read because a feed said they changed;
- a **patch** (`patch`) from the health feeds: a check status applied without any read.

A patch may only make instances *less* ready (a check turning critical, passing turning
warning, a new non-passing check on an instance or node syncd holds). Anything that could
make an instance ready (a check leaving the non-passing lists, critical turning warning) or
that concerns an instance syncd does not hold is answered by a partial read instead: the
instance may have moved since syncd last read it, and a patch would then make its *old*
address ready, an endpoint Consul no longer lists.

Edits learned from a feed are remembered with the raft index they carry, so a read that
started before them cannot undo them, and a read at least as new replaces them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from syncd.sources.consul import Check, Instance, slim_entry
from syncd.tuple_index import index_add, index_remove

InstanceKey = tuple[str, str]  # (node, service id)
CheckKey = tuple[str, str]  # (node, check id)
Selector = tuple[str, str | None]  # (node, service id), or (node, None): all on the node


# --------------------------------------------------------------------------- the health feeds


@dataclass(frozen=True)
class CheckChange:
    """A check the health feeds saw change: its new status as of `index`."""

    check: CheckKey
    service: str  # the service's name; "" for a node check
    status: str  # "passing" when it left the non-passing lists (to be confirmed by a read)
    index: int  # the check's ModifyIndex, or the feed's index when it left the list
    left: bool = False  # left the non-passing list: passed, or was deregistered
    service_id: str = ""  # the instance it belongs to; "" for a node check

    @property
    def node(self) -> str:
        return self.check[0]

    @property
    def selector(self) -> Selector:
        """The instances a read must cover to learn what this change did."""
        return (self.node, self.service_id or None)


NonPassing = dict[CheckKey, tuple[str, str, str, int]]
"""check -> (service name, service id, status, ModifyIndex): one health feed's answer."""


def non_passing(rows: Iterable[Any]) -> NonPassing:
    """The health feed's answer, keyed by check."""
    return {
        (str(row.get("Node", "")), str(row.get("CheckID", ""))): (
            str(row.get("ServiceName") or ""),
            str(row.get("ServiceID") or ""),
            str(row.get("Status", "")),
            int(row.get("ModifyIndex") or 0),
        )
        for row in rows
        if isinstance(row, dict)
    }


def check_changes(before: NonPassing, after: NonPassing, index: int) -> list[CheckChange]:
    """What changed between two answers of a health feed (pure)."""
    changes = [
        CheckChange(check, service, status, modify_index, service_id=service_id)
        for check, (service, service_id, status, modify_index) in after.items()
        if before.get(check) != (service, service_id, status, modify_index)
    ]
    changes += [
        CheckChange(check, service, "passing", index, left=True, service_id=service_id)
        for check, (service, service_id, _status, _index) in before.items()
        if check not in after
    ]
    return changes


# --------------------------------------------------------------------------- the node feed

NodeRecords = dict[str, tuple[str, tuple, tuple]]
"""node -> (address, tagged addresses, meta): what a service entry takes from its node."""


def node_records(rows: Iterable[Any]) -> NodeRecords:
    """/v1/catalog/nodes, reduced to what changes how an instance maps."""

    def items(value: Any) -> tuple:
        return tuple(sorted((str(k), str(v)) for k, v in value.items())) if value else ()

    return {
        str(row.get("Node", "")): (
            str(row.get("Address", "")),
            items(row.get("TaggedAddresses")),
            items(row.get("Meta")),
        )
        for row in rows
        if isinstance(row, dict)
    }


def changed_nodes(before: NodeRecords, after: NodeRecords) -> set[str]:
    """Nodes whose record changed or that were deregistered. A new node needs nothing:
    its instances register after it, which the catalog feed sees."""
    return {node for node, record in before.items() if after.get(node) != record}


# --------------------------------------------------------------------------- partial reads


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def selector_filter(selectors: Iterable[Selector]) -> str:
    """A /v1/health/service filter expression selecting exactly these instances."""
    parts = []
    for node, service_id in sorted(selectors, key=lambda s: (s[0], s[1] or "")):
        if service_id is None:
            parts.append(f"(Node.Node == {_quoted(node)})")
        else:
            parts.append(f"(Node.Node == {_quoted(node)} and Service.ID == {_quoted(service_id)})")
    return " or ".join(parts)


def selected(instance: InstanceKey, selectors: Iterable[Selector]) -> bool:
    return any(
        instance[0] == node and (service_id is None or instance[1] == service_id)
        for node, service_id in selectors
    )


# --------------------------------------------------------------------------- one query's state


@dataclass(frozen=True)
class PatchResult:
    changed: bool  # some entry changed: publish
    reads: frozenset[Selector]  # what must be read to learn the rest


_WORSE = {"passing": 0, "warning": 1, "critical": 2}


class QueryState:
    """The instances of one query as syncd knows them. Instances are tuples, replaced when
    they change, so a subscriber's memo maps an unchanged one once (identity is its key)."""

    __slots__ = ("applied", "entries", "index", "lock", "on_node", "read_started", "slim")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.index = 0  # of the last full read applied
        self.entries: dict[InstanceKey, Instance] | None = None  # None: never read
        # node -> its instances (most nodes hold one or two of a query's instances)
        self.on_node: dict[str, tuple[InstanceKey, ...]] = {}
        # feed edits not yet covered by a read: check -> (status, as of, service id or "")
        self.applied: dict[CheckKey, tuple[str, int, str]] = {}
        self.read_started = 0.0  # monotonic start of the last full read applied
        self.slim: Callable[[Mapping[str, Any]], Instance] = slim_entry  # what is kept

    @property
    def size(self) -> int:
        return len(self.entries or ())

    def nodes(self) -> set[str]:
        return set(self.on_node)

    # -- reads

    def replace(self, index: int, body: list[Any], started: float, reset: bool) -> None:
        """A full read: it becomes the entries, except feed edits newer than it."""
        with self.lock:
            self.entries = {}
            on_node: dict[str, list[InstanceKey]] = {}
            for entry in map(self._kept, body):
                instance = entry.key
                if instance not in self.entries:
                    on_node.setdefault(instance[0], []).append(instance)
                self.entries[instance] = entry
            self.on_node = {node: tuple(instances) for node, instances in on_node.items()}
            self.index, self.read_started = index, started
            kept = {} if reset else self.applied
            self.applied = {}
            for check, (status, as_of, service_id) in kept.items():
                self._edit(check, status, as_of, service_id, read_index=index)

    def refresh(self, selectors: frozenset[Selector], index: int, body: list[Any]) -> None:
        """A partial read of the instances `selectors` name: they become exactly what it
        returned (an instance not returned was deregistered), except newer feed edits."""
        with self.lock:
            if self.entries is None:
                return
            for instance in [i for i in self.entries if selected(i, selectors)]:
                self._drop(instance)
            for entry in map(self._kept, body):
                if selected(entry.key, selectors):
                    self._put(entry)
            for check, (status, as_of, service_id) in list(self.applied.items()):
                if selected((check[0], service_id), selectors) or (
                    not service_id and any(node == check[0] for node, _ in selectors)
                ):
                    self._edit(check, status, as_of, service_id, read_index=index)

    def _kept(self, entry: Instance | Mapping[str, Any]) -> Instance:
        """An entry of an answer: kept already (a reader decodes answers with `slim`), or as
        Consul sent it."""
        return entry if isinstance(entry, Instance) else self.slim(entry)

    def _put(self, entry: Instance) -> None:
        assert self.entries is not None
        instance = entry.key
        if instance in self.entries:
            self._drop(instance)
        self.entries[instance] = entry
        index_add(self.on_node, instance[0], instance)

    def _drop(self, instance: InstanceKey) -> None:
        assert self.entries is not None
        if self.entries.pop(instance, None) is None:
            return
        index_remove(self.on_node, instance[0], instance)

    def _carriers(self, node: str, service_id: str) -> list[InstanceKey]:
        """The instances a check is on: its instance's, or every instance on its node (a
        node check, `service_id` "")."""
        assert self.entries is not None
        if service_id:
            return [(node, service_id)] if (node, service_id) in self.entries else []
        return sorted(self.on_node.get(node, ()))

    # -- feed patches

    def patch(self, changes: Iterable[CheckChange]) -> PatchResult:
        """Apply what the health feeds said where it can only make instances less ready;
        return what must be read instead for the rest."""
        changed = False
        reads: set[Selector] = set()
        with self.lock:
            if self.entries is None:
                return PatchResult(False, frozenset())
            for change in changes:
                if change.left or not self._worsens(change):
                    if change.service_id or change.node in self.on_node:
                        reads.add(change.selector)
                    continue
                if change.service_id and (change.node, change.service_id) not in self.entries:
                    reads.add(change.selector)  # an instance syncd does not hold (yet)
                    continue
                changed |= self._edit(
                    change.check, change.status, change.index, change.service_id, read_index=0
                )
        return PatchResult(changed, frozenset(reads))

    def _worsens(self, change: CheckChange) -> bool:
        """Can this status only make instances less ready than what syncd holds?"""
        new = _WORSE.get(change.status)
        if new is None or new == 0:
            return False
        if new == 2:
            return True
        assert self.entries is not None
        for instance in self._carriers(change.node, change.service_id):  # only from passing
            for check in self.entries[instance].checks:
                if check.key == change.check and check.status != "passing":
                    return False
        return True

    def _edit(
        self, key: CheckKey, status: str, as_of: int, service_id: str, read_index: int
    ) -> bool:
        """Set the check's status on the instances carrying it where what syncd holds is
        older than `as_of`; add it where they do not carry it yet and `as_of` is newer
        than the read they come from. Remember the edit until a full read covers it."""
        assert self.entries is not None
        node = key[0]
        changed = newer = False
        for instance in self._carriers(node, service_id):
            entry = self.entries[instance]
            checks = list(entry.checks)
            position = next((n for n, c in enumerate(checks) if c.key == key), None)
            if position is None:
                if as_of <= max(read_index, self.index if read_index else 0):
                    continue  # the read is newer: the check is gone, or never was
                checks.append(Check(node, key[1], service_id, status, as_of))
            elif checks[position].modify_index < as_of:
                if checks[position].status == status:
                    newer = True
                    checks[position] = checks[position]._replace(modify_index=as_of)
                    self.entries[instance] = entry._replace(checks=tuple(checks))
                    continue
                checks[position] = checks[position]._replace(status=status, modify_index=as_of)
            else:
                continue
            newer = changed = True
            self.entries[instance] = entry._replace(checks=tuple(checks))
        if newer:
            self.applied[key] = (status, as_of, service_id)
        return changed


__all__ = [
    "CheckChange",
    "CheckKey",
    "InstanceKey",
    "NodeRecords",
    "PatchResult",
    "QueryState",
    "Selector",
    "changed_nodes",
    "check_changes",
    "node_records",
    "non_passing",
    "selected",
    "selector_filter",
]
