"""Consul sources' configuration: a service's instances (`type: consul`) and a prepared
query (`type: consul_query`): their dataclasses and their config sections. How they are
read and followed is in consul.py and the consul_* modules; their rows are in consul.py."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.model import Backend, ConsulConnection, ServicePort
from syncd.syntax.checks import (
    Scope,
    choice,
    expect_mapping,
    flag,
    nonempty_string,
    numbers,
    served_port,
)


class ConsulAddress(enum.StrEnum):
    """Which address of a Consul instance becomes the endpoint address."""

    SERVICE = "service"  # the service's address, else its node's address
    LAN_IPV4 = "lan_ipv4"
    WAN_IPV4 = "wan_ipv4"
    LAN_IPV6 = "lan_ipv6"
    WAN_IPV6 = "wan_ipv6"
    LAN = "lan"
    WAN = "wan"


class ConsulConsistency(enum.StrEnum):
    DEFAULT = "default"
    STALE = "stale"
    CONSISTENT = "consistent"


@dataclass(frozen=True)
class ConsulSourceConfig:
    """Instances of one Consul service, read from /v1/health/service/<service>."""

    service: str
    port_name: str  # the Service port the instances' port serves
    tags: tuple[str, ...] = ()
    datacenter: str | None = None
    node_meta: tuple[tuple[str, str], ...] = ()
    filter: str | None = None
    namespace: str | None = None  # Consul Enterprise
    partition: str | None = None  # Consul Enterprise
    address: ConsulAddress = ConsulAddress.SERVICE
    consistency: ConsulConsistency = ConsulConsistency.DEFAULT
    warning_is_ready: bool = True
    zone_meta: str = "zone"  # the service (else node) meta key that names an instance's zone
    hostname_from: str | None = None  # node, service_id or meta:<key>; None: no names

    @property
    def kind(self) -> str:
        return "consul"

    @property
    def scope(self) -> tuple[str | None, str | None, str | None]:
        """Its datacenter, namespace and partition: each is followed by change feeds."""
        return (self.datacenter, self.namespace, self.partition)

    @property
    def operators_own(self) -> bool:
        return False

    @property
    def listed(self) -> tuple[Backend, ...]:
        return ()

    def describe(self) -> str:
        where = f"@{self.datacenter}" if self.datacenter else ""
        tags = f" tags={','.join(self.tags)}" if self.tags else ""
        return f"consul service {self.service}{where}{tags}"


@dataclass(frozen=True)
class ConsulQuerySourceConfig:
    """A Consul prepared query (/v1/query/<name>/execute): Consul's own cross-datacenter
    failover as one tier. Polled (prepared queries do not block)."""

    query: str
    port_name: str
    address: ConsulAddress = ConsulAddress.SERVICE
    warning_is_ready: bool = True
    poll_interval: float = 5.0
    zone_meta: str = "zone"
    hostname_from: str | None = None

    @property
    def kind(self) -> str:
        return "consul_query"

    @property
    def operators_own(self) -> bool:
        return False

    @property
    def listed(self) -> tuple[Backend, ...]:
        return ()

    def describe(self) -> str:
        return f"consul prepared query {self.query}"


# --------------------------------------------------------------------------- their sections


_CONSUL_SOURCE_KEYS = {
    "type",
    "service",
    "port",
    "tags",
    "datacenter",
    "node_meta",
    "filter",
    "namespace",
    "partition",
    "address",
    "consistency",
    "warning_is_ready",
    "zone_meta",
    "hostname_from",
}


def parse_service(
    raw: dict, scope: Scope, ports: tuple[ServicePort, ...], base_dir: Path
) -> ConsulSourceConfig | None:
    data = expect_mapping(raw, scope, _CONSUL_SOURCE_KEYS, {"type", "service"})
    if data is None:
        return None
    before = len(scope.checker.problems)
    service = (
        nonempty_string(data.get("service"), scope.at("service")) if "service" in data else None
    )
    names = [p.name for p in ports]
    port_name = served_port(data, "port", names, scope, "the instances serve")
    tags: tuple[str, ...] = ()
    if "tags" in data:
        value = data["tags"]
        if isinstance(value, list) and all(isinstance(t, str) and t for t in value):
            tags = tuple(value)
        else:
            scope.at("tags").error("must be a list of tag strings (all must match)")
    node_meta: tuple[tuple[str, str], ...] = ()
    if "node_meta" in data:
        value = data["node_meta"]
        if isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            node_meta = tuple(sorted(value.items()))
        else:
            scope.at("node_meta").error("must be a mapping of string keys to string values")
    optional: dict[str, Any] = {}
    for key in ("datacenter", "filter", "namespace", "partition"):
        if key in data:
            optional[key] = nonempty_string(data[key], scope.at(key))
    address = choice(data, "address", ConsulAddress, ConsulAddress.SERVICE, scope)
    consistency = choice(data, "consistency", ConsulConsistency, ConsulConsistency.DEFAULT, scope)
    warning_is_ready = flag(data, "warning_is_ready", scope)
    if "zone_meta" in data:
        optional["zone_meta"] = _meta_key(data["zone_meta"], scope.at("zone_meta"))
    if "hostname_from" in data:
        optional["hostname_from"] = _hostname_from(data["hostname_from"], scope.at("hostname_from"))
    if len(scope.checker.problems) > before or service is None:
        return None
    return ConsulSourceConfig(
        service=service,
        port_name=port_name,
        tags=tags,
        node_meta=node_meta,
        address=address,
        consistency=consistency,
        warning_is_ready=True if warning_is_ready is None else warning_is_ready,
        **optional,
    )


def parse_query(
    raw: dict, scope: Scope, ports: tuple[ServicePort, ...], base_dir: Path
) -> ConsulQuerySourceConfig | None:
    data = expect_mapping(
        raw,
        scope,
        {
            "type",
            "query",
            "port",
            "address",
            "warning_is_ready",
            "poll_interval",
            "zone_meta",
            "hostname_from",
        },
        {"type", "query"},
    )
    if data is None:
        return None
    before = len(scope.checker.problems)
    query = nonempty_string(data.get("query"), scope.at("query")) if "query" in data else None
    names = [p.name for p in ports]
    port_name = served_port(data, "port", names, scope, "the instances serve")
    values = numbers(data, scope, {"poll_interval": (0.1, 3600)})
    values["address"] = choice(data, "address", ConsulAddress, ConsulAddress.SERVICE, scope)
    if flag(data, "warning_is_ready", scope) is not None:
        values["warning_is_ready"] = data["warning_is_ready"]
    if "zone_meta" in data:
        values["zone_meta"] = _meta_key(data["zone_meta"], scope.at("zone_meta"))
    if "hostname_from" in data:
        values["hostname_from"] = _hostname_from(data["hostname_from"], scope.at("hostname_from"))
    if len(scope.checker.problems) > before or query is None:
        return None
    return ConsulQuerySourceConfig(query=query, port_name=port_name, **values)


_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _meta_key(value: Any, scope: Scope) -> str:
    """A Consul metadata key (letters, digits, '-', '_'; at most 128)."""
    if not isinstance(value, str) or not _META_KEY.match(value):
        scope.error(f"{value!r} is not a Consul meta key (letters, digits, '-', '_')")
        return "zone"
    return value


HOSTNAME_FROM = ("node", "service_id", "meta:<key>")


def _hostname_from(value: Any, scope: Scope) -> str | None:
    """Where an instance's DNS name comes from: its node's name, its service ID, or a
    service (else node) meta key."""
    if value in ("node", "service_id"):
        return str(value)
    if isinstance(value, str) and value.startswith("meta:"):
        return "meta:" + _meta_key(value[5:], scope)
    scope.error(f"{value!r} is not one of: {', '.join(HOSTNAME_FROM)}")
    return None


def check_budget(
    sources: Sequence[ConsulSourceConfig], connection: ConsulConnection, root: Scope
) -> None:
    """Enough connections for every datacenter (and namespace, partition) the services
    are in: the shared readers and four change feeds each."""
    datacenters = {source.scope for source in sources}
    needed = connection.least_connections(len(datacenters))
    if connection.budget() < needed:
        root.at("consul", "max_connections").error(
            f"{connection.budget()} is too few for {len(datacenters)} Consul "
            f"datacenters (or namespaces): at least {needed} (the shared readers and four "
            "change feeds each)"
        )


__all__ = [
    "ConsulAddress",
    "ConsulConsistency",
    "ConsulQuerySourceConfig",
    "ConsulSourceConfig",
    "check_budget",
    "parse_query",
    "parse_service",
]
