"""DNS: backends from SRV records, or from a name's A/AAAA records plus configured ports.

- SRV `_service._proto.name` gives (priority, weight, port, target); each target is resolved
  through A and AAAA, from the answer's additional section when the server supplied it.
  Priority is a failover order: only the lowest-priority group that has usable targets is
  ready, the others are kept as not ready. Weight cannot be expressed to kube-proxy (it
  spreads evenly) and is ignored. A target of "." means "no service here" (RFC 2782).
- A/AAAA: every address of the name, with the configured port per Service port. CNAME
  chains are followed by the resolver.
- Refresh follows the records: the next lookup happens when the shortest TTL of the answer
  runs out, clamped to [min_ttl, max_ttl]; negative answers use the zone's negative TTL.
- NXDOMAIN or an empty answer is a real answer (zero backends); NXDOMAIN is warned about
  (a typo looks just like it). SERVFAIL, REFUSED, timeouts and unreachable nameservers are
  errors (SourceError): the caller keeps what is applied.
- Untrusted data: addresses the API server rejects are dropped with a warning and counted,
  duplicates are merged, a target that does not resolve is skipped and reported.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from syncd.errors import SourceError
from syncd.kinds import HOSTNAME_RULE, registry_hostname
from syncd.model import (
    AddressFamily,
    Backend,
    EndpointPort,
    PortSet,
    ServicePort,
    Snapshot,
    Target,
    port_set,
)
from syncd.observability import DROPPED_ENTRIES, SOURCE_REQUESTS
from syncd.sources.base import Dropped, checked_entry
from syncd.sources.types import HOSTNAME_FROM_PATTERN, SourceNeeds, SourceType
from syncd.syntax.backends import parse_endpoint_ports, parse_zone
from syncd.syntax.checks import (
    Scope,
    expect_mapping,
    flag,
    kind_name,
    nonempty_string,
    numbers,
    served_port,
)

_RDTYPE = {AddressFamily.IPV4: dns.rdatatype.A, AddressFamily.IPV6: dns.rdatatype.AAAA}


@dataclass(frozen=True)
class DnsSourceConfig:
    """Backends from DNS: an SRV name (targets and ports), or a name's A/AAAA plus ports."""

    srv: str | None = None  # _service._proto.name
    name: str | None = None  # A/AAAA mode
    ports: PortSet = ()  # A/AAAA mode: the port per Service port
    service_port: str = ""  # SRV mode: the Service port the SRV ports serve
    families: tuple[AddressFamily, ...] = (AddressFamily.IPV4, AddressFamily.IPV6)
    nameservers: tuple[tuple[str, int], ...] = ()  # empty: the system resolver
    timeout: float = 2.0  # seconds for one lookup, retries included
    tcp: bool = False  # UDP with TCP fallback on truncation, or TCP only
    min_ttl: float = 5.0  # refresh no more often than this ...
    max_ttl: float = 300.0  # ... and no less often than this, whatever the TTL says
    zone: str | None = None  # the zone of every backend this source lists
    hostname_from: str | None = None  # srv_target: each SRV target's first label names it

    @property
    def kind(self) -> str:
        return "dns"

    @property
    def operators_own(self) -> bool:
        return False

    @property
    def listed(self) -> tuple[Backend, ...]:
        return ()

    def describe(self) -> str:
        return f"dns SRV {self.srv}" if self.srv else f"dns A/AAAA {self.name}"


# --------------------------------------------------------------------------- its config


_Entry = tuple[str, tuple[EndpointPort, ...], bool, str | None]  # address, ports, ready, name

_DNS_SOURCE_KEYS = {
    "type",
    "srv",
    "name",
    "port",
    "ports",
    "service_port",
    "families",
    "nameservers",
    "timeout",
    "tcp",
    "min_ttl",
    "max_ttl",
    "zone",
    "hostname_from",
}


_DNS_NAME = re.compile(
    r"^(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$"
)


_FAMILIES = {"ipv4": AddressFamily.IPV4, "ipv6": AddressFamily.IPV6}


def parse(
    raw: dict, scope: Scope, ports: tuple[ServicePort, ...], base_dir: Path
) -> DnsSourceConfig | None:
    data = expect_mapping(raw, scope, _DNS_SOURCE_KEYS, {"type"})
    if data is None:
        return None
    before = len(scope.checker.problems)
    if ("srv" in data) == ("name" in data):
        scope.error("a dns source needs exactly one of 'srv' (an SRV name) or 'name' (A/AAAA)")
        return None
    mode = "srv" if "srv" in data else "name"
    qname = nonempty_string(data[mode], scope.at(mode))
    if qname and not _DNS_NAME.match(qname):
        scope.at(mode).error(f"{qname!r} is not a valid DNS name")
    values: dict[str, Any] = {mode: qname}
    names = [p.name for p in ports]
    if mode == "srv":
        for key in ("port", "ports"):
            if key in data:
                scope.at(key).error(
                    "SRV records carry the ports; use 'service_port' to say "
                    "which Service port they serve"
                )
        values["service_port"] = served_port(
            data, "service_port", names, scope, "the SRV ports serve"
        )
    else:
        if "service_port" in data:
            scope.at("service_port").error("only for 'srv'; with 'name' use 'port' or 'ports'")
        endpoint_ports = parse_endpoint_ports(data, scope, ports)
        if endpoint_ports is not None:
            values["ports"] = endpoint_ports
    if "families" in data:
        value = data["families"]
        if isinstance(value, list) and value and all(f in _FAMILIES for f in value):
            values["families"] = tuple(_FAMILIES[f] for f in dict.fromkeys(value))
        else:
            scope.at("families").error("must be a non-empty list of: ipv4, ipv6")
    if "nameservers" in data:
        values["nameservers"] = _nameservers(data["nameservers"], scope.at("nameservers"))
    if flag(data, "tcp", scope) is not None:
        values["tcp"] = data["tcp"]
    values.update(
        numbers(data, scope, {"timeout": (0.1, 60), "min_ttl": (0, 86400), "max_ttl": (1, 86400)})
    )
    if values.get("min_ttl", 5.0) > values.get("max_ttl", 300.0):
        scope.error("min_ttl must not be larger than max_ttl")
    if "zone" in data:
        values["zone"] = parse_zone(data, "zone", scope)
    if "hostname_from" in data:
        values["hostname_from"] = _hostname_from(data["hostname_from"], mode, scope)
    if len(scope.checker.problems) > before:
        return None
    return DnsSourceConfig(**values)


def _hostname_from(value: Any, mode: str, scope: Scope) -> str | None:
    if value != "srv_target":
        scope.at("hostname_from").error(f"{value!r} is not: srv_target")
    elif mode != "srv":
        scope.at("hostname_from").error("only for 'srv': an A/AAAA answer has no name per address")
    else:
        return "srv_target"
    return None


def _nameservers(value: Any, scope: Scope) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list) or not value:
        scope.error("must be a non-empty list of 'address' or 'address:port'")
        return ()
    result = []
    for index, item in enumerate(value):
        where = scope.at(index)
        if not isinstance(item, str):
            where.error(f"must be 'address' or 'address:port', got {kind_name(item)}")
            continue
        host, port = item, 53
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest:
                port = int(rest[1:]) if rest[1:].isascii() and rest[1:].isdigit() else -1
        elif item.count(":") == 1:
            host, _, text = item.partition(":")
            port = int(text) if text.isascii() and text.isdigit() else -1
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            where.error(f"{item!r}: a nameserver is an IP address, optionally with :port")
            continue
        if not 1 <= port <= 65535:
            where.error(f"{item!r}: port out of range 1-65535")
            continue
        result.append((host, port))
    return tuple(result)


# --------------------------------------------------------------------------- asking DNS


@dataclass(frozen=True)
class Resolution:
    """One complete lookup: the backends, how long the answer is valid, what was dropped."""

    backends: frozenset[Backend]
    ttl: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Lookup:
    """Addresses of one name and type, with the TTL they are valid for."""

    addresses: tuple[str, ...]
    ttl: float
    nxdomain: bool = False


def _negative_ttl(response: dns.message.Message | None, default: float) -> float:
    """RFC 2308: a negative answer is valid for min(SOA TTL, SOA minimum)."""
    for rrset in getattr(response, "authority", None) or ():
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return default


def refresh_after(ttl: float, config: DnsSourceConfig) -> float:
    """Seconds until the next lookup: the answer's TTL, clamped to [min_ttl, max_ttl]."""
    return min(max(ttl, config.min_ttl), config.max_ttl)


class DnsSource:
    def __init__(self, config: DnsSourceConfig, target: Target):
        self._config = config
        self._target = target
        self._resolver: dns.resolver.Resolver | None = None

    def describe(self) -> str:
        return self._config.describe()

    # -- lookups

    def _get_resolver(self) -> dns.resolver.Resolver:
        if self._resolver is None:
            if self._config.nameservers:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [host for host, _port in self._config.nameservers]
                resolver.nameserver_ports = dict(self._config.nameservers)
            else:
                try:
                    resolver = dns.resolver.Resolver()
                except dns.resolver.NoResolverConfiguration as exc:
                    raise SourceError(f"{self.describe()}: no system resolver: {exc}") from None
            resolver.cache = None  # every lookup asks, so TTLs are seen as they are
            self._resolver = resolver
        return self._resolver

    def _lookup(self, name: str, rdtype) -> tuple[dns.resolver.Answer | None, float]:
        """One query: (answer, 0) or, for NXDOMAIN, (None, negative TTL).

        Errors that mean "cannot say" raise SourceError.
        """
        what = f"{name} {dns.rdatatype.to_text(rdtype)}"
        try:
            answer = self._get_resolver().resolve(
                name,
                rdtype,
                tcp=self._config.tcp,
                lifetime=self._config.timeout,
                raise_on_no_answer=False,
                search=False,
            )
        except dns.resolver.NXDOMAIN as exc:
            SOURCE_REQUESTS.labels("dns", "nxdomain").inc()
            response = next(iter(exc.responses().values()), None)
            return None, _negative_ttl(response, self._config.min_ttl)
        except dns.resolver.NoNameservers as exc:  # SERVFAIL, REFUSED, ... from every server
            SOURCE_REQUESTS.labels("dns", "error").inc()
            raise SourceError(f"{self.describe()}: {what}: {_first_line(exc)}") from None
        except dns.exception.Timeout:
            SOURCE_REQUESTS.labels("dns", "timeout").inc()
            raise SourceError(
                f"{self.describe()}: {what}: no answer within {self._config.timeout:g}s"
            ) from None
        except dns.exception.DNSException as exc:
            SOURCE_REQUESTS.labels("dns", "error").inc()
            raise SourceError(f"{self.describe()}: {what}: {_first_line(exc)}") from None
        SOURCE_REQUESTS.labels("dns", "ok").inc()
        return answer, 0.0

    def _addresses(self, name: str, rdtype, additional: dict) -> _Lookup:
        """Addresses of `name` from the additional section if present, else a query."""
        key = (dns.name.from_text(name), rdtype)
        if key in additional:
            rrset = additional[key]
            return _Lookup(tuple(r.address for r in rrset), float(rrset.ttl))
        answer, negative_ttl = self._lookup(name, rdtype)
        if answer is None:
            return _Lookup((), negative_ttl, nxdomain=True)
        return _answer_lookup(answer, self._config.min_ttl)

    def resolve(self) -> Resolution:
        if self._config.srv:
            return self._resolve_srv(self._config.srv)
        return self._resolve_name(self._config.name or "")

    def _resolve_name(self, name: str) -> Resolution:
        entries: list[_Entry] = []
        ttls: list[float] = []
        missing = True
        for family in self._config.families:
            found = self._addresses(name, _RDTYPE[family], {})
            ttls.append(found.ttl)
            missing &= found.nxdomain
            entries += [(address, self._config.ports, True, None) for address in found.addresses]
        resolution = self._resolution(entries, min(ttls))
        return _said_missing(resolution, name) if missing else resolution

    def _resolve_srv(self, name: str) -> Resolution:
        answer, negative_ttl = self._lookup(name, dns.rdatatype.SRV)
        if answer is None:
            return _said_missing(self._resolution([], negative_ttl), name)
        records = sorted(answer.rrset or (), key=lambda r: (r.priority, str(r.target), r.port))
        ttls = [_answer_lookup(answer, self._config.min_ttl).ttl]
        additional = {(rrset.name, rrset.rdtype): rrset for rrset in answer.response.additional}
        service_port = next(p for p in self._target.ports if p.name == self._config.service_port)
        warnings: list[str] = []
        by_priority: dict[int, list[tuple[str, tuple[EndpointPort, ...], str | None]]] = {}
        for record in records:
            target = record.target.to_text()
            if target == ".":
                continue  # RFC 2782: the service is decidedly not available here
            hostname = self._hostname(record.target, warnings)
            addresses: list[str] = []
            unresolved = True
            for family in self._config.families:
                found = self._addresses(target, _RDTYPE[family], additional)
                ttls.append(found.ttl)
                addresses += found.addresses
                unresolved &= found.nxdomain
            if unresolved:
                warnings.append(f"SRV target {target} does not resolve; skipped")
                DROPPED_ENTRIES.labels(self._target.key, "unresolved").inc()
                continue
            ports = port_set(EndpointPort(service_port.name, record.port, service_port.protocol))
            by_priority.setdefault(record.priority, []).extend(
                (a, ports, hostname) for a in addresses
            )
        entries: list[_Entry] = []
        active: int | None = None
        for priority in sorted(by_priority):
            if active is None and any(_usable(a, p) for a, p, _ in by_priority[priority]):
                active = priority
            entries += [(a, p, priority == active, h) for a, p, h in by_priority[priority]]
        resolution = self._resolution(entries, min(ttls))
        return Resolution(
            resolution.backends, resolution.ttl, tuple(warnings) + resolution.warnings
        )

    def _hostname(self, target: dns.name.Name, warnings: list[str]) -> str | None:
        """An SRV target's first label as its endpoint's name, when the source asks."""
        if self._config.hostname_from is None or not target.labels:
            return None
        label = target.labels[0].decode("ascii", "replace")
        name = registry_hostname(label)
        if name is None:
            warnings.append(
                f"SRV target {target.to_text()}: {label!r} is not a hostname "
                f"({HOSTNAME_RULE}); kept without a name"
            )
        return name

    def _resolution(self, entries: Iterable[_Entry], ttl: float) -> Resolution:
        """Validate untrusted records into backends; merge duplicates (ready if any copy is,
        named if any copy is)."""
        warnings: list[str] = []
        merged: dict[tuple[str, tuple[EndpointPort, ...]], tuple[bool, str | None]] = {}
        for address, ports, ready, hostname in entries:
            checked = checked_entry("", address, (p.port for p in ports))
            if isinstance(checked, Dropped):
                warnings.append(checked.warning)
                DROPPED_ENTRIES.labels(self._target.key, checked.reason).inc()
                continue
            key = (checked, ports)
            was_ready, was_named = merged.get(key, (False, None))
            merged[key] = (was_ready or ready, was_named or hostname)
        backends = frozenset(
            Backend(address, ports, ready, self._config.zone, hostname)
            for (address, ports), (ready, hostname) in merged.items()
        )
        return Resolution(backends, ttl, tuple(warnings))

    # -- the Source protocol

    def _snapshot(self, resolution: Resolution) -> Snapshot:
        return Snapshot(resolution.backends, self.describe(), resolution.warnings)

    def fetch(self) -> Snapshot:
        return self._snapshot(self.resolve())

    def poll(self) -> tuple[Snapshot, float | None]:
        """Look up now; ask again when the answer's TTL runs out (clamped)."""
        resolution = self.resolve()
        return self._snapshot(resolution), refresh_after(resolution.ttl, self._config)


def _answer_lookup(answer: dns.resolver.Answer, default_ttl: float) -> _Lookup:
    """Addresses and remaining validity of an answer (the CNAME chain's shortest TTL)."""
    if answer.rrset is None:  # NODATA: the name exists, without this type
        return _Lookup((), _negative_ttl(answer.response, default_ttl))
    remaining = max(0.0, answer.expiration - time.time())
    addresses = tuple(r.address for r in answer.rrset if hasattr(r, "address"))
    return _Lookup(addresses, remaining)


def _said_missing(resolution: Resolution, name: str) -> Resolution:
    """An answer of nothing because the name does not exist: real, and worth a warning
    (most often a typo: rgw.ceph.exmaple.com)."""
    warning = f"{name} does not exist (NXDOMAIN): no backends"
    return Resolution(resolution.backends, resolution.ttl, (warning, *resolution.warnings))


def _usable(address: str, ports: Iterable[EndpointPort]) -> bool:
    """Would this record become a backend? (decides which SRV priority is active)"""
    return isinstance(checked_entry("", address, (p.port for p in ports)), str)


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def _build(config: DnsSourceConfig, target: Target, needs: SourceNeeds) -> DnsSource:
    return DnsSource(config, target)


SOURCE_TYPES = (
    SourceType(
        name="dns",
        example={"type": "dns", "name": "rgw.example.com", "port": 8080},
        parse=parse,
        build=_build,
        crd={
            "srv": {"type": "string", "description": "dns: an SRV name"},
            "name": {"type": "string", "description": "dns: an A/AAAA name"},
            "port": {
                "x-kubernetes-int-or-string": True,
                "description": "dns with name: the backend port",
            },
            "ports": {
                "type": "object",
                "description": "dns with name: Service port name -> backend port",
                "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 65535},
            },
            "service_port": {
                "type": "string",
                "description": "dns with srv: the Service port the SRV ports serve",
            },
            "families": {
                "type": "array",
                "items": {"type": "string", "enum": list(_FAMILIES)},
                "description": "dns with name: which records (A: ipv4, AAAA: ipv6)",
            },
            "nameservers": {
                "type": "array",
                "items": {"type": "string"},
                "description": "dns: address or address:port (default the resolver's)",
            },
            "timeout": {"type": "number", "minimum": 0.1, "maximum": 60},
            "tcp": {"type": "boolean"},
            "min_ttl": {"type": "number", "minimum": 0, "maximum": 86400},
            "max_ttl": {"type": "number", "minimum": 1, "maximum": 86400},
            "zone": {
                "type": "string",
                "description": "The zone of every backend this source lists.",
            },
            "hostname_from": {
                "type": "string",
                "pattern": HOSTNAME_FROM_PATTERN,
                "description": "dns with srv: srv_target (each target's first label)",
            },
        },
        crd_rules=(
            {
                "rule": "self.type != 'dns' || (has(self.srv) != has(self.name))",
                "message": "a dns source needs exactly one of 'srv' or 'name'",
            },
            {
                "rule": "self.type != 'dns' || !has(self.hostname_from) || "
                "(self.hostname_from == 'srv_target' && has(self.srv))",
                "message": "a dns source takes hostname_from: srv_target, with srv only",
            },
            {
                "rule": "(has(self.min_ttl) ? self.min_ttl : 5.0) <= "
                "(has(self.max_ttl) ? self.max_ttl : 300.0)",
                "message": "min_ttl must not be larger than max_ttl",
            },
        ),
    ),
)
