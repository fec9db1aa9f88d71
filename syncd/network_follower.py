"""The daemon's side of the cluster's own networks (syncd.network_watch reads them): a
change is looked at once it settles, and only the targets it may concern are reconciled.

A first list of thousands of Nodes, or a node pool scaling, is one look, not one per Node.
The targets reconciled: every resource's (a refusal may start or end, or the networks
became known) and the file's targets with a backend in a range that came or went (their
warning). A Node's heartbeat changes nothing the watch keeps, so it wakes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from syncd.cluster_networks import ClusterNetworks, describe_networks
from syncd.kube import Kube
from syncd.model import AddressPolicy, Snapshot
from syncd.network_watch import ClusterNetworkWatch
from syncd.scheduler import Scheduler
from syncd.targets import TargetRegistry

log = logging.getLogger(__name__)

_SETTLE = 1.0  # seconds a change waits for the ones that come with it


class NetworkFollower:
    """Follows the cluster's networks for the daemon; `current` is what reconciles use."""

    def __init__(
        self,
        kube: Kube,
        policy: Callable[[], AddressPolicy],
        targets: TargetRegistry,
        enqueue: Callable[[str, str], None],
        scheduler: Scheduler,
        probe_namespace: str = "default",  # where the Service range may be learned
    ):
        self._watch = ClusterNetworkWatch(kube, policy, probe_namespace, self._changed)
        self._targets = targets
        self._enqueue = enqueue
        self._scheduler = scheduler
        self._seen = self._watch.current()
        self._following = threading.Event()  # the daemon is ready: changes are looked at
        self._pending = threading.Event()  # a change waits to be looked at

    def current(self) -> ClusterNetworks:
        return self._watch.current()

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        return self._watch.start(stop)

    def wait(self, stop: threading.Event, timeout: float) -> None:
        """A while for them to be read (resources are refused while they are unknown, and
        a start must not flap every resource's status)."""
        if not self._watch.wait_synced(stop, timeout):
            log.error(
                "cannot read the cluster's own networks (%s): ExternalServices are not "
                "applied until they can be read (may syncd list and watch nodes?)",
                self._watch.current().unknown,
            )
        self._seen = self._watch.current()

    def follow(self) -> None:
        """From now on, changes reconcile targets; what changed while starting is looked at."""
        self._following.set()
        self._changed()

    def _changed(self) -> None:
        if self._following.is_set() and not self._pending.is_set():
            self._pending.set()
            self._scheduler.call_later(_SETTLE, self._look)

    def _look(self) -> None:
        self._pending.clear()
        before, now = self._seen, self._watch.current()
        self._seen = now
        changed = before.difference(now)
        if not changed and before.unknown == now.unknown:
            return
        log.info(describe_networks(now))
        ranges = ClusterNetworks(tuple(changed))
        for state in self._targets.states():
            if state.target.resource is not None or any(
                ranges.containing(backend.address) is not None
                for answer in state.answers
                if isinstance(answer, Snapshot)
                for backend in answer.backends
            ):
                self._enqueue(state.target.key, "networks")


__all__ = ["NetworkFollower"]
