"""ExternalServices as syncd reads them, and their status as it writes it.

The resources are read by a cache of their own (list + watch, like the cluster's; a change
of status alone wakes nothing), turned into targets beside the config file's
(`syncd.config.resource.merge_resources`), and each one's status is written through the
status subresource after its target is reconciled, only when it differs from what was last
written: a converged resync writes nothing, a change writes its objects and at most one
status.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from syncd.cache import ClusterCache
from syncd.config.resource import Merged, ParsedResource, merge_resources, parse_resource
from syncd.errors import KubeError, KubeNotFound
from syncd.kinds import EXTERNAL_SERVICE
from syncd.kube import Kube
from syncd.live import LiveState
from syncd.model import Config, ProbeKey, Target, ready_count
from syncd.ownership import prunable_by
from syncd.resource_status import Observation, Standing, desired_status
from syncd.results import TargetResult

log = logging.getLogger(__name__)


class ResourceSet:
    """The ExternalServices in reach (every namespace, or `namespaces`)."""

    def __init__(
        self,
        kube: Kube,
        namespaces: tuple[str, ...] | None = None,
        fence: Callable[[], bool] | None = None,
        on_change: Callable[[], None] | None = None,
    ):
        """`fence`: the leader's (only the leader writes status); `on_change`: told when a
        resource was created, edited or deleted (its status alone changes nothing)."""
        self._kube = kube
        self._fence = fence
        self.cache = ClusterCache(
            kube,
            namespaces,
            on_change=(lambda kind, old, new: on_change()) if on_change else None,
            kinds=(EXTERNAL_SERVICE,),
        )
        self._lock = threading.Lock()
        self._merged: Merged | None = None
        self._by_key: dict[str, ParsedResource] = {}  # target key -> the resource applied
        self._written: dict[str, dict[str, Any]] = {}  # uid -> the status last written

    # -- reading

    def wait_listed(self, stop: threading.Event, timeout: float) -> None:
        """A while for the first list. If they cannot be listed (no CRD, no RBAC), the
        daemon runs the file's targets meanwhile and the resources join once they can be
        read; nothing labelled for a resource is pruned before then (see `listed`)."""
        if self.cache.wait_synced(stop, timeout=timeout) or stop.is_set():
            return
        log.error(
            "cannot list ExternalServices yet (%s): is their CRD installed "
            "(deploy/components/resources) and may syncd list them? Running the config "
            "file's targets; the resources follow once they can be read",
            self.cache.problem() or "listing",
        )

    @property
    def listed(self) -> bool:
        return self.cache.synced

    def objects(self) -> list[dict[str, Any]]:
        return self.cache.all(EXTERNAL_SERVICE.name)

    def merge(self, config: Config) -> Merged:
        """The config with every resource's target added (see merge_resources)."""
        parsed = [
            parse_resource(obj, config.address_policy, config.allow_protected)
            for obj in self.objects()
        ]
        merged = merge_resources(config, parsed)
        applied = {
            r.key: r
            for r in merged.resources
            if r.target is not None and (r.namespace, r.name) not in merged.conflicts
        }
        with self._lock:
            self._merged, self._by_key = merged, applied
        return merged

    @property
    def held(self) -> frozenset[str]:
        """Services claimed by resources that are not valid: not pruned."""
        with self._lock:
            return self._merged.held if self._merged is not None else frozenset()

    # -- writing status

    def publish_unapplied(self) -> None:
        """The status of every resource that has no target of its own (invalid, or its
        Service is another's): written now, as nothing will be reconciled for it."""
        with self._lock:
            merged = self._merged
        if merged is None:
            return
        for resource in merged.resources:
            conflict = merged.conflicts.get((resource.namespace, resource.name))
            if resource.target is None or conflict is not None:
                self._publish(resource, conflict, None)

    def stale_generations(self) -> list[str]:
        """Targets of resources edited since their status was written (an edit that left the
        target as it was restarts nothing, but its status must say it was seen)."""
        with self._lock:
            return [
                key
                for key, resource in self._by_key.items()
                if (self._written.get(resource.uid) or {}).get("observedGeneration")
                not in (None, resource.generation)
            ]

    def publish(
        self,
        target: Target,
        result: TargetResult,
        live: LiveState,
        owner_id: str,
        unhealthy: Mapping[ProbeKey, str] | None = None,
    ) -> None:
        """After a resource's target was reconciled: its status, if it changed.
        `unhealthy`: what its probes call unhealthy, and why (None: it has no probes)."""
        if target.resource is None:
            return
        with self._lock:
            resource = self._by_key.get(target.key)
        if resource is None or resource.uid != target.resource.uid:
            return  # replaced or gone since
        observation = observe(target, result, live, owner_id)
        if unhealthy is not None:
            failing = tuple(f"{_host_port(key)} - {why}" for key, why in sorted(unhealthy.items()))
            observation = replace(observation, unhealthy=failing)
        self._publish(resource, None, observation)

    def _publish(
        self, resource: ParsedResource, conflict: str | None, observation: Observation | None
    ) -> None:
        standing = Standing(
            resource.generation, resource.service, resource.problems, conflict, observation
        )
        with self._lock:
            previous = self._written.get(resource.uid)
        if previous is None:
            cached = self.cache.get(EXTERNAL_SERVICE.name, resource.namespace, resource.name)
            previous = dict((cached or {}).get("status") or {})
        status = desired_status(previous, standing, _now())
        if status == previous:
            return
        try:
            self._kube.merge_patch(
                EXTERNAL_SERVICE.name,
                resource.namespace,
                resource.name,
                {"status": status},
                fence=self._fence,
                subresource="status",
            )
        except KubeNotFound:
            return  # deleted meanwhile
        except KubeError as exc:
            log.warning("%s: could not write its status: %s", resource.label, exc)
            return
        with self._lock:
            self._written[resource.uid] = status


def observe(target: Target, result: TargetResult, live: LiveState, owner_id: str) -> Observation:
    """What a reconcile's result says about a resource's target, for its status."""
    decision = result.decision
    objects = None
    if result.outcome.ok:
        owned = [
            obj
            for obj in (live.service, live.endpoints, *live.slices)
            if obj is not None and prunable_by(obj, owner_id)
        ]
        objects = tuple(
            sorted(f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}" for obj in owned)
        )
    if decision is None:
        return Observation(result.outcome.value, result.message, objects=objects)
    return Observation(
        result.outcome.value,
        result.message,
        ready=ready_count(decision.backends),
        total=len(decision.backends),
        tier=decision.tier,
        source=decision.source,
        objects=objects,
    )


def _host_port(key: ProbeKey) -> str:
    address, port = key
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["ResourceSet", "observe"]
