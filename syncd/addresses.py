"""Which backend addresses Kubernetes accepts, in their canonical form.

The API server rejects endpoint IPs that are unspecified, loopback, link-local or
link-local multicast. syncd checks this itself, so a bad registry entry is reported once
and filtered instead of making every write of the whole object fail.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressRejected(ValueError):
    """The text is not an IP address the API server would store on an endpoint."""


def _is_link_local_multicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.version == 4:
        return ip in ipaddress.IPv4Network("224.0.0.0/24")
    return ip.is_multicast and (ip.packed[1] & 0x0F) == 0x02


def canonical_endpoint_ip(text: str) -> str:
    """Return the canonical form of an endpoint IP, or raise AddressRejected saying why."""
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
        return str(ip)
    raise AddressRejected(f"{raw!r} is a {reason} address, which the Kubernetes API rejects")


def address_refusal(
    address: str, denied: Sequence[IPNetwork], allowed: Sequence[IPNetwork]
) -> str | None:
    """Why the address policy refuses `address`, or None if it may be an endpoint.

    `denied` is the global deny list (metadata service, loopback, the Service CIDR, ...);
    `allowed`, when not empty, is the only ranges a target's backends may be in.
    """
    ip = ipaddress.ip_address(address)
    for network in denied:
        if ip.version == network.version and ip in network:
            return f"in the denied range {network} (address_policy)"
    if allowed and not any(ip.version == n.version and ip in n for n in allowed):
        return "outside the target's allowed_cidrs"
    return None
