"""The cluster's own networks as syncd reads them: Nodes and ServiceCIDRs, kept current.

`syncd.cluster_networks` decides what they mean; this module only reads them:

- Nodes (their podCIDRs and InternalIP/ExternalIP addresses) and, where the API server has
  them (networking.k8s.io/v1, Kubernetes 1.33+), ServiceCIDR objects, by list + watch in
  the daemon and by one list in a one-shot run. A Node's heartbeat changes nothing syncd
  keeps of it, so it wakes nothing.
- Where there are no ServiceCIDR objects, the Service network is the config's
  `address_policy.service_cidr`, else learned from the API server itself: a server-side
  dry-run create of a Service with a ClusterIP outside any range is refused with a message
  naming the valid range (nothing is stored).
- With `address_policy.discover_cluster_networks: false` nothing is read: the config's
  networks are all there is (an install that may not read Nodes, by the admin's choice).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from ipaddress import ip_network

from syncd.addresses import IPNetwork
from syncd.cache import ClusterCache
from syncd.cluster_networks import ClusterNetworks, networks_of
from syncd.errors import KubeError, KubeNotFound
from syncd.kinds import NODE, SERVICE_CIDR, Kind
from syncd.kube import Kube
from syncd.model import AddressPolicy

log = logging.getLogger(__name__)

# Outside every Service range a cluster may have (TEST-NET-1 is never a ClusterIP)
_PROBE_CLUSTER_IP = "192.0.2.1"
_VALID_RANGE = re.compile(r"[Tt]he range of valid IPs is ([0-9a-fA-F.:/]+)")


def serves(kube: Kube, kind: Kind) -> bool:
    """Does this API server have `kind`? (API discovery of its group and version: a kind
    newer than the server, such as ServiceCIDR before 1.33, is a 404 to list.)"""
    try:
        found = kube.read_path(kind.base_path)
    except KubeNotFound:
        return False
    return any(r.get("name") == kind.plural for r in (found or {}).get("resources") or ())


def learn_service_range(kube: Kube, namespace: str) -> IPNetwork | None:
    """The API server's Service range (--service-cluster-ip-range), from its refusal of a
    dry-run Service with a ClusterIP outside it; None if it cannot be learned this way."""
    probe = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"generateName": "syncd-range-probe-", "namespace": namespace},
        "spec": {"clusterIP": _PROBE_CLUSTER_IP, "ports": [{"port": 80}]},
    }
    try:
        kube.create(probe, dry_run=True)
    except KubeError as exc:
        found = _VALID_RANGE.search(str(exc))
        if found:
            try:
                return ip_network(found.group(1).rstrip("."), strict=False)
            except ValueError:
                return None
        log.info("could not learn the Service network from the API server: %s", exc)
    return None


class ClusterNetworkWatch:
    """What the cluster's networks are now (`current`), read once (`load`) or followed
    (`start`); `on_change` is told when something that makes them may have changed."""

    def __init__(
        self,
        kube: Kube,
        policy: AddressPolicy | Callable[[], AddressPolicy],
        probe_namespace: str | None = "default",
        on_change: Callable[[], None] | None = None,
    ):
        """`policy`: the config's (a function: the running config's, read at each look);
        `probe_namespace`: where a dry-run Service may learn the Service range when the
        server has no ServiceCIDRs (None: never; `check` writes nothing, not even that)."""
        self._kube = kube
        self._policy_of = policy if callable(policy) else (lambda: policy)
        self._policy = self._policy_of()
        self._probe_namespace = probe_namespace
        self._on_change = on_change
        self._lock = threading.Lock()
        self._learned: IPNetwork | None = None
        self._current: ClusterNetworks | None = None  # None: compute again
        self._cache: ClusterCache | None = None
        self._cidrs_served = False
        self._load_error = ""

    @property
    def discovering(self) -> bool:
        return self._policy.discover_cluster_networks

    def _kinds(self) -> tuple:
        """Nodes, and ServiceCIDRs where served; else the Service range learned once."""
        try:
            served = serves(self._kube, SERVICE_CIDR)
        except KubeError as exc:
            log.info("could not ask the API server for ServiceCIDRs: %s", exc)
            served = False
        self._cidrs_served = served
        if served:
            return (NODE, SERVICE_CIDR)
        if not self._policy.service_cidrs and self._probe_namespace is not None:
            self._learned = learn_service_range(self._kube, self._probe_namespace)
            if self._learned is not None:
                log.info("the Service network is %s (from the API server)", self._learned)
            else:
                log.warning(
                    "the Service network is unknown (no ServiceCIDR objects on this API server, "
                    "no address_policy.service_cidr, and it could not be learned): set "
                    "service_cidr, or ExternalServices may point at ClusterIPs"
                )
        return (NODE,)

    def load(self) -> ClusterNetworks:
        """One list of each (a one-shot run). A list that fails leaves them unknown."""
        if not self.discovering:
            return self.current()
        cache = ClusterCache(self._kube, None, kinds=self._kinds())
        try:
            cache.load()
            error = ""
        except KubeError as exc:
            error = str(exc)
        with self._lock:
            self._cache, self._load_error, self._current = cache, error, None
        return self.current()

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        """List + watch them until `stop` (the daemon)."""
        if not self.discovering:
            return []
        cache = ClusterCache(
            self._kube, None, on_change=lambda kind, old, new: self._changed(), kinds=self._kinds()
        )
        with self._lock:
            self._cache = cache
        return cache.start(stop)

    def wait_synced(self, stop: threading.Event, timeout: float) -> bool:
        cache = self._cache
        return cache is None or cache.wait_synced(stop, timeout)

    def _changed(self) -> None:
        with self._lock:
            self._current = None
        if self._on_change is not None:
            self._on_change()

    def current(self) -> ClusterNetworks:
        """The networks as last read (computed again only after a change, of the cluster's
        or of the config's address policy; whether to read the cluster is fixed at start)."""
        with self._lock:
            policy = self._policy_of()
            if policy is not self._policy:
                discovering = self._policy.discover_cluster_networks
                self._policy = replace(policy, discover_cluster_networks=discovering)
                self._current = None
            if self._current is None:
                self._current = self._compute()
            return self._current

    def _compute(self) -> ClusterNetworks:
        cache = self._cache
        if not self.discovering:
            return networks_of((), (), self._policy)
        if cache is None:
            return networks_of((), (), self._policy, unknown="not read yet")
        unknown = self._load_error
        if not unknown and not cache.synced:
            unknown = cache.problem() or "not read yet"
        nodes = cache.all(NODE.name)
        cidrs = cache.all(SERVICE_CIDR.name) if self._cidrs_served else []
        return networks_of(nodes, cidrs, self._policy, self._learned, unknown)


__all__ = ["ClusterNetworkWatch", "learn_service_range", "serves"]
