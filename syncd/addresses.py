"""Which backend addresses Kubernetes accepts, in their canonical form.

The API server rejects endpoint IPs that are unspecified, loopback, link-local or
link-local multicast. syncd checks this itself, so a bad registry entry is reported once
and filtered instead of making every write of the whole object fail.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import sys
import urllib.parse
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressRejected(ValueError):
    """The text is not an IP address the API server would store on an endpoint."""


_LINK_LOCAL_MULTICAST_V4 = ipaddress.IPv4Network("224.0.0.0/24")


def _is_link_local_multicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.version == 4:
        return ip in _LINK_LOCAL_MULTICAST_V4
    return ip.is_multicast and (ip.packed[1] & 0x0F) == 0x02


# IPv4 ranges the API server rejects, as (mask, network) integers: the fast path below
_REJECTED_V4 = (
    (0xFFFFFFFF, 0x00000000, "unspecified"),
    (0xFF000000, 0x7F000000, "loopback"),
    (0xFFFFFF00, 0xE0000000, "link-local multicast"),
    (0xFFFF0000, 0xA9FE0000, "link-local"),
)


def canonical_endpoint_ip(text: str) -> str:
    """Return the canonical form of an endpoint IP, or raise AddressRejected saying why."""
    try:  # the usual case, in a microsecond: an IPv4 address written canonically
        number = int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        if socket.inet_ntop(socket.AF_INET, number.to_bytes(4, "big")) == text:
            for mask, network, reason in _REJECTED_V4:
                if number & mask == network:
                    raise AddressRejected(
                        f"{text!r} is a {reason} address, which the Kubernetes API rejects"
                    )
            return sys.intern(text)
    except (OSError, TypeError):
        pass
    if not isinstance(text, str) or not text.strip():
        raise AddressRejected("an IP address is required")
    raw = text.strip()
    if "%" in raw:
        raise AddressRejected(f"{raw!r} has a zone index; Kubernetes endpoints cannot carry one")
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        raise AddressRejected(f"{raw!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        raise AddressRejected(f"{raw!r} is an IPv4-mapped IPv6 address; write {ip.ipv4_mapped}")
    if ip.is_unspecified:
        reason = "unspecified"
    elif ip.is_loopback:
        reason = "loopback"
    elif _is_link_local_multicast(ip):
        reason = "link-local multicast"
    elif ip.is_link_local:
        reason = "link-local"
    else:
        return sys.intern(str(ip))  # shared with the cluster cache's copy of the address
    raise AddressRejected(f"{raw!r} is a {reason} address, which the Kubernetes API rejects")


# Backends are compared, sorted and range-checked on every decision: these work on the
# canonical text with the C library's parser instead of building ipaddress objects.


def ip_version(address: str) -> int:
    """4 or 6, for an address in canonical form (only IPv6 has colons)."""
    return 6 if ":" in address else 4


def ip_sort_key(address: str | None) -> tuple[int, bytes]:
    """Order addresses numerically, IPv4 before IPv6 (anything unparsable last)."""
    try:
        if address and ":" in address:
            return (6, socket.inet_pton(socket.AF_INET6, address))
        return (4, socket.inet_pton(socket.AF_INET, address or ""))
    except OSError:
        return (9, b"")


def _ip_int(address: str) -> tuple[int, int]:
    version, packed = ip_sort_key(address)
    if version == 9:
        raise ValueError(f"{address!r} is not an IP address")
    return version, int.from_bytes(packed, "big")


@functools.lru_cache(maxsize=4096)
def _network_ints(network: IPNetwork) -> tuple[int, int, int]:
    """(version, netmask, network address) as integers: computed once per network."""
    return network.version, int(network.netmask), int(network.network_address)


def address_refusal(
    address: str, denied: Sequence[IPNetwork], allowed: Sequence[IPNetwork]
) -> str | None:
    """Why the address policy refuses `address`, or None if it may be an endpoint.

    `denied` is the global deny list (metadata service, loopback, the Service CIDR, ...);
    `allowed`, when not empty, is the only ranges a target's backends may be in.
    """
    return address_filter(tuple(denied), tuple(allowed)).refusal(address)


@functools.lru_cache(maxsize=256)
def address_filter(denied: tuple[IPNetwork, ...], allowed: tuple[IPNetwork, ...]) -> AddressFilter:
    """One filter per policy and target ranges, built once (it remembers what passed)."""
    return AddressFilter(denied, allowed)


class AddressFilter:
    """`address_refusal` for many addresses: the ranges are turned into integers once."""

    PASSED_MAX = 1 << 18  # addresses remembered as allowed, at most

    def __init__(self, denied: Sequence[IPNetwork], allowed: Sequence[IPNetwork]):
        self._denied = [(n, *_network_ints(n)) for n in denied]
        self._allowed = [_network_ints(n) for n in allowed]
        self._passed: set[str] = set()

    def all_passed(self, addresses: Iterable[str]) -> bool:
        """Were all of these let through before? (A set operation: no per-address call.)"""
        return self._passed.issuperset(addresses)

    def refusal(self, address: str) -> str | None:
        if address in self._passed:
            return None
        reason = self._refusal(address)
        if reason is None:
            if len(self._passed) >= self.PASSED_MAX:
                self._passed.clear()
            self._passed.add(address)
        return reason

    def _refusal(self, address: str) -> str | None:
        version, number = _ip_int(address)
        for network, net_version, mask, base in self._denied:
            if version == net_version and number & mask == base:
                return f"in the denied range {network} (address_policy)"
        if self._allowed and not any(
            version == net_version and number & mask == base
            for net_version, mask, base in self._allowed
        ):
            return "outside the target's allowed_cidrs"
        return None


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def parse_http_address(text: str, default_port: int) -> tuple[str, str, int]:
    """'host', 'host:port' or 'http(s)://host[:port]' -> (scheme, host, port).

    Raises ValueError saying what is wrong: scheme, host, port range, or anything after
    the port (a path, a query, credentials). IPv6 hosts are written in brackets.
    """
    raw = text.strip() if isinstance(text, str) else ""
    if not raw:
        raise ValueError("an address is required")
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "http", raw
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{raw!r}: the scheme must be http or https, not {scheme!r}")
    rest = rest.rstrip("/")
    if "@" in rest:
        raise ValueError(
            "credentials in the address are neither used nor allowed (they would be shown "
            "wherever the address is); give the ACL token in token_file"
        )
    if not rest or any(c in rest for c in "/?# \t"):
        raise ValueError(f"{raw!r} is not host:port or http(s)://host:port")
    try:
        parsed = urllib.parse.urlsplit(f"{scheme}://{rest}")
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket, a port out of range
        raise ValueError(f"{raw!r} is not host:port or http(s)://host:port ({exc})") from None
    if not host:
        raise ValueError(f"{raw!r} has no host")
    if port == 0:
        raise ValueError(f"{raw!r}: port 0 is out of range 1-65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise ValueError(f"{raw!r}: {host!r} is not a host name or IP address") from None
    if ":" in host:
        host = f"[{host}]"
    return scheme, host, port or (443 if scheme == "https" else default_port)
