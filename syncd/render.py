"""Backends -> the Kubernetes objects the cluster should hold (pure; no I/O).

Rules this module encodes:

- An EndpointSlice has one address type and one port list, so backends are grouped by
  (address family, port set). The Ceph case (same Service port, backends on 8080 and 8081)
  therefore becomes two slices.
- Slices are packed up to the target's capacity. Assignment is *stable*: given the slices
  already in the cluster (`placement`), every backend that still exists stays in the slice
  that holds it, new backends go first into slices that change anyway, and only then into
  new slices. One backend change therefore rewrites one slice, not all of them.
- Not-ready backends stay in their slice with `conditions.ready: false`.
- No backends at all (a real empty answer) gives one empty placeholder slice.
- Legacy Endpoints get one subset per port set, not-ready backends in `notReadyAddresses`,
  and the skip-mirror label when slices are written too (else the mirroring controller would
  duplicate them).
"""

from __future__ import annotations

import functools
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from syncd.addresses import ip_sort_key, ip_version
from syncd.frozen import freeze
from syncd.kinds import EXTERNAL_SERVICE
from syncd.memo import WORTH_REMEMBERING, IdentityMemo, Memo
from syncd.model import AddressFamily, Backend, EndpointPort, PortSet, Target, port_set
from syncd.ownership import RESOURCE_LABEL, SERVICE_NAME_LABEL, SKIP_MIRROR_LABEL, ownership_labels

_MAX_NAME = 253


@dataclass(frozen=True, order=True)
class SliceKey:
    """What every endpoint in one slice shares: address family and port list."""

    family: AddressFamily
    ports: PortSet


@dataclass(frozen=True)
class PlacedSlice:
    """Which addresses a slice holds (read from the cluster, or decided by `pack_slices`)."""

    name: str
    key: SliceKey
    addresses: tuple[str, ...]


def slice_key_of(obj: Mapping[str, Any]) -> SliceKey | None:
    """The grouping key of a live EndpointSlice, or None if it is not one syncd could write."""
    try:
        family = AddressFamily(str(obj.get("addressType")))
    except ValueError:
        return None
    ports = port_set(
        *(
            EndpointPort(p.get("name") or "", int(p.get("port") or 0), p.get("protocol") or "TCP")
            for p in obj.get("ports") or ()
        )
    )
    return SliceKey(family, ports)


def placement_of(live_slices: Iterable[Mapping[str, Any]]) -> tuple[PlacedSlice, ...]:
    """Read the current packing of live (owned) slices, the input to stable assignment."""
    placed = (
        _PLACED.get_or(obj, None, functools.partial(_placed_slice, obj))
        if len(obj.get("endpoints") or ()) >= WORTH_REMEMBERING
        else _placed_slice(obj)
        for obj in live_slices
    )
    return tuple(p for p in placed if p is not None)


def _placed_slice(obj: Mapping[str, Any]) -> PlacedSlice | None:
    key = slice_key_of(obj)
    if key is None:
        return None
    addresses = tuple(
        address
        for endpoint in obj.get("endpoints") or ()
        for address in (endpoint.get("addresses") or ())[:1]
    )
    return PlacedSlice(obj["metadata"]["name"], key, addresses)


# Live slices are replaced, never edited: each one's placement is read once.
_PLACED: IdentityMemo[PlacedSlice | None] = IdentityMemo(16384)


def _name_prefix(service: str, key: SliceKey) -> str:
    family = "v4" if key.family is AddressFamily.IPV4 else "v6"
    ports = "-".join(
        f"{p.port}" if p.protocol == "TCP" else f"{p.port}{p.protocol.lower()}" for p in key.ports
    )
    prefix = f"{service}-{family}-{ports}" if ports else f"{service}-{family}"
    if len(prefix) > _MAX_NAME - 8:
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:10]
        prefix = f"{service}-{family}-{digest}"
    return prefix


def _by_ports(
    backends: Iterable[Backend],
) -> dict[PortSet, tuple[dict[str, Backend], dict[str, Backend]]]:
    """Backends by port set, then (IPv4, IPv6), then address.

    Backends in a row mostly share one interned port set: it is hashed once per run of
    them, not once per backend (what makes a 5,000-backend target cheap to render).
    """
    groups: dict[PortSet, tuple[dict[str, Backend], dict[str, Backend]]] = {}
    ports: PortSet | None = None
    families: tuple[dict[str, Backend], dict[str, Backend]] = ({}, {})
    for backend in backends:
        if backend.ports is not ports:
            ports = backend.ports
            families = groups.setdefault(ports, ({}, {}))
        families[":" in backend.address][backend.address] = backend
    return groups


def pack_slices(
    service: str,
    backends: Iterable[Backend],
    capacity: int,
    placement: Sequence[PlacedSlice] = (),
) -> tuple[PlacedSlice, ...]:
    """Decide which slice holds which address, keeping existing assignments where possible."""
    return _pack(service, _by_ports(backends), capacity, placement)


def _pack(
    service: str,
    by_ports: dict[PortSet, tuple[dict[str, Backend], dict[str, Backend]]],
    capacity: int,
    placement: Sequence[PlacedSlice],
) -> tuple[PlacedSlice, ...]:
    groups = {
        SliceKey(AddressFamily.IPV6 if v6 else AddressFamily.IPV4, ports): addresses
        for ports, by_family in by_ports.items()
        for v6, addresses in ((False, set(by_family[0])), (True, set(by_family[1])))
        if addresses
    }

    taken_names = {s.name for s in placement}
    if not groups:
        return (placeholder_slice(service),)
    result: list[PlacedSlice] = []
    for key in sorted(groups):
        wanted = groups[key]
        placed: set[str] = set()
        slots: list[tuple[str, list[str], bool]] = []
        unchanged: dict[str, PlacedSlice] = {}
        for live in sorted((s for s in placement if s.key == key), key=lambda s: s.name):
            keep = [a for a in live.addresses if a in wanted and a not in placed][:capacity]
            placed.update(keep)
            slots.append((live.name, keep, len(keep) != len(live.addresses)))
            if len(keep) == len(live.addresses):
                unchanged[live.name] = live
        pending = sorted(wanted - placed, key=ip_sort_key)
        # New addresses go first where a write happens anyway, then into any room left.
        for index in sorted(range(len(slots)), key=lambda i: (not slots[i][2], slots[i][0])):
            name, keep, _changed = slots[index]
            room = capacity - len(keep)
            if room > 0 and pending:
                slots[index] = (name, keep + pending[:room], True)
                pending = pending[room:]
        prefix = _name_prefix(service, key)
        counter = 0
        while pending:
            while f"{prefix}-{counter}" in taken_names:
                counter += 1
            name = f"{prefix}-{counter}"
            taken_names.add(name)
            slots.append((name, pending[:capacity], True))
            pending = pending[capacity:]
        result.extend(
            unchanged[name]  # as it is (and sorted already): no need to sort it again
            if not changed and name in unchanged
            else PlacedSlice(name, key, tuple(sorted(addresses, key=ip_sort_key)))
            for name, addresses, changed in slots
            if addresses
        )
    return tuple(sorted(result, key=lambda s: s.name))


def placeholder_slice(service: str) -> PlacedSlice:
    """The one empty slice of a Service whose registry lists no backends at all.

    Like the control plane's placeholder: it shows that syncd manages the Service and that
    the answer was "nothing", which an absent slice cannot tell apart from "not synced".
    """
    return PlacedSlice(f"{service}-empty", SliceKey(AddressFamily.IPV4, ()), ())


def _owner_references(target: Target, service_uid: str | None) -> list[dict[str, Any]]:
    """Slices and Endpoints belong to their Service (deleted with it); when syncd does not
    manage the Service, to the resource that declared the target, if one did."""
    if service_uid and (target.manage_service or target.resource is None):
        return [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "name": target.service,
                "uid": service_uid,
                "controller": True,
            }
        ]
    return _resource_owner(target)


def _resource_owner(target: Target) -> list[dict[str, Any]]:
    if target.resource is None:
        return []
    return [
        {
            "apiVersion": EXTERNAL_SERVICE.api_version,
            "kind": EXTERNAL_SERVICE.name,
            "name": target.resource.name,
            "uid": target.resource.uid,
            "controller": True,
        }
    ]


def _labels(target: Target, kind: str, owner_id: str) -> dict[str, str]:
    labels = ownership_labels(kind, owner_id)
    if target.resource is not None:
        labels[RESOURCE_LABEL] = target.resource.name
    return labels


def _ports_list(ports: PortSet) -> list[dict[str, Any]]:
    return [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in sorted(ports)]


def render_service(
    target: Target,
    owner_id: str,
    annotations: dict[str, str] | None = None,
    dual_stack: bool = False,
) -> dict[str, Any]:
    """The selectorless Service syncd creates when `manage_service` is on.

    No `targetPort`: without a selector the endpoint ports decide where traffic goes.
    `annotations` carry what syncd decided (the active failover tier). `dual_stack` (a
    target with IPv6 backends) asks for `ipFamilyPolicy: PreferDualStack` without naming
    families: a dual-stack cluster gives the Service a ClusterIP of each family, so
    kube-proxy programs the IPv6 endpoints too (a Service of one family only gets that
    family's); a single-stack cluster gives it its one family, and refuses nothing. It is
    set when the Service is created and not compared after: the server defaults it, and
    changing an existing Service's families is the owner's call (syncd warns instead).
    A headless target's Service gets `clusterIP: None` instead, also on create only (the
    API server refuses to change it): no ClusterIP, so its name answers every ready backend.
    """
    metadata: dict[str, Any] = {
        "name": target.service,
        "namespace": target.namespace,
        "labels": _labels(target, "Service", owner_id),
    }
    if target.resource is not None:
        metadata["ownerReferences"] = _resource_owner(target)
    if annotations:
        metadata["annotations"] = dict(annotations)
    spec: dict[str, Any] = {
        "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in target.ports]
    }
    if target.traffic_distribution:
        spec["trafficDistribution"] = target.traffic_distribution
    if target.headless:  # set on create only: a Service's clusterIP cannot change after
        spec["clusterIP"] = "None"
    elif dual_stack:
        spec["ipFamilyPolicy"] = "PreferDualStack"
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


def render_endpoint_slices(
    target: Target,
    backends: Iterable[Backend],
    owner_id: str,
    placement: Sequence[PlacedSlice] = (),
    service_uid: str | None = None,
    hints: bool = False,
) -> list[dict[str, Any]]:
    groups = _by_ports(backends)
    slices = []
    for placed in _pack(target.service, groups, target.max_endpoints_per_slice, placement):
        family = (
            groups[placed.key.ports][placed.key.family is AddressFamily.IPV6]
            if placed.addresses
            else {}
        )
        members = tuple(map(family.__getitem__, placed.addresses))
        # Keyed by the members' identities (cheap to hash), checked by equality on a hit
        # (identical members compare at once): unchanged slices are not built again.
        key: tuple[Any, ...] = (target.namespace, target.service, owner_id, service_uid, hints)
        key += (target.resource, target.manage_service)
        key += (placed, *map(id, members))
        hit = _SLICES.get(key) if len(members) >= WORTH_REMEMBERING else None
        if hit is not None and hit[0] == members:
            rendered = hit[1]
        else:
            rendered = _render_slice(target, placed, members, owner_id, service_uid, hints)
            if len(members) >= WORTH_REMEMBERING:  # shared from now on: read-only
                rendered = _SLICES.put(key, (members, freeze(rendered)))[1]
        slices.append(rendered)
    return slices


_SLICES: Memo[tuple[tuple[Backend, ...], dict[str, Any]]] = Memo(8192)  # rendered slices


def _render_slice(
    target: Target,
    placed: PlacedSlice,
    members: tuple[Backend, ...],
    owner_id: str,
    service_uid: str | None,
    hints: bool,
) -> dict[str, Any]:
    """One EndpointSlice (shared through the memo: never edit it)."""
    metadata: dict[str, Any] = {
        "name": placed.name,
        "namespace": target.namespace,
        "labels": {
            SERVICE_NAME_LABEL: target.service,
            **_labels(target, "EndpointSlice", owner_id),
        },
    }
    references = _owner_references(target, service_uid)
    if references:
        metadata["ownerReferences"] = references
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": placed.key.family.value,
        "endpoints": [_endpoint(backend, hints) for backend in members],
        "ports": _ports_list(placed.key.ports),
    }


def _endpoint(backend: Backend, hints: bool) -> dict[str, Any]:
    """One endpoint; its zone when known, and the hint kube-proxy follows to keep clients
    in their zone (like the control plane's, for PreferClose: the endpoint's own zone)."""
    endpoint: dict[str, Any] = {
        "addresses": [backend.address],
        "conditions": {"ready": backend.ready},
    }
    if backend.hostname:  # the cluster DNS answers <hostname>.<service>.<namespace>.svc
        endpoint["hostname"] = backend.hostname
    if backend.zone:
        endpoint["zone"] = backend.zone
        if hints:
            endpoint["hints"] = {"forZones": [{"name": backend.zone}]}
    return endpoint


def render_endpoints(
    target: Target,
    backends: Iterable[Backend],
    owner_id: str,
    service_uid: str | None = None,
) -> dict[str, Any]:
    """Legacy v1 Endpoints (deprecated since Kubernetes 1.33, still served): opt-in output."""
    by_ports: dict[PortSet, dict[bool, set[str]]] = defaultdict(lambda: {True: set(), False: set()})
    names: dict[str, str] = {}
    for backend in backends:
        by_ports[backend.ports][backend.ready].add(backend.address)
        if backend.hostname:
            names[backend.address] = backend.hostname
    subsets = []
    for ports in sorted(by_ports):
        subset: dict[str, Any] = {}
        for ready, field in ((True, "addresses"), (False, "notReadyAddresses")):
            addresses = sorted(by_ports[ports][ready], key=ip_sort_key)
            if addresses:
                subset[field] = [_endpoint_address(address, names) for address in addresses]
        subset["ports"] = _ports_list(ports)
        subsets.append(subset)
    labels = _labels(target, "Endpoints", owner_id)
    if target.output.slices:
        labels[SKIP_MIRROR_LABEL] = "true"
    metadata: dict[str, Any] = {
        "name": target.service,
        "namespace": target.namespace,
        "labels": labels,
    }
    references = _owner_references(target, service_uid)
    if references:
        metadata["ownerReferences"] = references
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": metadata, "subsets": subsets}


def _endpoint_address(address: str, names: dict[str, str]) -> dict[str, str]:
    name = names.get(address)
    return {"ip": address, "hostname": name} if name else {"ip": address}


def render_target(
    target: Target,
    backends: Iterable[Backend],
    owner_id: str,
    placement: Sequence[PlacedSlice] = (),
    service_uid: str | None = None,
    include_service: bool | None = None,
    service_annotations: dict[str, str] | None = None,
    hints: bool = False,
) -> list[dict[str, Any]]:
    """Every object the target should have, Service first (what `syncd render` prints)."""
    backends = list(backends)
    objects: list[dict[str, Any]] = []
    if target.manage_service if include_service is None else include_service:
        dual_stack = any(ip_version(b.address) == 6 for b in backends)
        objects.append(render_service(target, owner_id, service_annotations, dual_stack))
    if target.output.endpoints:
        objects.append(render_endpoints(target, backends, owner_id, service_uid))
    if target.output.slices:
        objects.extend(
            render_endpoint_slices(target, backends, owner_id, placement, service_uid, hints)
        )
    return objects
