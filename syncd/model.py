"""The data that flows between stages: backends, targets and snapshots (frozen, hashable)."""

from __future__ import annotations

import enum
import ipaddress
import operator
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from syncd.addresses import IPNetwork, ip_version
from syncd.errors import SourceError


class Output(frozenset[str]):
    """Which endpoint objects syncd writes for a target: a set of kind names (rows of
    `syncd.kinds`), named in the config as `endpointslices`, `endpoints` or `both`."""

    ENDPOINTSLICES: Output
    ENDPOINTS: Output
    BOTH: Output
    BY_NAME: dict[str, Output]

    @classmethod
    def parse(cls, name: str) -> Output:
        """The output a config names; ValueError for any other name."""
        try:
            return cls.BY_NAME[name]
        except (KeyError, TypeError):
            raise ValueError(f"{name!r} is not one of: {', '.join(cls.BY_NAME)}") from None

    @property
    def value(self) -> str:
        return next(name for name, output in Output.BY_NAME.items() if output == self)

    @property
    def slices(self) -> bool:
        return "EndpointSlice" in self

    @property
    def endpoints(self) -> bool:
        return "Endpoints" in self


Output.ENDPOINTSLICES = Output({"EndpointSlice"})
Output.ENDPOINTS = Output({"Endpoints"})
Output.BOTH = Output({"EndpointSlice", "Endpoints"})
Output.BY_NAME = {
    "endpointslices": Output.ENDPOINTSLICES,
    "endpoints": Output.ENDPOINTS,
    "both": Output.BOTH,
}


class AddressFamily(enum.StrEnum):
    """EndpointSlice addressType values; one slice never mixes families."""

    IPV4 = "IPv4"
    IPV6 = "IPv6"


@dataclass(frozen=True, order=True, slots=True)
class ServicePort:
    """A port of the Service: what clients inside the cluster connect to."""

    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, order=True, slots=True)
class EndpointPort:
    """Where a backend really listens for one Service port (named like that Service port)."""

    name: str
    port: int
    protocol: str = "TCP"


PortSet = tuple[EndpointPort, ...]


class _SharedPorts(tuple[EndpointPort, ...]):
    """An interned port set whose hash is computed once: every backend's hash includes it."""

    _hash: int

    def __hash__(self) -> int:
        return self._hash


_PORT_SETS: dict[PortSet, PortSet] = {}


def port_set(*ports: EndpointPort) -> PortSet:
    """The sorted port set, shared: 100,000 backends on one port hold one tuple, not 100,000."""
    key = tuple(sorted(ports))
    shared = _PORT_SETS.get(key)
    if shared is None:
        shared = _SharedPorts(key)
        shared._hash = hash(key)
        shared = _PORT_SETS.setdefault(key, shared)
    return shared


@dataclass(frozen=True, order=True, slots=True)
class Backend:
    """One address and the port it serves for each Service port it backs.

    `address` is always the canonical text form (what the API server stores), so two
    spellings of one IP are one backend.
    """

    address: str
    ports: PortSet
    ready: bool = True
    zone: str | None = None  # where it runs: topology-aware routing prefers the client's zone
    # its DNS name in the cluster: <hostname>.<service>.<namespace>.svc.<cluster domain>
    hostname: str | None = None
    # Hashed once: sets of thousands of backends are built on every change of a large target.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_hash", hash((self.address, self.ports, self.ready, self.zone, self.hostname))
        )

    def __hash__(self) -> int:
        return self._hash

    @property
    def family(self) -> AddressFamily:
        version = ip_version(self.address)
        return AddressFamily.IPV4 if version == 4 else AddressFamily.IPV6

    @property
    def identity(self) -> tuple[str, PortSet]:
        """Two backends with the same identity are duplicates, whatever their readiness."""
        return (self.address, self.ports)

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        ports = ",".join(f"{p.name}={p.port}" if p.name else str(p.port) for p in self.ports)
        zone = f" in {self.zone}" if self.zone else ""
        name = f" as {self.hostname}" if self.hostname else ""
        return f"{host}:{ports}{name}{zone}" + ("" if self.ready else " (not ready)")


def ready_count(backends: Iterable[Backend]) -> int:
    """How many are ready; counted without a Python-level loop (several times per change)."""
    return sum(map(_READY, backends))


_READY = operator.attrgetter("ready")


class SourceConfig(Protocol):
    """A configured source of one type: the dataclass of its module in syncd.sources
    (frozen and hashable). The config loader, the drivers and `check` know a source by
    this much only; the rest is its type's (syncd.sources.types)."""

    @property
    def kind(self) -> str:
        """Its type's name, as the config writes it (`type: static`)."""
        ...

    @property
    def listed(self) -> tuple[Backend, ...]:
        """The backends written in the config itself (a static list), checked when the
        config is loaded. Empty for a registry."""
        ...

    @property
    def operators_own(self) -> bool:
        """Is what it answers the operator's own word (a static list)? Drain protection
        never second-guesses that; a registry's answer it does."""
        ...

    def describe(self) -> str:
        """Short human name used in logs, e.g. 'consul service rgw'."""
        ...


CONSUL_PORT = 8500  # where a Consul agent serves HTTP unless told otherwise


CONSUL_CONNECTIONS = 32  # the default budget over HTTP/1.1
CONSUL_CONNECTIONS_HTTP2 = 48  # ... and over HTTP/2: 48 x 250 streams = 12,000 queries


@dataclass(frozen=True)
class ConsulConnection:
    """How to reach Consul; unset fields fall back to the usual CONSUL_* variables."""

    address: str | None = None  # default $CONSUL_HTTP_ADDR, else http://127.0.0.1:8500
    token_file: Path | None = None  # default $CONSUL_HTTP_TOKEN
    ca_file: Path | None = None  # default $CONSUL_CACERT
    cert_file: Path | None = None  # default $CONSUL_CLIENT_CERT
    key_file: Path | None = None  # default $CONSUL_CLIENT_KEY
    tls_server_name: str | None = None  # default $CONSUL_TLS_SERVER_NAME
    timeout: float = 10.0  # seconds per request, on top of a blocking query's wait
    wait: float = 300.0  # how long a blocking query may hold (Consul's own default: 5 min)
    min_query_interval: float = 0.05  # a churning service cannot spin the CPU
    # connections to Consul at once, whatever the number of targets; None: 32 over
    # HTTP/1.1 (a blocking query each), 48 over HTTP/2 (up to 250 queries each)
    max_connections: int | None = None
    sweep_rate: float = 100.0  # feed-followed services re-read per second after a catalog change
    http2: bool = True  # over HTTPS, HTTP/2 when the agent offers it (false: HTTP/1.1 only)

    def budget(self, http2: bool = False) -> int:
        """Connections syncd may hold to Consul."""
        if self.max_connections is not None:
            return self.max_connections
        return CONSUL_CONNECTIONS_HTTP2 if http2 else CONSUL_CONNECTIONS

    @property
    def readers(self) -> int:
        """The budget's share for the shared readers (reads, prepared queries)."""
        return max(1, min(4, self.budget() // 8))

    def least_connections(self, datacenters: int) -> int:
        """The least budget that follows `datacenters`: the readers and four feeds each."""
        return self.readers + 4 * datacenters


# Never endpoints, whatever a registry says: metadata services, loopback, "this host",
# link-local and multicast. The cluster's Service CIDR is added when configured.
DEFAULT_DENIED_CIDRS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "::1/128",
        "fe80::/10",
        "ff00::/8",
    )
)


@dataclass(frozen=True)
class AddressPolicy:
    """Addresses no target may point at (global), checked on every registry answer, and
    the cluster's own networks, which targets declared by resources may not point into
    (syncd.cluster_networks)."""

    denied: tuple[IPNetwork, ...] = DEFAULT_DENIED_CIDRS  # service_cidrs included
    service_cidrs: tuple[IPNetwork, ...] = ()  # the Service network, when configured
    cluster_cidrs: tuple[IPNetwork, ...] = ()  # networks of the cluster it does not publish
    cluster_network_namespaces: tuple[str, ...] = ()  # resources there may point into them
    discover_cluster_networks: bool = True  # read Nodes and ServiceCIDRs (else: config only)


@dataclass(frozen=True)
class FailoverConfig:
    """Sources are tiers: the first with min_ready ready backends is active."""

    min_ready: int = 1
    failback_after: float = 30.0  # a higher tier must qualify this long before failback


@dataclass(frozen=True)
class GuardConfig:
    """Large removals must be seen twice, confirm_after apart, before they are applied."""

    max_removal_fraction: float = 0.5
    confirm_after: float = 10.0


@dataclass(frozen=True)
class HealthCheckConfig:
    """Active probes; a backend is ready only if its registry and its probe both say so."""

    type: str = "tcp"  # tcp | http | https
    port: str | None = None  # which Service port's backend port to probe (default: first)
    path: str = "/"
    expected_status: tuple[tuple[int, int], ...] = ((200, 399),)
    host: str | None = None  # HTTP Host header
    tls_server_name: str | None = None
    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    concurrency: int = 16
    panic_threshold: float = 1.0  # this fraction failing while the registry says healthy
    #                               means the probe path is broken: ignore the probes


@dataclass(frozen=True)
class ResourceRef:
    """The ExternalService (syncd.config.resource) a target was declared by, in the target's
    namespace: what syncd writes for it is labelled with its name and carries an
    ownerReference to it, so the cluster's garbage collector removes them with it."""

    name: str
    uid: str


@dataclass(frozen=True)
class Target:
    """One selectorless Service and where its backends come from."""

    namespace: str
    service: str
    ports: tuple[ServicePort, ...]
    sources: tuple[SourceConfig, ...]
    output: Output = Output.ENDPOINTSLICES
    manage_service: bool = True
    headless: bool = False  # the managed Service has no ClusterIP: its name answers each backend
    max_endpoints_per_slice: int = 100
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    guards: GuardConfig = field(default_factory=GuardConfig)
    health_check: HealthCheckConfig | None = None
    allowed_cidrs: tuple[IPNetwork, ...] = ()  # empty: any address the policy allows
    drain_floor: int = 1  # a registry answer may not leave fewer ready backends than this
    traffic_distribution: str | None = None  # on the managed Service: PreferClose, ...
    resource: ResourceRef | None = None  # declared by an ExternalService, not the file

    @property
    def key(self) -> str:
        """namespace/service. One copy, however many tables of the daemon hold it."""
        return sys.intern(f"{self.namespace}/{self.service}")


@dataclass(frozen=True)
class Config:
    """A whole, validated configuration file."""

    path: Path
    targets: tuple[Target, ...]
    version: int = 1
    consul: ConsulConnection = field(default_factory=ConsulConnection)
    address_policy: AddressPolicy = field(default_factory=AddressPolicy)
    owner_id: str | None = None  # the instance's identity, when the config names it
    allow_protected: tuple[str, ...] = ()  # protected Services it may write (syncd.protected)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one source listed for one target at one moment. Empty is a real answer."""

    backends: frozenset[Backend]
    source: str
    warnings: tuple[str, ...] = field(default=())


Answer = Snapshot | SourceError  # what asking a source gives: its snapshot, or why not
ProbeKey = tuple[str, int]  # what a health probe checks: (address, port)
