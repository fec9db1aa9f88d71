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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import consul
import consul.base

from syncd.errors import SourceError
from syncd.kinds import HOSTNAME_RULE, is_label_value, registry_hostname
from syncd.memo import WORTH_REMEMBERING
from syncd.model import (
    Backend,
    ConsulConnection,
    EndpointPort,
    Snapshot,
    Target,
    port_set,
)
from syncd.observability import DROPPED_ENTRIES
from syncd.sources.base import Dropped, checked_entry
from syncd.sources.consul_api import ConsulClients, Reply, get, interpret, token_headers
from syncd.sources.consul_config import (
    ConsulAddress,
    ConsulConsistency,
    ConsulQuerySourceConfig,
    ConsulSourceConfig,
    check_budget,
    parse_query,
    parse_service,
)
from syncd.sources.consul_h2 import blocking_timeout, path_with_query
from syncd.sources.types import HOSTNAME_FROM_PATTERN, SourceNeeds, SourceType

# --------------------------------------------------------------------------- what is kept


class Check(NamedTuple):
    """One health check of an instance: what syncd reads of it."""

    node: str
    check_id: str
    service_id: str  # "" for a node check (on every instance of its node)
    status: str
    modify_index: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.node, self.check_id)


class NodeRecord(NamedTuple):
    """What an instance takes from its node, held once per node (see `slim_entry`)."""

    name: str
    address: str
    tagged: str  # the node's tagged address the source chose; "" if none (or "service")
    zone: Any  # the node's `zone_meta` value; None if it has none


class Instance(NamedTuple):
    """One /v1/health/service entry as syncd keeps it: a daemon holds every instance it
    follows, so it keeps only what mapping and the health feeds read (a tuple costs a
    third of the three dicts and a list Consul's JSON becomes)."""

    node: NodeRecord
    id: str
    address: str  # the service's own address; "" if it has none
    port: Any  # as Consul sent it (None when it left out a port of 0)
    tagged: tuple[str, Any] | None  # the tagged service address the source chose, and port
    zone: Any  # the service's `zone_meta` value; None if it has none
    checks: tuple[Check, ...]
    name_meta: Any = None  # with hostname_from meta:<key>: its service (else node) value

    @property
    def key(self) -> tuple[str, str]:
        """(node, service id): which instance it is, in answers and in the health feeds."""
        return (self.node.name, self.id)

    @property
    def name(self) -> str:
        return f"{self.node.name or '?'}/{self.id or '?'}"


def slim_entry(
    entry: Mapping[str, Any],
    address: ConsulAddress = ConsulAddress.SERVICE,
    zone_meta: str = "zone",
    name_meta: str | None = None,
) -> Instance:
    """What syncd keeps of a /v1/health/service entry: of the tagged addresses only the
    `address` chosen, of the meta only the `zone_meta` and `name_meta` keys, none of the
    check outputs, proxy settings or raft indexes. The node's record and its node checks
    are held once however many instances sit on the node, and repeated strings (node
    names, statuses) once in all."""
    node = entry.get("Node") or {}
    service = entry.get("Service") or {}
    node_name = _shared(node.get("Node", ""))
    instance_id = str(service.get("ID", ""))
    chosen = address.value if address is not ConsulAddress.SERVICE else None
    tagged = (service.get("TaggedAddresses") or {}).get(chosen) if chosen else None
    return Instance(
        node=_one_copy(
            NodeRecord(
                node_name,
                str(node.get("Address") or ""),
                str(((node.get("TaggedAddresses") or {}).get(chosen) or "") if chosen else ""),
                _meta(node, zone_meta),
            )
        ),
        id=instance_id,
        address=_shared(service.get("Address") or ""),  # as its canonical form is
        port=service.get("Port"),
        tagged=(
            (str(tagged["Address"]), tagged.get("Port"))
            if isinstance(tagged, Mapping) and tagged.get("Address")
            else None
        ),
        zone=_meta(service, zone_meta),
        checks=tuple(_check(check, node_name, instance_id) for check in entry.get("Checks") or ()),
        name_meta=(
            None if name_meta is None else _meta(service, name_meta) or _meta(node, name_meta)
        ),
    )


def _check(check: Mapping[str, Any], node: str, instance_id: str) -> Check:
    service_id = str(check.get("ServiceID") or "")
    kept = Check(
        _shared(check.get("Node", node)),
        str(check.get("CheckID", "")),
        instance_id if service_id == instance_id else service_id,  # one copy of the id
        _shared(check.get("Status", "")),
        int(check.get("ModifyIndex") or 0),
    )
    return kept if service_id else _one_copy(kept)  # a node's: on every instance


def _meta(record: Mapping[str, Any], key: str) -> Any:
    meta = record.get("Meta")
    return meta.get(key) if isinstance(meta, Mapping) else None


# Node records and node checks, held once however many instances sit on the node (every
# instance's entry repeats them). Records are tuples, so sharing is safe. Bounded: a
# churning catalog starts the table over.
_RECORDS: dict[Any, Any] = {}
_MAX_RECORDS = 65_536

Record = TypeVar("Record", NodeRecord, Check)


def _one_copy(record: Record) -> Record:
    try:
        return _RECORDS.setdefault(record, record)
    except TypeError:  # an unhashable value (not what Consul sends): keep it as it is
        return record
    finally:
        if len(_RECORDS) > _MAX_RECORDS:
            _RECORDS.clear()


def _shared(value: Any) -> str:
    """One copy of a string many entries hold (node names, check statuses), or that the
    cluster cache and the backends hold as well (addresses, see canonical_endpoint_ip)."""
    text = str(value)
    return sys.intern(text) if len(text) <= 128 else text


# --------------------------------------------------------------------------- pure mapping


def instance_ready(statuses: Iterable[str], warning_is_ready: bool) -> bool:
    """All checks passing -> ready; any critical (incl. maintenance mode) -> not ready."""
    for status in statuses:
        if status == "passing":
            continue
        if status == "warning" and warning_is_ready:
            continue
        return False
    return True


def _instance_address(instance: Instance, choice: ConsulAddress) -> tuple[str, Any]:
    if choice is ConsulAddress.SERVICE:
        return (instance.address or instance.node.address), instance.port
    if instance.tagged is not None:
        address, port = instance.tagged
        return address, port or instance.port
    return instance.node.tagged, instance.port


@dataclass(frozen=True, slots=True)
class MappedEntry:
    """One registry entry as syncd reads it: an (address, port) and its health, or dropped."""

    identity: tuple[str, int] | None  # None: dropped (see `dropped`)
    ready: bool = False
    zone: str | None = None
    warnings: tuple[str, ...] = ()
    dropped: str | None = None  # the metric's reason
    hostname: str | None = None


def map_entry(instance: Instance, source: ConsulSourceConfig) -> MappedEntry:
    """One instance -> MappedEntry (pure)."""
    name = instance.name
    address, port = _instance_address(instance, source.address)
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
    zone = _instance_zone(instance, source.zone_meta, warnings)
    hostname = _instance_hostname(instance, source.hostname_from, warnings)
    ready = instance_ready((check.status for check in instance.checks), source.warning_is_ready)
    return MappedEntry((address, port), ready, zone, tuple(warnings), hostname=hostname)


EntryMemo = dict[int, tuple[Instance, "Backend | MappedEntry"]]
"""id(instance) -> (instance, what it maps to): what a source remembers between answers. An
instance that maps cleanly is remembered as its Backend alone (most do: 10,000 services hold
one per instance); one dropped or with warnings as its MappedEntry."""


def _mapped(instance: Instance, source: ConsulSourceConfig, protocol: str) -> Backend | MappedEntry:
    mapped = map_entry(instance, source)
    if mapped.identity is None or mapped.warnings:
        return mapped
    return _backend(mapped, source.port_name, protocol)


def _backend(mapped: MappedEntry, port_name: str, protocol: str) -> Backend:
    assert mapped.identity is not None
    address, port = mapped.identity
    ports = port_set(EndpointPort(port_name, port, protocol))
    return Backend(address, ports, mapped.ready, mapped.zone, mapped.hostname)


def backends_from_health(
    entries: Iterable[Mapping[str, Any]], source: ConsulSourceConfig, target: Target
) -> tuple[frozenset[Backend], list[str]]:
    """/v1/health/service entries (as Consul sent them) -> backends, plus a warning per
    dropped entry."""
    name_meta = name_meta_key(source.hostname_from)
    instances = [
        slim_entry(entry, source.address, source.zone_meta, name_meta) for entry in entries
    ]
    return backends_from_instances(instances, source, target)


def backends_from_instances(
    instances: Iterable[Instance],
    source: ConsulSourceConfig,
    target: Target,
    memo: EntryMemo | None = None,
) -> tuple[frozenset[Backend], list[str]]:
    """Instances -> backends, plus a warning per dropped instance.

    `memo` (kept by the caller between answers) holds instances already seen: when an
    answer is the last one with a few instances replaced, only those are mapped again. It
    is updated to hold exactly this answer's instances.
    """
    protocol = next(p.protocol for p in target.ports if p.name == source.port_name)
    by_identity: dict[tuple[str, Any], Backend] = {}
    warnings: list[str] = []
    seen: EntryMemo = {}
    known: EntryMemo = memo if memo is not None else {}
    for instance in instances:
        remembered = known.get(id(instance))
        if remembered is None or remembered[0] is not instance:
            remembered = (instance, _mapped(instance, source, protocol))
        seen[id(instance)] = remembered
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
            port = next(iter(backend.ports)).port
            warnings.append(f"{instance.name}: duplicates {backend.address} port {port}; merged")
            DROPPED_ENTRIES.labels(target.key, "duplicate").inc()
            backend = Backend(
                backend.address,
                backend.ports,
                backend.ready or other.ready,  # one healthy registration is enough
                other.zone or backend.zone,
                other.hostname or backend.hostname,
            )
        by_identity[identity] = backend
    if memo is not None:
        memo.clear()
        memo.update(seen)
    return frozenset(by_identity.values()), warnings


def name_meta_key(hostname_from: str | None) -> str | None:
    """The meta key an instance's name is read from (hostname_from meta:<key>), or None."""
    if hostname_from is None or not hostname_from.startswith("meta:"):
        return None
    return hostname_from[5:]


def _instance_hostname(
    instance: Instance, hostname_from: str | None, warnings: list[str]
) -> str | None:
    """The instance's DNS name in the cluster, when the source asks for one: its node's
    name, its service ID or a meta value, lowercased; a name that cannot be one is left
    out (the endpoint stays), with a warning."""
    if hostname_from is None:
        return None
    if hostname_from == "node":
        given: Any = instance.node.name
    elif hostname_from == "service_id":
        given = instance.id
    else:
        given = instance.name_meta
    if given is None or given == "":  # e.g. an instance without the meta key: no name
        return None
    name = registry_hostname(str(given))
    if name is None:
        what = hostname_from.replace(":", " ", 1).replace("_", " ")
        warnings.append(
            f"{instance.name}: {what} {str(given)!r} is not a hostname ({HOSTNAME_RULE}); "
            "kept without a name"
        )
    return name


def _instance_zone(instance: Instance, key: str, warnings: list[str]) -> str | None:
    """The instance's zone: its service meta `key`, else its node's; None if neither."""
    zone = instance.zone or instance.node.zone
    if zone is None:
        return None
    if not is_label_value(zone) or not zone:
        warnings.append(f"{instance.name}: meta {key}={zone!r} is not a zone name; zone left out")
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


# --------------------------------------------------------------------------- sources

_DENIED = "ACL token lacks read access"


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
        keep: Callable[[Mapping[str, Any]], Instance] | None = None,
    ) -> Reply:
        """One read with `client`; blocking when index > 0; with `selection` (a filter
        expression; only for a source without a `filter` of its own) just those instances;
        with `keep` (`slim_entry` for the query's address and zone key), the entries as
        Instances, each kept as it is parsed. Raises SourceError on any failure, including
        an answer Consul filtered by ACLs."""
        params = query_params(self.config, index, self.clients.connection.wait)
        if selection:
            params.append(("filter", selection))
        reply = get(
            client,
            self.path,
            params,
            kind="consul",
            name=self.describe(),
            denied=_DENIED,
            unless_index=unless_index,
            keep=keep,
        )
        return self._checked(reply)

    def watch_request(self, index: int) -> tuple[str, dict[str, str], float]:
        """A blocking read as one HTTP/2 request: its path with the query, its headers (the
        token as of now) and how long it may take."""
        connection = self.clients.connection
        params = query_params(self.config, index, connection.wait)
        return (
            path_with_query(self.path, params),
            token_headers(self.clients.token),
            blocking_timeout(params, connection.timeout),
        )

    def watch_reply(
        self,
        result: consul.base.Response | BaseException,
        unless_index: int | None,
        keep: Callable[[Mapping[str, Any]], Instance] | None,
        uri: str,
    ) -> Reply:
        """What `read` gives, from the outcome of a `watch_request`."""
        reply = interpret(
            result,
            kind="consul",
            name=self.describe(),
            denied=_DENIED,
            uri=uri,
            unless_index=unless_index,
            keep=keep,
        )
        return self._checked(reply)

    def _checked(self, reply: Reply) -> Reply:
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

    def snapshot(self, instances: list[Instance], memo: EntryMemo | None = None) -> Snapshot:
        if memo is not None and len(instances) < WORTH_REMEMBERING:
            memo.clear()  # a few instances are mapped again faster than they are remembered
            memo = None
        backends, warnings = backends_from_instances(instances, self.config, self.target, memo)
        return Snapshot(backends=backends, source=self.describe(), warnings=tuple(warnings))

    def fetch(self) -> Snapshot:
        with self.clients.borrow() as client:
            reply = self.read(client)
        backends, warnings = backends_from_health(reply.body, self.config, self.target)
        return Snapshot(backends=backends, source=self.describe(), warnings=tuple(warnings))


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
            hostname_from=config.hostname_from,
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


# --------------------------------------------------------------------------- the rows


def _clients(needs: SourceNeeds) -> ConsulClients:
    """The driver's shared pool, else a private one of a single connection."""
    return needs.consul if needs.consul is not None else ConsulClients(ConsulConnection(), 1)


def _build_service(config: ConsulSourceConfig, target: Target, needs: SourceNeeds) -> ConsulSource:
    return ConsulSource(config, target, _clients(needs))


def _build_query(
    config: ConsulQuerySourceConfig, target: Target, needs: SourceNeeds
) -> ConsulQuerySource:
    return ConsulQuerySource(config, target, _clients(needs))


_SHARED_CRD = {
    "port": {
        "x-kubernetes-int-or-string": True,
        "description": "consul: which Service port the instances serve",
    },
    "address": {
        "type": "string",
        "enum": [a.value for a in ConsulAddress],
        "description": "consul: which address of an instance becomes the endpoint",
    },
    "warning_is_ready": {
        "type": "boolean",
        "description": "consul: a warning check still counts as ready (default true)",
    },
    "zone_meta": {
        "type": "string",
        "description": "consul: the meta key holding the zone (default zone)",
    },
    "hostname_from": {
        "type": "string",
        "pattern": HOSTNAME_FROM_PATTERN,
        "description": "consul: each endpoint's DNS name: node, service_id or meta:<key>",
    },
}

SOURCE_TYPES = (
    SourceType(
        name="consul",
        example={"type": "consul", "service": "rgw"},
        parse=parse_service,
        build=_build_service,
        crd={
            "service": {
                "type": "string",
                "minLength": 1,
                "description": "consul: the service name",
            },
            **_SHARED_CRD,
            "tags": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "description": "consul: instances with all of these tags",
            },
            "datacenter": {
                "type": "string",
                "description": "consul: the datacenter (default the agent's)",
            },
            "node_meta": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "consul: nodes with this meta",
            },
            "filter": {"type": "string", "description": "consul: a filter expression"},
            "namespace": {"type": "string"},
            "partition": {"type": "string"},
            "consistency": {
                "type": "string",
                "enum": [c.value for c in ConsulConsistency],
                "description": "consul: the read mode",
            },
        },
        crd_rules=(
            {
                "rule": "self.type != 'consul' || has(self.service)",
                "message": "a consul source needs 'service'",
            },
            {
                "rule": "self.type != 'consul' || !has(self.hostname_from) || "
                "self.hostname_from != 'srv_target'",
                "message": "a consul source takes hostname_from: node, service_id or meta:<key>",
            },
        ),
        needs=frozenset({"consul"}),
        check_all=check_budget,
    ),
    SourceType(
        name="consul_query",
        example={"type": "consul_query", "query": "rgw"},
        parse=parse_query,
        build=_build_query,
        crd={
            "query": {
                "type": "string",
                "minLength": 1,
                "description": "consul_query: the prepared query",
            },
            **_SHARED_CRD,
            "poll_interval": {"type": "number", "minimum": 0.1, "maximum": 3600},
        },
        crd_rules=(
            {
                "rule": "self.type != 'consul_query' || has(self.query)",
                "message": "a consul_query source needs 'query'",
            },
            {
                "rule": "self.type != 'consul_query' || !has(self.hostname_from) || "
                "self.hostname_from != 'srv_target'",
                "message": "consul_query takes hostname_from: node, service_id or meta:<key>",
            },
        ),
        needs=frozenset({"consul"}),
    ),
)
