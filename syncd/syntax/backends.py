"""Backend entries (`address:port` or a mapping) and the static backends file reader.

Sources read backends files through `read_backends_file`, without the config loader."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from syncd.addresses import AddressRejected, canonical_endpoint_ip
from syncd.errors import ConfigError
from syncd.kinds import HOSTNAME_RULE, is_hostname, is_label_value
from syncd.model import Backend, EndpointPort, ServicePort, port_set
from syncd.syntax.checks import Checker, Scope, expect_mapping, flag, kind_name, port_number
from syncd.syntax.files import MAX_BACKENDS_FILE_BYTES, MAX_BACKENDS_PER_TARGET, read_text_file
from syncd.syntax.yamldoc import parse_yaml


def read_backends_file(file: Path, ports: tuple[ServicePort, ...]) -> tuple[Backend, ...]:
    """Parse a static backends file: a YAML list of backends, or a mapping with `backends:`."""
    doc = parse_yaml(read_text_file(file, MAX_BACKENDS_FILE_BYTES), str(file))
    checker = Checker(str(file), doc, redact=True)  # it may hold anything: show no values
    scope = Scope(checker, ())
    raw = doc.data
    if isinstance(raw, dict):
        data = expect_mapping(raw, scope, {"backends"}, {"backends"})
        raw = data.get("backends") if data else None
        scope = scope.at("backends")
    backends = parse_backend_list(raw, scope, ports) if not checker.problems else None
    if checker.problems or backends is None:
        raise ConfigError(checker.problems or [f"{file}: no backends"])
    return backends


def parse_backend_list(raw: Any, scope: Scope, ports) -> tuple[Backend, ...] | None:
    if not isinstance(raw, list):
        scope.error(f"must be a list of backends, got {kind_name(raw)}")
        return None
    if len(raw) > MAX_BACKENDS_PER_TARGET:
        scope.error(
            f"{len(raw):,} backends, more than the {MAX_BACKENDS_PER_TARGET:,} a target may "
            "list; split them over several targets (Services)"
        )
        return None
    backends: list[Backend] = []
    indexes: list[int] = []
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
        indexes.append(index)
    _check_hostnames(backends, indexes, scope)
    return tuple(backends) if len(scope.checker.problems) == before else None


def _backend(raw: Any, scope: Scope, ports: tuple[ServicePort, ...]) -> Backend | None:
    if isinstance(raw, str):
        return _backend_shorthand(raw, scope, ports)
    if isinstance(raw, dict) and len(raw) == 1:
        ((key, value),) = raw.items()
        if isinstance(key, str) and key[:1].isdigit() and isinstance(value, int):
            scope.error(
                f"'{key}: {value}' reads as a mapping (a space after ':'); write '{key}:{value}'"
            )
            return None
    data = expect_mapping(
        raw, scope, {"address", "port", "ports", "ready", "zone", "hostname"}, {"address"}
    )
    if data is None:
        return None
    ok = True
    address = None
    if "address" in data:
        address = _address(data["address"], scope.at("address"))
        ok &= address is not None
    ready = flag(data, "ready", scope)
    ok &= ready is not None or "ready" not in data
    endpoint_ports = parse_endpoint_ports(data, scope, ports)
    zone = parse_zone(data, "zone", scope)
    ok &= zone is not None or "zone" not in data
    hostname = _hostname(data, scope)
    ok &= hostname is not None or "hostname" not in data
    if not ok or address is None or endpoint_ports is None:
        return None
    return Backend(address, endpoint_ports, ready is not False, zone, hostname)


def _hostname(data: dict, scope: Scope) -> str | None:
    """Its DNS name in the cluster (<hostname>.<service>.<namespace>.svc...)."""
    if "hostname" not in data:
        return None
    value = data["hostname"]
    if is_hostname(value):
        return str(value)
    hint = ""
    if isinstance(value, str) and "." in value:
        hint = f": one label, e.g. {value.split('.')[0]!r}; the cluster adds .<service>..."
    scope.at("hostname").error(f"{value!r} is not a hostname ({HOSTNAME_RULE}){hint}")
    return None


def _check_hostnames(backends: list[Backend], indexes: list[int], scope: Scope) -> None:
    """One name per address (its ports share it) and one address per name: a name that
    answered two addresses would be a typo, or a round-robin nobody asked for."""
    name_of: dict[str, tuple[str, int]] = {}
    address_of: dict[str, tuple[str, int]] = {}
    for backend, index in zip(backends, indexes, strict=True):
        name = backend.hostname
        if name is None:
            continue
        named, at = name_of.setdefault(backend.address, (name, index))
        if named != name:
            scope.at(index, "hostname").error(
                f"{backend.address} is already named {named!r} ([{at}]); an address has one name"
            )
        owner, at = address_of.setdefault(name, (backend.address, index))
        if owner != backend.address:
            scope.at(index, "hostname").error(
                f"{name!r} already names {owner} ([{at}]); a name answers one address"
            )


def parse_zone(data: dict, key: str, scope: Scope) -> str | None:
    """A zone name: what Kubernetes accepts in endpoint hints (a label value)."""
    if key not in data:
        return None
    value = data[key]
    if not value or not is_label_value(value):
        scope.at(key).error(
            f"{value!r} is not a zone name (letters, digits, '-', '_', '.', at most 63)"
        )
        return None
    return str(value)


def parse_endpoint_ports(data: dict, scope: Scope, ports: tuple[ServicePort, ...]):
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
        number = port_number(data["port"], scope.at("port"))
        if number is None:
            return None
        return port_set(EndpointPort(ports[0].name, number, ports[0].protocol))
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
        number = port_number(number, where)
        if number is None:
            ok = False
            continue
        result.append(EndpointPort(name, number, by_name[name].protocol))
    return port_set(*result) if ok else None


_SPACE = re.compile(r"\s")


def _backend_shorthand(text: str, scope: Scope, ports) -> Backend | None:
    if len(ports) != 1:
        scope.error(f"{text!r}: 'address:port' works for one-port Services only; use a mapping")
        return None
    if _SPACE.search(text):
        scope.error(f"{text!r}: no spaces in 'address:port'")
        return None
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        scope.error(f"{text!r}: write IPv6 backends as '[address]:port'")
        return None
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        scope.error(f"{text!r} is not 'address:port'")
        return None
    address = _address(host, scope)
    number = port_number(int(port_text), scope)
    if address is None or number is None:
        return None
    return Backend(address, port_set(EndpointPort(ports[0].name, number, ports[0].protocol)))


def _address(value: Any, scope: Scope) -> str | None:
    if not isinstance(value, str):
        scope.error(f"must be an IP address, got {kind_name(value)}")
        return None
    if value != value.strip():
        scope.error(f"{value!r}: no spaces around the address")
        return None
    try:
        return canonical_endpoint_ip(value)
    except AddressRejected as exc:
        scope.error(str(exc))
        return None
