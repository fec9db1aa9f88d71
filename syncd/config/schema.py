"""The config's sections: targets, ports, health checks, failover, guards, the address
policy and the Consul connection. A source's own section is its type's (syncd.sources):
the target hands each entry of `sources` to the row its `type` names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from syncd.addresses import address_filter, parse_http_address
from syncd.model import (
    CONSUL_PORT,
    DEFAULT_DENIED_CIDRS,
    AddressPolicy,
    ConsulConnection,
    FailoverConfig,
    GuardConfig,
    HealthCheckConfig,
    Output,
    ServicePort,
    SourceConfig,
    Target,
)
from syncd.sources.types import source_types
from syncd.syntax.checks import (
    DNS1035_LABEL,
    DNS1035_WHAT,
    DNS1123_LABEL,
    DNS1123_WHAT,
    Scope,
    beside,
    cidrs,
    expect_mapping,
    flag,
    is_int,
    kind_name,
    kube_name,
    nonempty_string,
    numbers,
    port_number,
)
from syncd.syntax.files import ca_bundle_problem
from syncd.syntax.yamldoc import YamlPath

SUPPORTED_VERSIONS = (1,)


PROTOCOLS = ("TCP", "UDP", "SCTP")
# What a Service may ask of endpoints outside the cluster: the same zone as the client.
TRAFFIC_DISTRIBUTIONS = ("PreferClose", "PreferSameZone")


MAX_SLICE_CAPACITY = 1000  # EndpointSlice API validation limit


DEFAULT_SLICE_CAPACITY = 100  # what the control plane's own controller packs to


_TARGET_KEYS = {
    "failover",
    "guards",
    "health_check",
    "allowed_cidrs",
    "namespace",
    "service",
    "ports",
    "sources",
    "output",
    "manage_service",
    "max_endpoints_per_slice",
    "drain_floor",
    "traffic_distribution",
    "headless",
}


def parse_target(raw: Any, scope: Scope, base_dir: Path, policy: AddressPolicy) -> Target | None:
    if isinstance(raw, dict):
        scope = Scope(scope.checker, scope.path, scope.path, _target_label(raw, scope.path))
    before = len(scope.checker.problems)
    data = expect_mapping(raw, scope, _TARGET_KEYS, {"namespace", "service", "ports", "sources"})
    if data is None:
        return None
    namespace = service = None
    if "namespace" in data:
        namespace = kube_name(
            data["namespace"], scope.at("namespace"), DNS1123_LABEL, "namespace " + DNS1123_WHAT
        )
    if "service" in data:
        service = kube_name(data["service"], scope.at("service"), DNS1035_LABEL, DNS1035_WHAT)

    parsed_ports: tuple[ServicePort, ...] = ()
    ports = None
    if "ports" in data:
        parsed_ports, ports_ok = _service_ports(data["ports"], scope.at("ports"))
        ports = parsed_ports if ports_ok else None

    output = _output(data, scope)

    manage_service = flag(data, "manage_service", scope)
    manage_service = True if manage_service is None else manage_service

    capacity = _slice_capacity(data, scope)

    # the sources are checked even when the ports are not valid (with the names given), so
    # one pass says every problem
    sources = _sources(data, scope, parsed_ports or _ports_as_given(data), base_dir)

    extras = _target_extras(data, scope, ports, base_dir, manage_service)
    for index, source in sources:
        if source.listed:
            _check_listed_policy(
                source,
                data["sources"][index],
                scope.at("sources", index),
                policy,
                extras.get("allowed_cidrs", ()),
            )

    if len(scope.checker.problems) > before or namespace is None or service is None:
        return None
    assert ports is not None
    return Target(
        **extras,
        namespace=namespace,
        service=service,
        ports=ports,
        sources=tuple(source for _index, source in sources),
        output=output,
        manage_service=manage_service,
        max_endpoints_per_slice=capacity,
    )


def _output(data: dict, scope: Scope) -> Output:
    if "output" not in data:
        return Output.ENDPOINTSLICES
    try:
        return Output.parse(data["output"])
    except ValueError as exc:
        scope.at("output").error(str(exc))
        return Output.ENDPOINTSLICES


def _slice_capacity(data: dict, scope: Scope) -> int:
    if "max_endpoints_per_slice" not in data:
        return DEFAULT_SLICE_CAPACITY
    value = data["max_endpoints_per_slice"]
    if is_int(value) and 1 <= value <= MAX_SLICE_CAPACITY:
        return int(value)
    scope.at("max_endpoints_per_slice").error(
        f"must be a whole number from 1 to {MAX_SLICE_CAPACITY}, got {value!r}"
    )
    return DEFAULT_SLICE_CAPACITY


def _sources(
    data: dict, scope: Scope, ports: tuple[ServicePort, ...] | None, base_dir: Path
) -> list[tuple[int, SourceConfig]]:
    """The target's valid sources (its tiers, in order), with their place in the list."""
    sources: list[tuple[int, SourceConfig]] = []
    raw_sources = data.get("sources")
    if "sources" not in data:
        return sources
    if not isinstance(raw_sources, list):
        scope.at("sources").error(f"must be a list of sources, got {kind_name(raw_sources)}")
    elif not raw_sources:
        scope.at("sources").error("at least one source is required")
    elif ports is not None:
        for index, raw in enumerate(raw_sources):
            source = _source(raw, scope.at("sources", index), ports, base_dir)
            if source is not None:
                sources.append((index, source))
    return sources


def _traffic_distribution(data: dict, scope: Scope, manage_service: bool) -> dict[str, Any]:
    value = data["traffic_distribution"]
    if value not in TRAFFIC_DISTRIBUTIONS:
        scope.at("traffic_distribution").error(
            f"{value!r} is not one of: {', '.join(TRAFFIC_DISTRIBUTIONS)}"
        )
    elif not manage_service:
        scope.at("traffic_distribution").error(
            "syncd does not change a Service it does not manage; set "
            "spec.trafficDistribution on the Service itself (syncd follows it)"
        )
    else:
        return {"traffic_distribution": value}
    return {}


def raw_target_key(raw: Any) -> tuple | None:
    if isinstance(raw, dict):
        key = (raw.get("namespace"), raw.get("service"))
        if all(isinstance(part, str) for part in key):
            return key
    return None


def _target_label(data: dict, path: YamlPath) -> str:
    """How errors name a target: by namespace/service when readable, else by position."""
    namespace, service = data.get("namespace"), data.get("service")
    if isinstance(namespace, str) and isinstance(service, str):
        return f"target {namespace}/{service}"
    return f"target #{path[-1]}"


def _target_extras(
    data: dict,
    scope: Scope,
    ports: tuple[ServicePort, ...] | None,
    base_dir: Path,
    manage_service: bool,
) -> dict[str, Any]:
    """The target's optional sections: failover, guards, probes, CIDRs, floor, hints."""
    extras: dict[str, Any] = {}
    if "failover" in data:
        extras["failover"] = _failover(data["failover"], scope.at("failover"))
    if "guards" in data:
        extras["guards"] = _guards(data["guards"], scope.at("guards"))
    if "health_check" in data and ports is not None:
        extras["health_check"] = _health_check(
            data["health_check"], scope.at("health_check"), ports, base_dir
        )
    if "allowed_cidrs" in data:
        extras["allowed_cidrs"] = cidrs(data["allowed_cidrs"], scope.at("allowed_cidrs"))
    extras.update(numbers(data, scope, {"drain_floor": (0, 100_000, True)}))
    if "traffic_distribution" in data:
        extras.update(_traffic_distribution(data, scope, manage_service))
    if "headless" in data:
        extras.update(_headless(data, scope, manage_service))
    return extras


def _headless(data: dict, scope: Scope, manage_service: bool) -> dict[str, Any]:
    headless = flag(data, "headless", scope)
    if headless and not manage_service:
        scope.at("headless").error(
            "syncd does not change a Service it does not manage; create that Service with "
            "clusterIP: None yourself (its endpoints' names work either way)"
        )
        return {}
    return {} if headless is None else {"headless": headless}


def _ports_as_given(data: dict) -> tuple[ServicePort, ...] | None:
    """The Service ports' names as written (for checking the sources only), or None."""
    raw = data.get("ports")
    if not isinstance(raw, list) or not raw:
        return None
    names = [str(p.get("name", "")) if isinstance(p, dict) else "" for p in raw]
    return tuple(ServicePort(name, 1) for name in dict.fromkeys(names))


def _service_ports(raw: Any, scope: Scope) -> tuple[tuple[ServicePort, ...], bool]:
    """The ports that are valid, and whether all are."""
    if not isinstance(raw, list) or not raw:
        scope.error("must be a non-empty list of ports (name, port, protocol)")
        return (), False
    ports: list[ServicePort] = []
    ok = True
    for index, item in enumerate(raw):
        where = scope.at(index)
        data = expect_mapping(item, where, {"name", "port", "protocol"}, {"port"})
        if data is None:
            ok = False
            continue
        name: str | None = ""
        if "name" in data:
            name = kube_name(data["name"], where.at("name"), DNS1123_LABEL, "port " + DNS1123_WHAT)
            ok &= name is not None
        elif len(raw) > 1:
            where.error("a name is required when the Service has more than one port")
            ok = False
        number = port_number(data.get("port"), where.at("port")) if "port" in data else None
        protocol = data.get("protocol", "TCP")
        if protocol not in PROTOCOLS:
            where.at("protocol").error(f"{protocol!r} is not one of: {', '.join(PROTOCOLS)}")
            ok = False
        if name is None or number is None or not ok:
            ok = False
            continue
        ports.append(ServicePort(name=name, port=number, protocol=protocol))
    names = [p.name for p in ports]
    for index, port in enumerate(ports):
        if names.count(port.name) > 1 and names.index(port.name) != index:
            scope.at(index).error(f"duplicate port name {port.name!r}")
            ok = False
        pairs = [(p.port, p.protocol) for p in ports]
        if (
            pairs.count((port.port, port.protocol)) > 1
            and pairs.index((port.port, port.protocol)) != index
        ):
            scope.at(index).error(f"duplicate port {port.port}/{port.protocol}")
            ok = False
    return tuple(ports), ok


def _source(
    raw: Any, scope: Scope, ports: tuple[ServicePort, ...], base_dir: Path
) -> SourceConfig | None:
    """One source, parsed by its type's own row (syncd.sources.types)."""
    if not isinstance(raw, dict):
        scope.error(f"must be a mapping with a 'type', got {kind_name(raw)}")
        return None
    types = source_types()
    names = ", ".join(types)
    if "type" not in raw:
        scope.error(f"missing required key 'type' (one of: {names})")
        return None
    row = types.get(raw["type"]) if isinstance(raw["type"], str) else None
    if row is None:
        scope.at("type").error(f"unknown source type {raw['type']!r} (one of: {names})")
        return None
    return row.parse(raw, scope, ports, base_dir)


def _failover(raw: Any, scope: Scope) -> FailoverConfig:
    data = expect_mapping(raw, scope, {"min_ready", "failback_after"}, set()) or {}
    return FailoverConfig(
        **numbers(data, scope, {"min_ready": (1, 100000, True), "failback_after": (0, 86400)})
    )


def _guards(raw: Any, scope: Scope) -> GuardConfig:
    data = expect_mapping(raw, scope, {"max_removal_fraction", "confirm_after"}, set()) or {}
    return GuardConfig(
        **numbers(data, scope, {"max_removal_fraction": (0, 1), "confirm_after": (0, 3600)})
    )


_HEALTH_KEYS = {
    "type",
    "port",
    "path",
    "expected_status",
    "host",
    "tls_server_name",
    "ca_file",
    "insecure_skip_verify",
    "interval",
    "timeout",
    "rise",
    "fall",
    "concurrency",
    "panic_threshold",
}


def _health_check(raw: Any, scope: Scope, ports, base_dir: Path) -> HealthCheckConfig | None:
    data = expect_mapping(raw, scope, _HEALTH_KEYS, {"type"})
    if data is None:
        return None
    values: dict[str, Any] = {}
    if data.get("type") not in ("tcp", "http", "https"):
        scope.at("type").error(f"{data.get('type')!r} is not one of: tcp, http, https")
    else:
        values["type"] = data["type"]
    if "port" in data:
        names = [p.name for p in ports]
        if data["port"] in names:
            values["port"] = data["port"]
        else:
            scope.at("port").error(f"{data['port']!r} is not a port of the Service")
    values.update(_http_options(data, scope, base_dir))
    values.update(
        numbers(
            data,
            scope,
            {
                "interval": (0.1, 3600),
                "timeout": (0.05, 600),
                "rise": (1, 100, True),
                "fall": (1, 100, True),
                "concurrency": (1, 1000, True),
                "panic_threshold": (0, 1),
            },
        )
    )
    if values.get("timeout", 2.0) > values.get("interval", 5.0):
        scope.error("timeout must not be longer than interval")
    return HealthCheckConfig(**values)


def _http_options(data: dict, scope: Scope, base_dir: Path) -> dict[str, Any]:
    """What only an http or https check takes: path, expected status, host, TLS."""
    values: dict[str, Any] = {}
    if data.get("type") == "tcp":
        for key in _HTTP_ONLY_KEYS:
            if key in data:
                scope.at(key).error("only for http and https checks")
    if "path" in data:
        path = nonempty_string(data["path"], scope.at("path"))
        if path and not path.startswith("/"):
            scope.at("path").error("must start with '/'")
        values["path"] = path
    if "expected_status" in data:
        values["expected_status"] = _status_ranges(
            data["expected_status"], scope.at("expected_status")
        )
    for key in ("host", "tls_server_name"):
        if key in data:
            values[key] = nonempty_string(data[key], scope.at(key))
    if "ca_file" in data:
        name = nonempty_string(data["ca_file"], scope.at("ca_file"))
        if name:
            values["ca_file"] = beside(base_dir, name)
            problem = ca_bundle_problem(values["ca_file"])
            if problem is not None:
                scope.at("ca_file").error(problem)
    if flag(data, "insecure_skip_verify", scope) is not None:
        values["insecure_skip_verify"] = data["insecure_skip_verify"]
    return values


_HTTP_ONLY_KEYS = (
    "path",
    "expected_status",
    "host",
    "tls_server_name",
    "ca_file",
    "insecure_skip_verify",
)


def _status_ranges(raw: Any, scope: Scope) -> tuple[tuple[int, int], ...]:
    """[200, 204, "300-399"] -> ((200, 200), (204, 204), (300, 399))."""
    if not isinstance(raw, list) or not raw:
        scope.error("must be a list of status codes or ranges like '200-399'")
        return ((200, 399),)
    ranges = []
    for index, item in enumerate(raw):
        text = str(item)
        low, _, high = text.partition("-")
        if (
            low.isascii()
            and high.isascii()
            and low.isdigit()
            and (high.isdigit() or not high)
            and not isinstance(item, bool)
        ):
            pair = (int(low), int(high or low))
            if 100 <= pair[0] <= pair[1] <= 599:
                ranges.append(pair)
                continue
        scope.at(index).error(f"{item!r} is not a status code (100-599) or range like 200-399")
    return tuple(ranges) or ((200, 399),)


_ADDRESS_POLICY_KEYS = {
    "denied_cidrs",
    "service_cidr",
    "cluster_cidrs",
    "cluster_network_namespaces",
    "discover_cluster_networks",
}


def parse_address_policy(raw: Any, scope: Scope) -> AddressPolicy | None:
    data = expect_mapping(raw, scope, _ADDRESS_POLICY_KEYS, set())
    if data is None:
        return None
    denied = DEFAULT_DENIED_CIDRS
    if "denied_cidrs" in data:
        denied = (
            cidrs(data["denied_cidrs"], scope.at("denied_cidrs")) if data["denied_cidrs"] else ()
        )
    values: dict[str, Any] = {}
    if "service_cidr" in data:
        values["service_cidrs"] = cidrs(data["service_cidr"], scope.at("service_cidr"))
        denied = denied + values["service_cidrs"]
    if "cluster_cidrs" in data:
        values["cluster_cidrs"] = cidrs(data["cluster_cidrs"], scope.at("cluster_cidrs"))
    if "cluster_network_namespaces" in data:
        values["cluster_network_namespaces"] = _namespace_names(
            data["cluster_network_namespaces"], scope.at("cluster_network_namespaces")
        )
    if flag(data, "discover_cluster_networks", scope) is not None:
        values["discover_cluster_networks"] = data["discover_cluster_networks"]
    return AddressPolicy(denied=denied, **values)


def _namespace_names(raw: Any, scope: Scope) -> tuple[str, ...]:
    """A list of namespace names (DNS-1123 labels)."""
    if not isinstance(raw, list):
        scope.error(f"must be a list of namespace names, got {kind_name(raw)}")
        return ()
    names = []
    for index, item in enumerate(raw):
        if not isinstance(item, str) or not DNS1123_LABEL.match(item) or len(item) > 63:
            scope.at(index).error(f"{item!r} is not a namespace {DNS1123_WHAT}")
            continue
        names.append(item)
    return tuple(dict.fromkeys(names))


def _check_listed_policy(
    source: SourceConfig, raw: Any, scope: Scope, policy: AddressPolicy, allowed: tuple
) -> None:
    """A backend written in the config that the address policy forbids is a typo to fix,
    not to apply (registries' entries are dropped and reported as they come)."""
    in_file = isinstance(raw, dict) and "backends" not in raw
    checks = address_filter(policy.denied, tuple(allowed))
    for index, backend in enumerate(source.listed):
        reason = checks.refusal(backend.address)
        if reason:
            where = scope.at("file") if in_file else scope.at("backends", index)
            where.error(f"{backend.address}: {reason}")


_CONSUL_CONNECTION_KEYS = {
    "address",
    "token_file",
    "ca_file",
    "cert_file",
    "key_file",
    "tls_server_name",
    "timeout",
    "wait",
    "min_query_interval",
    "max_connections",
    "sweep_rate",
    "http2",
}


def parse_consul_connection(raw: Any, scope: Scope, base_dir: Path) -> ConsulConnection | None:
    data = expect_mapping(raw, scope, _CONSUL_CONNECTION_KEYS, set())
    if data is None:
        return None
    before = len(scope.checker.problems)
    values: dict[str, Any] = {}
    if "address" in data:
        address = nonempty_string(data["address"], scope.at("address"))
        if address:
            try:
                parse_http_address(address, CONSUL_PORT)
            except ValueError as exc:
                scope.at("address").error(str(exc))
        values["address"] = address
    for key in ("token_file", "ca_file", "cert_file", "key_file"):
        if key in data:
            name = nonempty_string(data[key], scope.at(key))
            if name:
                values[key] = beside(base_dir, name)
    if "tls_server_name" in data:
        values["tls_server_name"] = nonempty_string(
            data["tls_server_name"], scope.at("tls_server_name")
        )
    if ("cert_file" in data) != ("key_file" in data):
        scope.error("cert_file and key_file go together")
    if flag(data, "http2", scope) is not None:
        values["http2"] = data["http2"]
    values.update(
        numbers(
            data,
            scope,
            {
                "timeout": (0.1, 600),
                "wait": (1, 600),
                "min_query_interval": (0, 60),
                "max_connections": (5, 10000, True),
                "sweep_rate": (0.1, 100000),
            },
        )
    )
    if len(scope.checker.problems) > before:
        return None
    return ConsulConnection(**values)
