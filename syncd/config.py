"""Load and validate syncd's YAML configuration into typed, frozen objects.

Every problem is collected (not just the first) and reported as one line that names the
file, the YAML line, the target and the field, e.g.::

    config/ceph-rgw.yaml:21: target storage/rgw: sources[0].backends[3]: '10.0.0.300' is not ...

Nothing outside this module ever sees unvalidated data: loading either returns a `Config`
or raises `ConfigError`, whatever the input.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from syncd.addresses import AddressRejected, canonical_endpoint_ip
from syncd.errors import ConfigError
from syncd.model import (
    DEFAULT_DENIED_CIDRS,
    AddressFamily,
    AddressPolicy,
    Backend,
    Config,
    ConsulAddress,
    ConsulConnection,
    ConsulConsistency,
    ConsulQuerySourceConfig,
    ConsulSourceConfig,
    DnsSourceConfig,
    EndpointPort,
    FailoverConfig,
    GuardConfig,
    HealthCheckConfig,
    Output,
    ServicePort,
    SourceConfig,
    StaticSourceConfig,
    Target,
)

SUPPORTED_VERSIONS = (1,)
PROTOCOLS = ("TCP", "UDP", "SCTP")
MAX_SLICE_CAPACITY = 1000  # EndpointSlice API validation limit
DEFAULT_SLICE_CAPACITY = 100  # what the control plane's own controller packs to

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_NODES = 200_000  # refuse alias bombs instead of expanding them
_MAX_DEPTH = 64

Path_ = tuple[str | int, ...]


# --------------------------------------------------------------------------- YAML with lines


@dataclass
class _Document:
    """Plain Python data plus the 1-based YAML line of every node, keyed by its path."""

    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Path_) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def _parse_yaml(text: str, file: str) -> _Document:
    """Parse one YAML document, keeping line numbers; any YAML problem becomes ConfigError."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader rejects control characters right here
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{file}: the file is empty")
        doc = _Document(data=None)
        counter = [0]
        doc.data = _construct(loader, node, (), doc, counter, file)
        return doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}" if mark else file
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: YAML error: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{file}: the YAML nests too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _construct(loader, node, path: Path_, doc: _Document, counter: list[int], file: str) -> Any:
    counter[0] += 1
    if counter[0] > _MAX_NODES or len(path) > _MAX_DEPTH:
        raise ConfigError(f"{file}: the YAML is too large or nests too deeply (aliases?)")
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolve `<<:` merge keys
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct_scalar(loader, key_node, file)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise ConfigError(
                    f"{file}:{key_node.start_mark.line + 1}: mapping keys must be plain words"
                )
            if key in result:
                raise ConfigError(f"{file}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
            result[key] = _construct(loader, value_node, (*path, str(key)), doc, counter, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(loader, item, (*path, index), doc, counter, file)
            for index, item in enumerate(node.value)
        ]
    return _construct_scalar(loader, node, file)


def _construct_scalar(loader, node, file: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{file}:{node.start_mark.line + 1}: mapping keys must be plain words")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise
    except Exception as exc:  # e.g. an impossible !!timestamp raises ValueError
        raise ConfigError(f"{file}:{node.start_mark.line + 1}: invalid value: {exc}") from None


# --------------------------------------------------------------------------- validation


@dataclass
class _Checker:
    """Collects problems with enough context to print file:line: target: field: message."""

    file: str
    doc: _Document
    problems: list[str] = field(default_factory=list)

    def error(self, path: Path_, message: str, scope: Path_ = (), label: str | None = None):
        line = self.doc.line(path)
        where = f"{self.file}:{line}" if line else self.file
        relative = path[len(scope) :] if scope and path[: len(scope)] == scope else path
        field_name = _format_path(relative)
        parts = [where]
        if label:
            parts.append(label)
        if field_name:
            parts.append(field_name)
        self.problems.append(": ".join([*parts, message]))


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def _format_path(path: Path_) -> str:
    """targets[0].sources[1].backends[2]; odd keys quoted so a message stays on one line."""
    text = ""
    for part in path:
        if isinstance(part, int) or not _PLAIN_KEY.match(part):
            text += f"[{part!r}]" if not isinstance(part, int) else f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@dataclass
class _Scope:
    """Where we are inside the document, for error messages."""

    checker: _Checker
    path: Path_
    target_path: Path_ = ()
    label: str | None = None

    def at(self, *parts: str | int) -> _Scope:
        return _Scope(self.checker, (*self.path, *parts), self.target_path, self.label)

    def error(self, message: str) -> None:
        self.checker.error(self.path, message, self.target_path, self.label)


def _mapping(value: Any, scope: _Scope, allowed: set[str], required: set[str]) -> dict | None:
    if not isinstance(value, dict):
        scope.error(f"must be a mapping, got {_kind(value)}")
        return None
    for key in value:
        if key not in allowed:
            hint = _closest(str(key), allowed)
            scope.at(str(key)).error(
                f"unknown key {key!r}" + (f" (did you mean {hint!r}?)" if hint else "")
            )
    for key in sorted(required - set(value)):
        scope.error(f"missing required key {key!r}")
    return value


def _closest(word: str, choices: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _port_number(value: Any, scope: _Scope) -> int | None:
    if not _is_int(value):
        scope.error(f"port must be a whole number from 1 to 65535, got {value!r}")
        return None
    if not 1 <= value <= 65535:
        scope.error(f"port {value} is out of range 1-65535")
        return None
    return value


def _flag(data: dict, key: str, scope: _Scope) -> bool | None:
    """data[key] if it is true or false; None if absent or (reported) not a boolean."""
    if key not in data:
        return None
    if not isinstance(data[key], bool):
        scope.at(key).error("must be true or false")
        return None
    return data[key]


def _beside(base_dir: Path, name: str) -> Path:
    """A path from the config, relative to the config file's directory."""
    return Path(name) if Path(name).is_absolute() else base_dir / name


def _string(value: Any, scope: _Scope) -> str | None:
    if not isinstance(value, str):
        scope.error(f"must be a string, got {_kind(value)}")
        return None
    return value


def _kube_name(value: Any, scope: _Scope, pattern: re.Pattern, what: str) -> str | None:
    text = _string(value, scope)
    if text is None:
        return None
    if len(text) > 63 or not pattern.match(text):
        scope.error(f"{text!r} is not a valid {what}")
        return None
    return text


_DNS1123_WHAT = "name (lowercase letters, digits and '-', at most 63, start/end alphanumeric)"
_DNS1035_WHAT = "Service name (lowercase letters, digits and '-', at most 63, starts with a letter)"


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a config file. Raises ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return load_config_text(text, path)


def load_config_text(text: str, path: str | Path) -> Config:
    """Validate config text as if read from `path` (relative static files resolve beside it)."""
    path = Path(path)
    file = str(path)
    doc = _parse_yaml(text, file)
    checker = _Checker(file, doc)
    root = _Scope(checker, ())
    data = _mapping(
        doc.data, root, {"version", "targets", "consul", "address_policy"}, {"version", "targets"}
    )
    if data is None:
        raise ConfigError(checker.problems)

    if "version" in data:
        version = data["version"]
        if not _is_int(version) or version not in SUPPORTED_VERSIONS:
            root.at("version").error(f"unsupported version {version!r}; supported: 1")

    targets: list[Target] = []
    raw_targets = data.get("targets")
    policy = AddressPolicy()
    if "address_policy" in data:
        policy = _address_policy(data["address_policy"], root.at("address_policy")) or policy

    if "targets" in data:
        if not isinstance(raw_targets, list):
            root.at("targets").error(f"must be a list of targets, got {_kind(raw_targets)}")
        elif not raw_targets:
            root.at("targets").error("at least one target is required")
        else:
            seen: dict[tuple, int] = {}
            for index, raw in enumerate(raw_targets):
                target = _target(raw, root.at("targets", index), path.parent, policy)
                key = _raw_target_key(raw)
                if key is not None and key in seen:
                    root.at("targets", index).error(
                        f"duplicate target {key[0]}/{key[1]} (also targets[{seen[key]}])"
                    )
                    continue
                if key is not None:
                    seen[key] = index
                if target is not None:
                    targets.append(target)

    consul = ConsulConnection()
    if "consul" in data:
        consul = _consul_connection(data["consul"], root.at("consul"), path.parent) or consul

    if checker.problems:
        raise ConfigError(checker.problems)
    return Config(
        path=path,
        targets=tuple(targets),
        version=data["version"],
        consul=consul,
        address_policy=policy,
    )


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
}


def _target(raw: Any, scope: _Scope, base_dir: Path, policy: AddressPolicy) -> Target | None:
    if isinstance(raw, dict):
        scope = _Scope(scope.checker, scope.path, scope.path, _target_label(raw, scope.path))
    before = len(scope.checker.problems)
    data = _mapping(raw, scope, _TARGET_KEYS, {"namespace", "service", "ports", "sources"})
    if data is None:
        return None
    namespace = service = None
    if "namespace" in data:
        namespace = _kube_name(
            data["namespace"], scope.at("namespace"), _DNS1123_LABEL, "namespace " + _DNS1123_WHAT
        )
    if "service" in data:
        service = _kube_name(data["service"], scope.at("service"), _DNS1035_LABEL, _DNS1035_WHAT)

    ports = _service_ports(data.get("ports"), scope.at("ports")) if "ports" in data else None

    output = Output.ENDPOINTSLICES
    if "output" in data:
        try:
            output = Output(data["output"])
        except ValueError:
            choices = ", ".join(o.value for o in Output)
            scope.at("output").error(f"{data['output']!r} is not one of: {choices}")

    manage_service = _flag(data, "manage_service", scope)
    manage_service = True if manage_service is None else manage_service

    capacity = DEFAULT_SLICE_CAPACITY
    if "max_endpoints_per_slice" in data:
        value = data["max_endpoints_per_slice"]
        if _is_int(value) and 1 <= value <= MAX_SLICE_CAPACITY:
            capacity = value
        else:
            scope.at("max_endpoints_per_slice").error(
                f"must be a whole number from 1 to {MAX_SLICE_CAPACITY}, got {value!r}"
            )

    sources: list[SourceConfig] = []
    raw_sources = data.get("sources")
    if "sources" in data:
        if not isinstance(raw_sources, list):
            scope.at("sources").error(f"must be a list of sources, got {_kind(raw_sources)}")
        elif not raw_sources:
            scope.at("sources").error("at least one source is required")
        elif ports is not None:
            for index, raw in enumerate(raw_sources):
                source = _source(raw, scope.at("sources", index), ports, base_dir)
                if source is not None:
                    sources.append(source)

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
        extras["allowed_cidrs"] = _cidrs(data["allowed_cidrs"], scope.at("allowed_cidrs"))
    for index, source in enumerate(sources):
        if isinstance(source, StaticSourceConfig):
            _check_static_policy(
                source, scope.at("sources", index), policy, extras.get("allowed_cidrs", ())
            )

    if len(scope.checker.problems) > before or namespace is None or service is None:
        return None
    assert ports is not None
    return Target(
        **extras,
        namespace=namespace,
        service=service,
        ports=ports,
        sources=tuple(sources),
        output=output,
        manage_service=manage_service,
        max_endpoints_per_slice=capacity,
    )


def _raw_target_key(raw: Any) -> tuple | None:
    if isinstance(raw, dict):
        key = (raw.get("namespace"), raw.get("service"))
        if all(isinstance(part, str) for part in key):
            return key
    return None


def _target_label(data: dict, path: Path_) -> str:
    """How errors name a target: by namespace/service when readable, else by position."""
    namespace, service = data.get("namespace"), data.get("service")
    if isinstance(namespace, str) and isinstance(service, str):
        return f"target {namespace}/{service}"
    return f"target #{path[-1]}"


def _service_ports(raw: Any, scope: _Scope) -> tuple[ServicePort, ...] | None:
    if not isinstance(raw, list) or not raw:
        scope.error("must be a non-empty list of ports (name, port, protocol)")
        return None
    ports: list[ServicePort] = []
    ok = True
    for index, item in enumerate(raw):
        where = scope.at(index)
        data = _mapping(item, where, {"name", "port", "protocol"}, {"port"})
        if data is None:
            ok = False
            continue
        name = ""
        if "name" in data:
            name = _kube_name(
                data["name"], where.at("name"), _DNS1123_LABEL, "port name " + _DNS1123_WHAT
            )
            ok &= name is not None
        elif len(raw) > 1:
            where.error("a name is required when the Service has more than one port")
            ok = False
        number = _port_number(data.get("port"), where.at("port")) if "port" in data else None
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
    return tuple(ports) if ok else None


def _source(raw: Any, scope: _Scope, ports: tuple[ServicePort, ...], base_dir: Path):
    if not isinstance(raw, dict):
        scope.error(f"must be a mapping with a 'type', got {_kind(raw)}")
        return None
    kind = raw.get("type")
    if kind == "static":
        return _static_source(raw, scope, ports, base_dir)
    if kind == "consul":
        return _consul_source(raw, scope, ports)
    if kind == "dns":
        return _dns_source(raw, scope, ports)
    if kind == "consul_query":
        return _consul_query_source(raw, scope, ports)
    if "type" not in raw:
        scope.error(f"missing required key 'type' (one of: {_SOURCE_TYPES})")
    else:
        scope.at("type").error(f"unknown source type {kind!r} (one of: {_SOURCE_TYPES})")
    return None


_SOURCE_TYPES = "static, consul, consul_query, dns"
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
}


def _consul_source(raw: dict, scope: _Scope, ports) -> ConsulSourceConfig | None:
    data = _mapping(raw, scope, _CONSUL_SOURCE_KEYS, {"type", "service"})
    if data is None:
        return None
    before = len(scope.checker.problems)
    service = (
        _nonempty_string(data.get("service"), scope.at("service")) if "service" in data else None
    )
    names = [p.name for p in ports]
    port_name = _served_port(data, "port", names, scope, "the instances serve")
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
    optional = {}
    for key in ("datacenter", "filter", "namespace", "partition"):
        if key in data:
            optional[key] = _nonempty_string(data[key], scope.at(key))
    address = _choice(data, "address", ConsulAddress, ConsulAddress.SERVICE, scope)
    consistency = _choice(data, "consistency", ConsulConsistency, ConsulConsistency.DEFAULT, scope)
    warning_is_ready = _flag(data, "warning_is_ready", scope)
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
}
_DNS_NAME = re.compile(
    r"^(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$"
)
_FAMILIES = {"ipv4": AddressFamily.IPV4, "ipv6": AddressFamily.IPV6}


def _dns_source(raw: dict, scope: _Scope, ports) -> DnsSourceConfig | None:
    data = _mapping(raw, scope, _DNS_SOURCE_KEYS, {"type"})
    if data is None:
        return None
    before = len(scope.checker.problems)
    if ("srv" in data) == ("name" in data):
        scope.error("a dns source needs exactly one of 'srv' (an SRV name) or 'name' (A/AAAA)")
        return None
    mode = "srv" if "srv" in data else "name"
    qname = _nonempty_string(data[mode], scope.at(mode))
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
        values["service_port"] = _served_port(
            data, "service_port", names, scope, "the SRV ports serve"
        )
    else:
        if "service_port" in data:
            scope.at("service_port").error("only for 'srv'; with 'name' use 'port' or 'ports'")
        endpoint_ports = _endpoint_ports(data, scope, ports)
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
    if _flag(data, "tcp", scope) is not None:
        values["tcp"] = data["tcp"]
    values.update(
        _numbers(data, scope, {"timeout": (0.1, 60), "min_ttl": (0, 86400), "max_ttl": (1, 86400)})
    )
    if values.get("min_ttl", 5.0) > values.get("max_ttl", 300.0):
        scope.error("min_ttl must not be larger than max_ttl")
    if len(scope.checker.problems) > before:
        return None
    return DnsSourceConfig(**values)


def _nameservers(value: Any, scope: _Scope) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list) or not value:
        scope.error("must be a non-empty list of 'address' or 'address:port'")
        return ()
    result = []
    for index, item in enumerate(value):
        where = scope.at(index)
        if not isinstance(item, str):
            where.error(f"must be 'address' or 'address:port', got {_kind(item)}")
            continue
        host, port = item, 53
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest:
                port = int(rest[1:]) if rest[1:].isdigit() else -1
        elif item.count(":") == 1:
            host, _, text = item.partition(":")
            port = int(text) if text.isdigit() else -1
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


def _number(data: dict, key: str, scope: _Scope, low: float, high: float, integer=False):
    """data[key] as a number in [low, high], or None after reporting why not."""
    value = data[key]
    kind_ok = (
        _is_int(value)
        if integer
        else (isinstance(value, int | float) and not isinstance(value, bool))
    )
    if kind_ok and low <= value <= high:
        return value if integer else float(value)
    what = "a whole number" if integer else "a number"
    scope.at(key).error(f"must be {what} from {low:g} to {high:g}, got {value!r}")
    return None


def _numbers(data: dict, scope: _Scope, limits: dict[str, tuple]) -> dict[str, Any]:
    values = {}
    for key, (low, high, *integer) in limits.items():
        if key in data:
            value = _number(data, key, scope, low, high, bool(integer))
            if value is not None:
                values[key] = value
    return values


def _failover(raw: Any, scope: _Scope) -> FailoverConfig:
    data = _mapping(raw, scope, {"min_ready", "failback_after"}, set()) or {}
    return FailoverConfig(
        **_numbers(data, scope, {"min_ready": (1, 100000, True), "failback_after": (0, 86400)})
    )


def _guards(raw: Any, scope: _Scope) -> GuardConfig:
    data = _mapping(raw, scope, {"max_removal_fraction", "confirm_after"}, set()) or {}
    return GuardConfig(
        **_numbers(data, scope, {"max_removal_fraction": (0, 1), "confirm_after": (0, 3600)})
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


def _health_check(raw: Any, scope: _Scope, ports, base_dir: Path) -> HealthCheckConfig | None:
    data = _mapping(raw, scope, _HEALTH_KEYS, {"type"})
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
    if data.get("type") == "tcp":
        for key in (
            "path",
            "expected_status",
            "host",
            "tls_server_name",
            "ca_file",
            "insecure_skip_verify",
        ):
            if key in data:
                scope.at(key).error("only for http and https checks")
    if "path" in data:
        path = _nonempty_string(data["path"], scope.at("path"))
        if path and not path.startswith("/"):
            scope.at("path").error("must start with '/'")
        values["path"] = path
    if "expected_status" in data:
        values["expected_status"] = _status_ranges(
            data["expected_status"], scope.at("expected_status")
        )
    for key in ("host", "tls_server_name"):
        if key in data:
            values[key] = _nonempty_string(data[key], scope.at(key))
    if "ca_file" in data:
        name = _nonempty_string(data["ca_file"], scope.at("ca_file"))
        if name:
            values["ca_file"] = _beside(base_dir, name)
    if _flag(data, "insecure_skip_verify", scope) is not None:
        values["insecure_skip_verify"] = data["insecure_skip_verify"]
    values.update(
        _numbers(
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


def _status_ranges(raw: Any, scope: _Scope) -> tuple[tuple[int, int], ...]:
    """[200, 204, "300-399"] -> ((200, 200), (204, 204), (300, 399))."""
    if not isinstance(raw, list) or not raw:
        scope.error("must be a list of status codes or ranges like '200-399'")
        return ((200, 399),)
    ranges = []
    for index, item in enumerate(raw):
        text = str(item)
        low, _, high = text.partition("-")
        if low.isdigit() and (high.isdigit() or not high) and not isinstance(item, bool):
            pair = (int(low), int(high or low))
            if 100 <= pair[0] <= pair[1] <= 599:
                ranges.append(pair)
                continue
        scope.at(index).error(f"{item!r} is not a status code (100-599) or range like 200-399")
    return tuple(ranges) or ((200, 399),)


def _cidrs(raw: Any, scope: _Scope) -> tuple:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        scope.error("must be a list of CIDRs like 192.168.7.0/24")
        return ()
    result = []
    for index, item in enumerate(raw):
        try:
            result.append(ipaddress.ip_network(item, strict=False))
        except (ValueError, TypeError):
            scope.at(index).error(f"{item!r} is not a CIDR like 192.168.7.0/24")
    return tuple(result)


def _address_policy(raw: Any, scope: _Scope) -> AddressPolicy | None:
    data = _mapping(raw, scope, {"denied_cidrs", "service_cidr"}, set())
    if data is None:
        return None
    denied = DEFAULT_DENIED_CIDRS
    if "denied_cidrs" in data:
        denied = (
            _cidrs(data["denied_cidrs"], scope.at("denied_cidrs")) if data["denied_cidrs"] else ()
        )
    if "service_cidr" in data:
        denied = denied + _cidrs(data["service_cidr"], scope.at("service_cidr"))
    return AddressPolicy(denied=denied)


def _check_static_policy(
    source: StaticSourceConfig, scope: _Scope, policy: AddressPolicy, allowed: tuple
) -> None:
    """A static backend the address policy forbids is a typo to fix, not to apply."""
    from syncd.policy import address_refusal

    for index, backend in enumerate(source.backends):
        reason = address_refusal(backend.address, policy, allowed)
        if reason:
            where = scope.at("backends", index) if source.file is None else scope.at("file")
            where.error(f"{backend.address}: {reason}")


def _consul_query_source(raw: dict, scope: _Scope, ports) -> ConsulQuerySourceConfig | None:
    data = _mapping(
        raw,
        scope,
        {"type", "query", "port", "address", "warning_is_ready", "poll_interval"},
        {"type", "query"},
    )
    if data is None:
        return None
    before = len(scope.checker.problems)
    query = _nonempty_string(data.get("query"), scope.at("query")) if "query" in data else None
    names = [p.name for p in ports]
    port_name = _served_port(data, "port", names, scope, "the instances serve")
    values = _numbers(data, scope, {"poll_interval": (0.1, 3600)})
    values["address"] = _choice(data, "address", ConsulAddress, ConsulAddress.SERVICE, scope)
    if _flag(data, "warning_is_ready", scope) is not None:
        values["warning_is_ready"] = data["warning_is_ready"]
    if len(scope.checker.problems) > before or query is None:
        return None
    return ConsulQuerySourceConfig(query=query, port_name=port_name, **values)


def _served_port(data: dict, key: str, names: list[str], scope: _Scope, what: str) -> str:
    """Which Service port a source's instances serve: data[key], or the only port."""
    if key not in data:
        if len(names) > 1:
            scope.error(f"the Service has several ports; say which one {what}: '{key}'")
        return names[0]
    if data[key] not in names:
        known = ", ".join(repr(n) for n in names)
        scope.at(key).error(f"{data[key]!r} is not a port of the Service (ports: {known})")
    return data[key]


def _choice(data: dict, key: str, enum_type, default, scope: _Scope):
    if key not in data:
        return default
    try:
        return enum_type(data[key])
    except ValueError:
        choices = ", ".join(e.value for e in enum_type)
        scope.at(key).error(f"{data[key]!r} is not one of: {choices}")
        return default


def _nonempty_string(value: Any, scope: _Scope) -> str | None:
    if not isinstance(value, str) or not value.strip():
        scope.error(f"must be a non-empty string, got {_kind(value)}")
        return None
    return value


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
}


def _consul_connection(raw: Any, scope: _Scope, base_dir: Path) -> ConsulConnection | None:
    data = _mapping(raw, scope, _CONSUL_CONNECTION_KEYS, set())
    if data is None:
        return None
    before = len(scope.checker.problems)
    values: dict[str, Any] = {}
    if "address" in data:
        address = _nonempty_string(data["address"], scope.at("address"))
        if address and not re.match(r"^(https?://)?[^/\s]+(:\d+)?/?$", address):
            scope.at("address").error(f"{address!r} is not host:port or http(s)://host:port")
        values["address"] = address
    for key in ("token_file", "ca_file", "cert_file", "key_file"):
        if key in data:
            name = _nonempty_string(data[key], scope.at(key))
            if name:
                values[key] = _beside(base_dir, name)
    if "tls_server_name" in data:
        values["tls_server_name"] = _nonempty_string(
            data["tls_server_name"], scope.at("tls_server_name")
        )
    if ("cert_file" in data) != ("key_file" in data):
        scope.error("cert_file and key_file go together")
    values.update(
        _numbers(
            data, scope, {"timeout": (0.1, 600), "wait": (1, 600), "min_query_interval": (0, 60)}
        )
    )
    if len(scope.checker.problems) > before:
        return None
    return ConsulConnection(**values)


def _static_source(raw: dict, scope: _Scope, ports, base_dir: Path) -> StaticSourceConfig | None:
    data = _mapping(raw, scope, {"type", "backends", "file"}, {"type"})
    if data is None:
        return None
    if ("backends" in data) == ("file" in data):
        scope.error("a static source needs exactly one of 'backends' or 'file'")
        return None
    if "backends" in data:
        backends = _backend_list(data["backends"], scope.at("backends"), ports)
        return None if backends is None else StaticSourceConfig(backends=backends)
    name = _string(data["file"], scope.at("file"))
    if name is None:
        return None
    file = _beside(base_dir, name)
    try:
        backends = read_backends_file(file, ports)
    except ConfigError as exc:
        for problem in exc.problems:
            scope.at("file").error(problem)
        return None
    return StaticSourceConfig(backends=backends, file=file)


def read_backends_file(file: Path, ports: tuple[ServicePort, ...]) -> tuple[Backend, ...]:
    """Parse a static backends file: a YAML list of backends, or a mapping with `backends:`."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    doc = _parse_yaml(text, str(file))
    checker = _Checker(str(file), doc)
    scope = _Scope(checker, ())
    raw = doc.data
    if isinstance(raw, dict):
        data = _mapping(raw, scope, {"backends"}, {"backends"})
        raw = data.get("backends") if data else None
        scope = scope.at("backends")
    backends = _backend_list(raw, scope, ports) if not checker.problems else None
    if checker.problems or backends is None:
        raise ConfigError(checker.problems or [f"{file}: no backends"])
    return backends


def _backend_list(raw: Any, scope: _Scope, ports) -> tuple[Backend, ...] | None:
    if not isinstance(raw, list):
        scope.error(f"must be a list of backends, got {_kind(raw)}")
        return None
    backends: list[Backend] = []
    seen: dict[tuple, int] = {}
    before = len(scope.checker.problems)
    for index, item in enumerate(raw):
        where = scope.at(index)
        backend = _backend(item, where, ports)
        if backend is None:
            continue
        if backend.identity in seen:
            where.error(f"duplicate backend {backend} (also [{seen[backend.identity]}])")
            continue
        seen[backend.identity] = index
        backends.append(backend)
    return tuple(backends) if len(scope.checker.problems) == before else None


def _backend(raw: Any, scope: _Scope, ports: tuple[ServicePort, ...]) -> Backend | None:
    if isinstance(raw, str):
        return _backend_shorthand(raw, scope, ports)
    data = _mapping(raw, scope, {"address", "port", "ports", "ready"}, {"address"})
    if data is None:
        return None
    ok = True
    address = None
    if "address" in data:
        address = _address(data["address"], scope.at("address"))
        ok &= address is not None
    ready = _flag(data, "ready", scope)
    ok &= ready is not None or "ready" not in data
    endpoint_ports = _endpoint_ports(data, scope, ports)
    if not ok or address is None or endpoint_ports is None:
        return None
    return Backend(address=address, ports=endpoint_ports, ready=ready is not False)


def _endpoint_ports(data: dict, scope: _Scope, ports: tuple[ServicePort, ...]):
    """`port: N` (one-port Services) or `ports: {service port name: N}` -> sorted ports."""
    by_name = {p.name: p for p in ports}
    if ("port" in data) == ("ports" in data):
        scope.error("give exactly one of 'port' (one-port Services) or 'ports' (name: port)")
        return None
    if "port" in data:
        if len(ports) != 1:
            names = ", ".join(p.name for p in ports)
            scope.at("port").error(f"the Service has several ports; use 'ports' with: {names}")
            return None
        number = _port_number(data["port"], scope.at("port"))
        if number is None:
            return None
        return (EndpointPort(ports[0].name, number, ports[0].protocol),)
    mapping = data["ports"]
    if not isinstance(mapping, dict) or not mapping:
        scope.at("ports").error("must be a mapping of Service port name to backend port")
        return None
    result: list[EndpointPort] = []
    ok = True
    for name, number in mapping.items():
        where = scope.at("ports", str(name))
        if name not in by_name:
            if list(by_name) == [""]:
                where.error("the Service's only port is unnamed; use 'port: N' instead")
            else:
                known = ", ".join(repr(n) for n in by_name)
                where.error(f"{name!r} is not a port of the Service (ports: {known})")
            ok = False
            continue
        number = _port_number(number, where)
        if number is None:
            ok = False
            continue
        result.append(EndpointPort(name, number, by_name[name].protocol))
    return tuple(sorted(result)) if ok else None


def _backend_shorthand(text: str, scope: _Scope, ports) -> Backend | None:
    if len(ports) != 1:
        scope.error(f"{text!r}: 'address:port' works for one-port Services only; use a mapping")
        return None
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        scope.error(f"{text!r}: write IPv6 backends as '[address]:port'")
        return None
    if not sep or not port_text.isdigit():
        scope.error(f"{text!r} is not 'address:port'")
        return None
    address = _address(host, scope)
    number = _port_number(int(port_text), scope)
    if address is None or number is None:
        return None
    return Backend(address, (EndpointPort(ports[0].name, number, ports[0].protocol),))


def _address(value: Any, scope: _Scope) -> str | None:
    if not isinstance(value, str):
        scope.error(f"must be an IP address, got {_kind(value)}")
        return None
    try:
        return canonical_endpoint_ip(value)
    except AddressRejected as exc:
        scope.error(str(exc))
        return None
