"""The cluster's own networks, and which targets may point into them (pure; no I/O).

A Service whose endpoints point at a pod, a node or another Service's ClusterIP lets
whoever declared it reach that address through any host-networked proxy (an ingress
controller, the OpenShift router): the CVE-2021-25740 class, which Kubernetes 1.22 closed
by taking Endpoints writes away from the `edit` role. ExternalServices are declared by
namespace editors, so syncd must not hand that power back. It learns the cluster's networks
from the cluster (Nodes' podCIDRs and addresses, ServiceCIDR objects) plus what its config
adds (`address_policy`), and:

- a target declared by a resource that lists an address in one of them is refused whole:
  nothing is written for it, and what was written for it is withdrawn (its endpoints
  removed). Applying the other addresses would hide the attempt and change what the
  Service means; a refused resource says why in its status.
- only syncd's own config (the cluster admin) can let a namespace through
  (`address_policy.cluster_network_namespaces`); a resource never can.
- a file target (written by the admin) keeps today's rules; a backend in a cluster network
  is only warned about, once.

If the networks cannot be read (no RBAC to list Nodes), resources are refused until they
can: failing open would be the hole this module exists to close.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from syncd.addresses import IPNetwork, ip_sort_key, ip_version
from syncd.model import AddressPolicy, Backend, Target


@dataclass(frozen=True, order=True)
class ClusterNetwork:
    """One range of the cluster's own addresses, and what it is (for messages)."""

    network: IPNetwork
    what: str  # "the pod network of Node node-1", "the Service network (ServiceCIDR kubernetes)"

    def describe(self) -> str:
        return f"{self.network} ({self.what})"


@dataclass(frozen=True)
class ClusterNetworks:
    """Every known range of the cluster's own addresses. `unknown` says why they could not
    all be read (then resources are refused: syncd cannot tell where they point)."""

    networks: tuple[ClusterNetwork, ...] = ()
    unknown: str = ""
    # (version, prefix length) -> network address -> range, longest prefixes first: a
    # lookup is one dict probe per distinct prefix length, however many Nodes there are
    _index: dict[tuple[int, int], dict[int, ClusterNetwork]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        for item in sorted(self.networks, key=lambda n: -n.network.prefixlen):
            network = item.network
            by_base = self._index.setdefault((network.version, network.prefixlen), {})
            by_base.setdefault(int(network.network_address), item)

    def containing(self, address: str) -> ClusterNetwork | None:
        """The most specific cluster network that holds `address`, else None."""
        version, packed = ip_sort_key(address)
        if version == 9:
            return None
        number, bits = int.from_bytes(packed, "big"), 32 if version == 4 else 128
        for (net_version, prefix), by_base in self._index.items():
            if net_version == version:
                found = by_base.get(number >> (bits - prefix) << (bits - prefix))
                if found is not None:
                    return found
        return None

    def difference(self, other: ClusterNetworks) -> frozenset[ClusterNetwork]:
        """The ranges in one of the two and not the other (what a change added or removed)."""
        return frozenset(self.networks).symmetric_difference(other.networks)


NO_NETWORKS = ClusterNetworks()


def applies_to(target: Target, policy: AddressPolicy) -> bool:
    """Are the cluster's networks refused for this target? For targets declared by a
    resource, unless the config lets its namespace through; never for the file's."""
    return target.resource is not None and target.namespace not in (
        policy.cluster_network_namespaces
    )


@dataclass(frozen=True)
class Refusal:
    """Why a resource's target is refused: the addresses it lists in cluster networks."""

    hits: tuple[tuple[str, ClusterNetwork], ...] = ()
    unknown: str = ""

    def message(self) -> str:
        if self.unknown:
            return (
                f"the cluster's own networks cannot be read ({self.unknown}), so syncd cannot "
                "tell whether this resource points into them; nothing is written for it until "
                "they can (RBAC: list and watch nodes and servicecidrs), or the config lists "
                "them (address_policy.discover_cluster_networks: false)"
            )
        shown = ", ".join(f"{address} is in {net.describe()}" for address, net in self.hits[:3])
        more = f" and {len(self.hits) - 3} more" if len(self.hits) > 3 else ""
        return (
            f"{shown}{more}: a resource may not point a Service at the cluster's own pods, "
            "nodes or Services (CVE-2021-25740); nothing is written for it and its endpoints "
            "are withdrawn, unless the cluster admin lets this namespace through "
            "(address_policy.cluster_network_namespaces in syncd's config)"
        )


def refusal(
    target: Target,
    policy: AddressPolicy,
    networks: ClusterNetworks | None,
    addresses: Iterable[str],
) -> Refusal | None:
    """Why `target` may not be applied with these addresses (its answers' and what is
    applied for it), or None. `networks` None: not known to this driver (render)."""
    if networks is None or not applies_to(target, policy):
        return None
    if networks.unknown:
        return Refusal(unknown=networks.unknown)
    hits = in_cluster_networks(addresses, networks)
    return Refusal(hits=hits) if hits else None


def in_cluster_networks(
    addresses: Iterable[str], networks: ClusterNetworks
) -> tuple[tuple[str, ClusterNetwork], ...]:
    """(address, network) for each address inside a cluster network, in address order."""
    hits = {}
    for address in addresses:
        if address in hits:
            continue
        network = networks.containing(address)
        if network is not None:
            hits[address] = network
    return tuple(sorted(hits.items(), key=lambda hit: ip_sort_key(hit[0])))


def file_target_warnings(
    target: Target, networks: ClusterNetworks | None, backends: Iterable[Backend]
) -> list[str]:
    """A file target's backends in a cluster network: allowed (the admin wrote them), but
    said, as it is most likely a mistake (a pod IP pasted as a backend)."""
    if networks is None or target.resource is not None or not networks.networks:
        return []
    hits = in_cluster_networks((b.address for b in backends), networks)
    return [
        f"{address} is in {network.describe()}: this Service will send traffic into the "
        "cluster's own network; meant?"
        for address, network in hits
    ]


def describe_networks(networks: ClusterNetworks) -> str:
    """One line saying what the cluster's networks are, for the log."""
    pods = sum(1 for n in networks.networks if "pod network" in n.what)
    nodes = sum(1 for n in networks.networks if "address of Node" in n.what)
    services = [str(n.network) for n in networks.networks if "Service network" in n.what]
    other = sum(1 for n in networks.networks if "cluster_cidrs" in n.what)
    return (
        f"the cluster's own networks: {pods} pod networks, {nodes} node addresses, "
        f"Service network {', '.join(services) or 'unknown'}"
        + (f", {other} from address_policy.cluster_cidrs" if other else "")
    )


def single_stack_warnings(networks: ClusterNetworks, backends: Iterable[Backend]) -> list[str]:
    """Backends of an address family the cluster's Service network does not have: their
    Service gets no ClusterIP of that family, and kube-proxy programs none of them."""
    services = {n.network.version for n in networks.networks if "Service network" in n.what}
    if not services:
        return []  # not known: nothing to say
    missing = sorted({b.family.value for b in backends if ip_version(b.address) not in services})
    return [
        f"{family} backends, and this cluster's Service network has no {family} range: "
        f"kube-proxy will program none of them"
        for family in missing
    ]


# --------------------------------------------------------------------------- from the cluster


def _network(text: Any) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        return None


def _host(text: Any) -> IPNetwork | None:
    try:
        address = ipaddress.ip_address(str(text))
    except ValueError:
        return None
    return ipaddress.ip_network(address)


NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def networks_of(
    nodes: Iterable[Mapping[str, Any]],
    service_cidrs: Iterable[Mapping[str, Any]],
    policy: AddressPolicy,
    learned_service_range: IPNetwork | None = None,
    unknown: str = "",
) -> ClusterNetworks:
    """The cluster's networks from its Nodes (podCIDRs, InternalIP/ExternalIP addresses),
    its ServiceCIDR objects, the Service range learned otherwise, and the config."""
    found: set[ClusterNetwork] = set()
    for node in nodes:
        name = (node.get("metadata") or {}).get("name", "?")
        spec = node.get("spec") or {}
        cidrs = list(spec.get("podCIDRs") or ()) or [spec.get("podCIDR")]
        for cidr in cidrs:
            network = _network(cidr) if cidr else None
            if network is not None:
                found.add(ClusterNetwork(network, f"the pod network of Node {name}"))
        for address in (node.get("status") or {}).get("addresses") or ():
            if address.get("type") in NODE_ADDRESS_TYPES:
                host = _host(address.get("address"))
                if host is not None:
                    found.add(ClusterNetwork(host, f"an address of Node {name}"))
    for service_cidr in service_cidrs:
        name = (service_cidr.get("metadata") or {}).get("name", "?")
        for cidr in (service_cidr.get("spec") or {}).get("cidrs") or ():
            network = _network(cidr)
            if network is not None:
                found.add(ClusterNetwork(network, f"the Service network, ServiceCIDR {name}"))
    if learned_service_range is not None:
        found.add(ClusterNetwork(learned_service_range, "the Service network"))
    found.update(configured_networks(policy))
    return ClusterNetworks(tuple(sorted(found, key=_order)), unknown)


def configured_networks(policy: AddressPolicy) -> list[ClusterNetwork]:
    """What the config names as the cluster's: its Service network and cluster_cidrs."""
    return [
        *(ClusterNetwork(n, "the Service network, address_policy.service_cidr")
          for n in policy.service_cidrs),
        *(ClusterNetwork(n, "a cluster network, address_policy.cluster_cidrs")
          for n in policy.cluster_cidrs),
    ]  # fmt: skip


def _order(item: ClusterNetwork) -> tuple[int, int, int, str]:
    network = item.network
    return (network.version, int(network.network_address), network.prefixlen, item.what)


__all__ = [
    "NO_NETWORKS",
    "ClusterNetwork",
    "ClusterNetworks",
    "Refusal",
    "applies_to",
    "configured_networks",
    "describe_networks",
    "file_target_warnings",
    "in_cluster_networks",
    "networks_of",
    "refusal",
    "single_stack_warnings",
]
