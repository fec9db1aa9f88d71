"""Consul: the instances of one service (/v1/health/service/<name>), and prepared queries.

This module reads and maps; following changes over time is `consul_watch`'s job (blocking
queries within a connection budget). `ConsulSource.fetch` is one non-blocking read, for
--once and render.

Answers filtered by ACLs (Consul returns 200 and hides what the token may not read) are
errors, not empty answers: a token missing a permission must never drain a Service.

Registry data is untrusted: entries whose address is invalid or rejected by the API server,
whose port is out of range, or that duplicate another entry are dropped with a warning and
counted; the rest is still used. Errors (unreachable, 429, 5xx, ACL denied, timeouts) raise
SourceError: the caller keeps the last applied state.

The ACL token is sent as a header and never logged or printed.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import consul

from syncd.errors import SourceError
from syncd.kinds import is_label_value
from syncd.model import (
    Backend,
    ConsulAddress,
    ConsulConsistency,
    ConsulQuerySourceConfig,
    ConsulSourceConfig,
    EndpointPort,
    Snapshot,
    Target,
    port_set,
)
from syncd.observability import DROPPED_ENTRIES
from syncd.sources.base import Dropped, checked_entry
from syncd.sources.consul_api import ConsulClients, Reply, get

# --------------------------------------------------------------------------- pure mapping


def instance_ready(checks: Iterable[Mapping[str, Any]], warning_is_ready: bool) -> bool:
    """All checks passing -> ready; any critical (incl. maintenance mode) -> not ready."""
    for check in checks:
        status = check.get("Status")
        if status == "passing":
            continue
        if status == "warning" and warning_is_ready:
            continue
        return False
    return True


def _instance_address(entry: Mapping[str, Any], choice: ConsulAddress) -> tuple[str, Any]:
    service = entry.get("Service") or {}
    node = entry.get("Node") or {}
    port = service.get("Port")
    if choice is ConsulAddress.SERVICE:
        return (service.get("Address") or node.get("Address") or ""), port
    tagged = (service.get("TaggedAddresses") or {}).get(choice.value)
    if isinstance(tagged, Mapping) and tagged.get("Address"):
        return tagged["Address"], tagged.get("Port") or port
    node_tagged = (node.get("TaggedAddresses") or {}).get(choice.value)
    return (node_tagged or ""), port


@dataclass(frozen=True, slots=True)
class MappedEntry:
    """One registry entry as syncd reads it: an (address, port) and its health, or dropped."""

    identity: tuple[str, int] | None  # None: dropped (see `dropped`)
    ready: bool = False
    zone: str | None = None
    warnings: tuple[str, ...] = ()
    dropped: str | None = None  # the metric's reason


def map_entry(entry: Mapping[str, Any], source: ConsulSourceConfig) -> MappedEntry:
    """One /v1/health/service entry -> MappedEntry (pure)."""
    service = entry.get("Service") or {}
    name = f"{(entry.get('Node') or {}).get('Node', '?')}/{service.get('ID', '?')}"
    address, port = _instance_address(entry, source.address)
    if not address:
        return MappedEntry(
            None,
            warnings=(f"{name}: no {source.address.value} address; dropped",),
            dropped="no_address",
        )
    if port is None or port == 0:  # Consul leaves out a port of 0
        checked = checked_entry(f"{name}: ", address, ())
        if isinstance(checked, str):
            checked = Dropped(
                f"{name}: {checked} is registered without a port (port 0); dropped", "port"
            )
    else:
        checked = checked_entry(f"{name}: ", address, (port,))
    if isinstance(checked, Dropped):
        return MappedEntry(None, warnings=(checked.warning,), dropped=checked.reason)
    address = checked
    warnings: list[str] = []
    zone = _instance_zone(entry, source.zone_meta, name, warnings)
    ready = instance_ready(entry.get("Checks") or (), source.warning_is_ready)
    return MappedEntry((address, port), ready, zone, tuple(warnings))


def slim_entry(
    entry: Mapping[str, Any],
    address: ConsulAddress = ConsulAddress.SERVICE,
    zone_meta: str = "zone",
) -> dict[str, Any]:
    """What syncd reads of a /v1/health/service entry, and nothing else: a daemon holds
    every instance it follows, and check outputs, proxy settings, raft indexes, the tagged
    addresses and meta it does not use would be most of it. Of the tagged addresses only
    the `address` chosen is kept, of the meta only the `zone_meta` key; the strings many
    entries repeat (node and service names, check statuses) are shared."""
    node = entry.get("Node") or {}
    service = entry.get("Service") or {}
    return {
        "Node": _one_copy(_slim_record(node, _NODE_KEYS, address, zone_meta)),
        "Service": _slim_record(service, _SERVICE_KEYS, address, zone_meta),
        "Checks": [_slim_check(check) for check in entry.get("Checks") or ()],
    }


def _slim_check(check: Mapping[str, Any]) -> dict[str, Any]:
    kept = {key: _shared(key, check[key]) for key in _CHECK_KEYS if key in check}
    return kept if kept.get("ServiceID") else _one_copy(kept)  # a node's: on every instance


# Node records and node checks, held once however many instances sit on the node (every
# instance's entry repeats them). Entries are never edited in place (consul_state copies
# on write), so sharing is safe. Bounded: a churning catalog starts the table over.
_RECORDS: dict[tuple[Any, ...], dict[str, Any]] = {}
_MAX_RECORDS = 65_536


def _one_copy(record: dict[str, Any]) -> dict[str, Any]:
    key = tuple(
        (k, tuple(sorted(v.items())) if isinstance(v, Mapping) else v) for k, v in record.items()
    )
    try:
        return _RECORDS.setdefault(key, record)
    except TypeError:  # an unhashable value (not what Consul sends): keep it as it is
        return record
    finally:
        if len(_RECORDS) > _MAX_RECORDS:
            _RECORDS.clear()


def _slim_record(
    record: Mapping[str, Any], keys: tuple[str, ...], address: ConsulAddress, zone_meta: str
) -> dict[str, Any]:
    kept = {key: _shared(key, record[key]) for key in keys if key in record}
    tagged = record.get("TaggedAddresses")
    chosen = address is not ConsulAddress.SERVICE
    if chosen and isinstance(tagged, Mapping) and address.value in tagged:
        kept["TaggedAddresses"] = {address.value: tagged[address.value]}
    meta = record.get("Meta")
    if isinstance(meta, Mapping) and zone_meta in meta:
        kept["Meta"] = {zone_meta: meta[zone_meta]}
    return kept


def _shared(key: str, value: Any) -> Any:
    """One copy of a string many entries hold (node and service names, check statuses);
    unique ones (IDs, addresses) as they are: interning them would only cost."""
    if key in _REPEATED and isinstance(value, str) and len(value) <= 128:
        return sys.intern(value)
    return value


_REPEATED = frozenset(("Node", "Service", "Status"))


_NODE_KEYS = ("Node", "Address")
_SERVICE_KEYS = ("ID", "Service", "Address", "Port")
_CHECK_KEYS = ("Node", "CheckID", "ServiceID", "Status", "ModifyIndex")


EntryMemo = dict[int, tuple[Mapping[str, Any], "Backend | MappedEntry"]]
"""id(entry) -> (entry, what it maps to): what a source remembers between answers. An entry
that maps cleanly is remembered as its Backend alone (most are: 10,000 services hold one
per instance); one dropped or with warnings as its MappedEntry."""


def _mapped(
    entry: Mapping[str, Any], source: ConsulSourceConfig, protocol: str
) -> Backend | MappedEntry:
    mapped = map_entry(entry, source)
    if mapped.identity is None or mapped.warnings:
        return mapped
    return _backend(mapped, source.port_name, protocol)


def _backend(mapped: MappedEntry, port_name: str, protocol: str) -> Backend:
    assert mapped.identity is not None
    address, port = mapped.identity
    return Backend(
        address, port_set(EndpointPort(port_name, port, protocol)), mapped.ready, mapped.zone
    )


def backends_from_health(
    entries: Iterable[Mapping[str, Any]],
    source: ConsulSourceConfig,
    target: Target,
    memo: EntryMemo | None = None,
) -> tuple[frozenset[Backend], list[str]]:
    """Turn /v1/health/service entries into backends, plus a warning per dropped entry.

    `memo` (kept by the caller between answers) holds entries already seen: when an answer
    is the last one with a few entries replaced, only those are mapped again. It is
    updated to hold exactly this answer's entries.
    """
    protocol = next(p.protocol for p in target.ports if p.name == source.port_name)
    by_identity: dict[tuple[str, Any], Backend] = {}
    warnings: list[str] = []
    seen: EntryMemo = {}
    known: EntryMemo = memo if memo is not None else {}
    for entry in entries:
        remembered = known.get(id(entry))
        if remembered is None or remembered[0] is not entry:
            remembered = (entry, _mapped(entry, source, protocol))
        seen[id(entry)] = remembered
        outcome = remembered[1]
        if isinstance(outcome, MappedEntry):
            warnings += outcome.warnings
            if outcome.identity is None:
                DROPPED_ENTRIES.labels(target.key, outcome.dropped or "other").inc()
                continue
            outcome = _backend(outcome, source.port_name, protocol)
        backend = outcome
        identity = (backend.address, backend.ports)
        other = by_identity.get(identity)
        if other is not None:
            service = entry.get("Service") or {}
            name = f"{(entry.get('Node') or {}).get('Node', '?')}/{service.get('ID', '?')}"
            port = next(iter(backend.ports)).port
            warnings.append(f"{name}: duplicates {backend.address} port {port}; merged")
            DROPPED_ENTRIES.labels(target.key, "duplicate").inc()
            backend = Backend(
                backend.address,
                backend.ports,
                backend.ready or other.ready,  # one healthy registration is enough
                other.zone or backend.zone,
            )
        by_identity[identity] = backend
    if memo is not None:
        memo.clear()
        memo.update(seen)
    return frozenset(by_identity.values()), warnings


def _instance_zone(
    entry: Mapping[str, Any], key: str, name: str, warnings: list[str]
) -> str | None:
    """The instance's zone: its service meta `key`, else its node's; None if neither."""
    service_meta = (entry.get("Service") or {}).get("Meta") or {}
    node_meta = (entry.get("Node") or {}).get("Meta") or {}
    zone = service_meta.get(key) or node_meta.get(key)
    if zone is None:
        return None
    if not is_label_value(zone) or not zone:
        warnings.append(f"{name}: meta {key}={zone!r} is not a zone name; zone left out")
        return None
    return str(zone)


def query_params(source: ConsulSourceConfig, index: int, wait: float) -> list[tuple[str, Any]]:
    """The query string of a service read: blocking when `index` > 0, then every filter."""
    params: list[tuple[str, Any]] = []
    if index:
        params += [("index", index), ("wait", f"{int(wait)}s")]
    params += [("tag", tag) for tag in source.tags]
    params += [("node-meta", f"{key}:{value}") for key, value in source.node_meta]
    for name, value in (
        ("dc", source.datacenter),
        ("filter", source.filter),
        ("ns", source.namespace),
        ("partition", source.partition),
    ):
        if value:
            params.append((name, value))
    if source.consistency is not ConsulConsistency.DEFAULT:
        params.append((source.consistency.value, ""))
    return params


def scope_params(source: ConsulSourceConfig) -> list[tuple[str, Any]]:
    """Where a service lives: datacenter, and Enterprise namespace and partition."""
    return [
        (name, value)
        for name, value in (
            ("dc", source.datacenter),
            ("ns", source.namespace),
            ("partition", source.partition),
        )
        if value
    ]


# --------------------------------------------------------------------------- sources


class ConsulSource:
    """One Consul service as the backends of one target."""

    __slots__ = ("clients", "config", "target")

    def __init__(self, config: ConsulSourceConfig, target: Target, clients: ConsulClients):
        self.config = config
        self.target = target
        self.clients = clients

    def describe(self) -> str:
        return self.config.describe()

    @property
    def path(self) -> str:
        return f"/v1/health/service/{urllib.parse.quote(self.config.service, safe='')}"

    def read(
        self,
        client: consul.Consul,
        index: int = 0,
        unless_index: int | None = None,
        selection: str | None = None,
    ) -> Reply:
        """One read with `client`; blocking when index > 0; with `selection` (a filter
        expression; only for a source without a `filter` of its own) just those instances.
        Raises SourceError on any failure, including an answer Consul filtered by ACLs."""
        params = query_params(self.config, index, self.clients.connection.wait)
        if selection:
            params.append(("filter", selection))
        reply = get(
            client,
            self.path,
            params,
            kind="consul",
            name=self.describe(),
            denied="ACL token lacks read access",
            unless_index=unless_index,
        )
        if reply.filtered_by_acls:
            # Consul hides what the token may not read and answers 200: an empty or partial
            # list here is not the registry's answer, and applying it would drain the Service.
            raise SourceError(
                f"{self.describe()}: Consul filtered the answer by ACLs; the token needs "
                f'\'service "{self.config.service}" {{ policy = "read" }}\' and node read'
            )
        if reply.body is not None and not isinstance(reply.body, list):
            raise SourceError(f"{self.describe()}: unexpected answer from Consul")
        return reply

    def snapshot(self, entries: list[dict[str, Any]], memo: EntryMemo | None = None) -> Snapshot:
        backends, warnings = backends_from_health(entries, self.config, self.target, memo)
        return Snapshot(backends=backends, source=self.describe(), warnings=tuple(warnings))

    def fetch(self) -> Snapshot:
        with self.clients.borrow() as client:
            reply = self.read(client)
        return self.snapshot(reply.body)


class ConsulQuerySource:
    """A Consul prepared query as one tier: /v1/query/<name>/execute, polled.

    Consul itself fails over between datacenters inside the query; the answer lists the
    nodes of whichever datacenter served it. Prepared queries cannot block, so the daemon
    asks again every `poll_interval` seconds, with a client borrowed from the shared pool.
    """

    def __init__(self, config: ConsulQuerySourceConfig, target: Target, clients: ConsulClients):
        self._config = config
        self._target = target
        self._clients = clients
        # The health mapping only needs these fields of a service source:
        self._as_service = ConsulSourceConfig(
            service=config.query,
            port_name=config.port_name,
            address=config.address,
            warning_is_ready=config.warning_is_ready,
            zone_meta=config.zone_meta,
        )

    def describe(self) -> str:
        return self._config.describe()

    def fetch(self) -> Snapshot:
        path = f"/v1/query/{urllib.parse.quote(self._config.query, safe='')}/execute"
        with self._clients.borrow() as client:
            reply = get(
                client,
                path,
                None,
                kind="consul_query",
                name=self.describe(),
                denied="ACL token may not execute it",
            )
        result = reply.body
        if not isinstance(result, dict) or not isinstance(result.get("Nodes"), list):
            raise SourceError(f"{self.describe()}: unexpected answer from Consul")
        backends, warnings = backends_from_health(result["Nodes"], self._as_service, self._target)
        datacenter = result.get("Datacenter", "?")
        return Snapshot(backends, f"{self.describe()} (served by {datacenter})", tuple(warnings))

    def poll(self) -> tuple[Snapshot, float | None]:
        """Prepared queries cannot block: ask again every poll_interval."""
        return self.fetch(), self._config.poll_interval
