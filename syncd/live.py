"""What the cluster holds for one target, and what that says was applied (pure).

The policy's memory (active tier, what was applied) is seeded from here whenever a target
(re)starts, so the removal guard works on the first decision of a process, after a reload
and after a leader change alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from syncd.kinds import ENDPOINT_SLICE, ENDPOINTS, SERVICE, Obj
from syncd.model import Backend, EndpointPort, Target, port_set
from syncd.ownership import ACTIVE_TIER_ANNOTATION, updatable_by
from syncd.policy import PolicyState
from syncd.render import slice_key_of


@dataclass(frozen=True)
class LiveState:
    """What the cluster holds for one target, by kind: its Service, Endpoints and every
    slice labelled for the Service (syncd's and anybody else's)."""

    objects: Mapping[str, tuple[Obj, ...]] = field(default_factory=dict)  # kind -> objects
    offline: bool = False  # `render`: there is no cluster; objects get no ownerReferences
    unsupported: frozenset[tuple[str, str]] = frozenset()  # (field, value) the server drops

    @classmethod
    def of(
        cls, service: Obj | None = None, endpoints: Obj | None = None, slices: Sequence[Obj] = ()
    ) -> LiveState:
        return cls(
            {
                SERVICE.name: (service,) if service is not None else (),
                ENDPOINTS.name: (endpoints,) if endpoints is not None else (),
                ENDPOINT_SLICE.name: tuple(slices),
            }
        )

    @property
    def service(self) -> Obj | None:
        return next(iter(self.objects.get(SERVICE.name, ())), None)

    @property
    def endpoints(self) -> Obj | None:
        return next(iter(self.objects.get(ENDPOINTS.name, ())), None)

    @property
    def slices(self) -> tuple[Obj, ...]:
        return self.objects.get(ENDPOINT_SLICE.name, ())

    def owned_slices(self, owner_id: str) -> list[Obj]:
        return [obj for obj in self.slices if updatable_by(obj, owner_id)]

    def foreign_slices(self, owner_id: str) -> list[Obj]:
        return [obj for obj in self.slices if not updatable_by(obj, owner_id)]


OFFLINE = LiveState(offline=True)


def backends_of_slices(slices: Iterable[Obj]) -> frozenset[Backend]:
    """The backends that live EndpointSlices hold (inverse of rendering)."""
    backends = set()
    for obj in slices:
        key = slice_key_of(obj)
        if key is None or not key.ports:
            continue
        for endpoint in obj.get("endpoints") or ():
            address = (endpoint.get("addresses") or [""])[0]
            ready = (endpoint.get("conditions") or {}).get("ready") is not False
            zone, hostname = endpoint.get("zone"), endpoint.get("hostname")
            backends.add(Backend(address, key.ports, ready, zone, hostname))
    return frozenset(backends)


def backends_of_endpoints(endpoints: Obj | None) -> frozenset[Backend]:
    """The backends a live v1 Endpoints object holds (inverse of rendering)."""
    backends = set()
    for subset in (endpoints or {}).get("subsets") or ():
        ports = port_set(
            *(
                EndpointPort(
                    p.get("name") or "", int(p.get("port") or 0), p.get("protocol") or "TCP"
                )
                for p in subset.get("ports") or ()
            )
        )
        if not ports:
            continue
        for field_name, ready in (("addresses", True), ("notReadyAddresses", False)):
            for address in subset.get(field_name) or ():
                backends.add(
                    Backend(address.get("ip", ""), ports, ready, None, address.get("hostname"))
                )
    return frozenset(backends)


def seed_memory(target: Target, live: LiveState, owner_id: str, *, one_shot: bool) -> PolicyState:
    """What the cluster says was applied last: the policy's memory when a target (re)starts.

    The applied backends come from syncd's own slices (or its Endpoints when it writes
    only those), the active tier from the Service's annotation. A one-shot run has no
    memory of how long a higher tier has qualified, so it fails back as soon as it finds one
    qualifying; the daemon starts counting `failback_after` from its own start.
    """
    service = (
        live.service if live.service is not None and updatable_by(live.service, owner_id) else None
    )
    annotations = ((service or {}).get("metadata") or {}).get("annotations") or {}
    tier = annotations.get(ACTIVE_TIER_ANNOTATION) or ""
    if target.output.slices:
        applied = backends_of_slices(live.owned_slices(owner_id))
    else:
        owned = (
            live.endpoints
            if live.endpoints is not None and updatable_by(live.endpoints, owner_id)
            else None
        )
        applied = backends_of_endpoints(owned)
    since: tuple[float | None, ...] = (float("-inf"),) * len(target.sources) if one_shot else ()
    return PolicyState(
        active=int(tier) if tier.isdigit() and int(tier) < len(target.sources) else None,
        applied=applied or None,
        qualified_since=since,
    )


__all__ = [
    "OFFLINE",
    "LiveState",
    "backends_of_endpoints",
    "backends_of_slices",
    "seed_memory",
]
