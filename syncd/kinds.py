"""Every object kind syncd reads or writes, as one row of a table (pure; no I/O).

A row says where the kind lives in the REST API, which label marks it as syncd's, what the
cluster cache lists and watches of it, which fields syncd manages (its *view*: equal views
mean "no write needed"), which fields matter when something else changes it (its *watch
view*), what the cache keeps of it, and how it is updated. Adding a kind is adding a row.

What the cache selects, and why:

- Services: all of them (in the namespaces syncd may touch). A same-named Service with a
  selector, or one syncd does not own, is a conflict that must be seen without a read.
- EndpointSlices and Endpoints: everything *except* what the control plane itself manages
  (`endpointslice-controller.k8s.io`, `endpoint-controller`: the bulk of a cluster, one per
  pod-backed Service). That keeps syncd's own objects, other syncd instances', mirrored
  slices and hand-made ones: exactly what ownership checks and warnings need.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from syncd.addresses import ip_sort_key
from syncd.frozen import freeze
from syncd.memo import WORTH_REMEMBERING, IdentityMemo

_VIEWS: IdentityMemo[dict[str, Any]] = IdentityMemo(16384)  # managed views, per object

APP_MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
SLICE_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
OWNER_LABEL = "syncd.io/owner"
RESOURCE_LABEL = "syncd.io/resource"  # the ExternalService an object was written for
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
ANNOTATION_PREFIX = "syncd.io/"

# Labels syncd sets or removes itself; any other label on an owned object is left alone.
MANAGED_LABEL_KEYS = frozenset(
    {
        SERVICE_NAME_LABEL,
        SLICE_MANAGED_BY_LABEL,
        APP_MANAGED_BY_LABEL,
        OWNER_LABEL,
        SKIP_MIRROR_LABEL,
        RESOURCE_LABEL,
    }
)

Obj = Mapping[str, Any]
View = dict[str, Any]


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def is_label_value(value: object) -> bool:
    """A valid Kubernetes label value (also what zone names in hints must be)."""
    return isinstance(value, str) and len(value) <= 63 and bool(_LABEL_VALUE.match(value))


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
HOSTNAME_RULE = "lowercase letters, digits and '-', at most 63, starting and ending alphanumeric"


def is_hostname(value: object) -> bool:
    """An endpoint's hostname as the API server takes it: a DNS-1123 label."""
    return isinstance(value, str) and len(value) <= 63 and bool(_DNS_LABEL.match(value))


def registry_hostname(name: str) -> str | None:
    """A registry's name for a backend as an endpoint hostname: DNS names are
    case-insensitive, so it is lowercased; None when it still is not a DNS-1123 label."""
    lowered = name.strip().lower()
    return lowered if is_hostname(lowered) else None


def labels_of(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def normal_ports(ports: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Port lists compared as sets: name, number, protocol (TCP when unset)."""
    return sorted(
        (
            {
                "name": p.get("name") or "",
                "port": p.get("port"),
                "protocol": p.get("protocol") or "TCP",
            }
            for p in ports or ()
        ),
        key=lambda p: (p["name"], p["port"] or 0, p["protocol"]),
    )


def owner_refs(obj: Obj) -> list[dict[str, Any]]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return sorted(
        (
            {k: ref.get(k) for k in ("apiVersion", "kind", "name", "uid", "controller")}
            for ref in refs
        ),
        key=lambda r: (r["kind"] or "", r["name"] or ""),
    )


def is_resource_ref(ref: Mapping[str, Any]) -> bool:
    """An ownerReference to an ExternalService: syncd sets and removes these itself."""
    return ref.get("kind") == "ExternalService" and str(ref.get("apiVersion", "")).startswith(
        "syncd.io/"
    )


def _common_view(obj: Obj, compare_owner_refs: bool) -> View:
    labels = {k: v for k, v in labels_of(obj).items() if k in MANAGED_LABEL_KEYS}
    view: View = {"labels": dict(sorted(labels.items()))}
    refs = owner_refs(obj)
    if compare_owner_refs:
        view["ownerReferences"] = refs
    else:  # a reference to a resource is syncd's own: one left behind is a difference
        view["resourceOwners"] = [ref for ref in refs if is_resource_ref(ref)]
    return view


def _kept_foreign_refs(live_metadata: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The live object's ownerReferences without syncd's to a resource (None: none left)."""
    kept = [r for r in live_metadata.get("ownerReferences") or () if not is_resource_ref(r)]
    return kept or None


def _slice_fields(obj: Obj) -> View:
    """Each endpoint as (address, ready, zone, hinted zones, hostname), in one order
    whoever wrote them: compared for equality only, so tuples in plain sort order will do."""
    endpoints = sorted(
        (
            (e.get("addresses") or ("",))[0],
            (e.get("conditions") or _NO_CONDITIONS).get("ready") is not False,
            e.get("zone") or "",
            _hinted_zones(e.get("hints")),
            e.get("hostname") or "",
        )
        for e in obj.get("endpoints") or ()
    )
    return {
        "addressType": obj.get("addressType"),
        "ports": normal_ports(obj.get("ports")),
        "endpoints": endpoints,
    }


_NO_CONDITIONS: Mapping[str, Any] = {}


def _hinted_zones(hints: Mapping[str, Any] | None) -> tuple[str, ...]:
    if not hints:
        return ()
    return tuple(sorted(z.get("name") or "" for z in hints.get("forZones") or ()))


_SLICE_ENDPOINT_FIELDS = ("address", "ready", "zone", "hints", "hostname")


def readable_view(view: View) -> View:
    """A view for people: slice endpoints as named fields, in address order."""
    endpoints = view.get("endpoints")
    if view.get("addressType") is None or not endpoints:
        return view
    named: list[dict[str, Any]] = []
    for endpoint in sorted(endpoints, key=lambda e: ip_sort_key(e[0])):
        fields = dict(zip(_SLICE_ENDPOINT_FIELDS, endpoint, strict=True))
        fields["hints"] = list(fields["hints"])
        named.append({k: v for k, v in fields.items() if v != ""})
    return {**view, "endpoints": named}


def _endpoints_addresses(addresses: Iterable[Mapping[str, Any]] | None) -> list[str]:
    """'ip' or 'ip hostname', in address order."""
    return sorted(
        (" ".join(filter(None, (a.get("ip"), a.get("hostname")))) for a in addresses or ()),
        key=lambda text: ip_sort_key(text.split(" ", 1)[0]),
    )


def _endpoints_fields(obj: Obj) -> View:
    subsets = [
        {
            "ports": normal_ports(subset.get("ports")),
            "addresses": _endpoints_addresses(subset.get("addresses")),
            "notReadyAddresses": _endpoints_addresses(subset.get("notReadyAddresses")),
        }
        for subset in obj.get("subsets") or ()
    ]
    return {"subsets": sorted(subsets, key=lambda s: repr(s["ports"]))}


TRAFFIC_DISTRIBUTION = "spec.trafficDistribution"  # alpha (dropped) on Kubernetes 1.30


def _service_fields(obj: Obj) -> View:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {
        "ports": normal_ports((obj.get("spec") or {}).get("ports")),
        "trafficDistribution": (obj.get("spec") or {}).get("trafficDistribution"),
        "annotations": dict(
            sorted((k, v) for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIX))
        ),
    }


def _slice_size(obj: Obj) -> str:
    endpoints = obj.get("endpoints") or ()
    not_ready = sum(1 for e in endpoints if (e.get("conditions") or {}).get("ready") is False)
    return f"{len(endpoints)} endpoints" + (f", {not_ready} not ready" if not_ready else "")


def _endpoints_size(obj: Obj) -> str:
    count = sum(
        len(s.get("addresses") or ()) + len(s.get("notReadyAddresses") or ())
        for s in obj.get("subsets") or ()
    )
    return f"{count} addresses"


def _no_size(obj: Obj) -> str:
    return ""


def _service_identity(obj: Obj) -> View:
    """What else about a Service decides how syncd treats it (ownership, conflicts)."""
    spec = obj.get("spec") or {}
    metadata = obj.get("metadata") or {}
    return {
        "uid": metadata.get("uid"),
        "allLabels": labels_of(obj),
        "selector": bool(spec.get("selector")),
        "type": spec.get("type") or "ClusterIP",
        "trafficDistribution": spec.get("trafficDistribution"),
    }


def _identity(obj: Obj) -> View:
    metadata = obj.get("metadata") or {}
    return {"uid": metadata.get("uid"), "allLabels": labels_of(obj)}


def guarded_replacement(desired_obj: Obj, live: Obj) -> dict[str, Any]:
    """The desired object, keeping the live object's identity and other people's metadata."""
    desired = dict(desired_obj)
    live_metadata = dict(live.get("metadata") or {})
    metadata = dict(desired["metadata"])
    foreign_labels = {
        k: v for k, v in (live_metadata.get("labels") or {}).items() if k not in MANAGED_LABEL_KEYS
    }
    metadata["labels"] = {**foreign_labels, **metadata.get("labels", {})}
    for key in ("resourceVersion", "annotations"):
        if live_metadata.get(key) is not None:
            metadata[key] = live_metadata[key]
    if "ownerReferences" not in metadata:
        kept = _kept_foreign_refs(live_metadata)
        if kept:
            metadata["ownerReferences"] = kept
    desired["metadata"] = metadata
    return desired


def _service_patch(desired: Obj, live: Obj) -> dict[str, Any]:
    """A Service is shared with its owner and the API server (clusterIP, selector ...):
    syncd patches only its own labels and annotations, the ports and trafficDistribution."""
    desired_labels = desired.get("metadata", {}).get("labels", {})
    live_labels = live.get("metadata", {}).get("labels") or {}
    labels: dict[str, Any] = {k: None for k in live_labels if k in MANAGED_LABEL_KEYS}
    labels.update(desired_labels)
    desired_annotations = desired.get("metadata", {}).get("annotations") or {}
    live_annotations = live.get("metadata", {}).get("annotations") or {}
    annotations: dict[str, Any] = {
        k: None for k in live_annotations if k.startswith(ANNOTATION_PREFIX)
    }
    annotations.update(desired_annotations)
    metadata: dict[str, Any] = {"labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    desired_refs = desired.get("metadata", {}).get("ownerReferences")
    live_metadata = live.get("metadata") or {}
    if desired_refs:  # declared by a resource: owned by it
        metadata["ownerReferences"] = desired_refs
    elif any(is_resource_ref(r) for r in live_metadata.get("ownerReferences") or ()):
        metadata["ownerReferences"] = _kept_foreign_refs(live_metadata)  # None removes them
    desired_spec = desired.get("spec", {})
    return {
        "metadata": metadata,
        "spec": {
            "ports": desired_spec.get("ports", []),
            "trafficDistribution": desired_spec.get("trafficDistribution"),  # None removes it
        },
    }


@dataclass(frozen=True)
class Kind:
    """One row of the table: everything syncd needs to know about an object kind."""

    name: str
    api_version: str  # "v1" or "group/version"
    plural: str
    managed_by_label: str  # set to "syncd" on the objects syncd owns
    cache_selector: str | None  # what the cache lists and watches (None: not cached)
    # how an update is sent: a JSON merge patch built by this (desired, live), or (None) the
    # whole object with a guarded PUT (guarded_replacement)
    merge_patch: Callable[[Obj, Obj], dict[str, Any]] | None
    apply_order: int  # creates/updates in ascending order, deletes in descending order
    fields: Callable[[Obj], View]  # the managed fields beyond labels and ownerReferences
    identity: Callable[[Obj], View]  # what else a watch event must change to matter
    size: Callable[[Obj], str] = _no_size  # how much it holds, for one-line reports

    @property
    def base_path(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"

    def collection_path(self, namespace: str | None) -> str:
        if namespace:
            return f"{self.base_path}/namespaces/{namespace}/{self.plural}"
        return f"{self.base_path}/{self.plural}"

    def item_path(self, namespace: str, name: str) -> str:
        return f"{self.collection_path(namespace)}/{name}"

    def view(self, obj: Obj, compare_owner_refs: bool = True) -> View:
        """The fields syncd manages, normalised: equal views mean no write is needed.
        Computed once per large object (objects are replaced, never edited; do not edit it)."""
        if len(obj.get("endpoints") or ()) < WORTH_REMEMBERING:
            return {**_common_view(obj, compare_owner_refs), **self.fields(obj)}
        return _VIEWS.get_or(
            obj,
            compare_owner_refs,
            lambda: freeze({**_common_view(obj, compare_owner_refs), **self.fields(obj)}),
        )

    def watch_view(self, obj: Obj) -> View:
        """Managed fields plus identity: a watch event that leaves this equal is noise."""
        return {**self.view(obj), **self.identity(obj)}


SERVICE = Kind(
    name="Service",
    api_version="v1",
    plural="services",
    managed_by_label=APP_MANAGED_BY_LABEL,
    cache_selector="",
    merge_patch=_service_patch,
    apply_order=0,
    fields=_service_fields,
    identity=_service_identity,
)
ENDPOINTS = Kind(
    name="Endpoints",
    api_version="v1",
    plural="endpoints",
    managed_by_label=APP_MANAGED_BY_LABEL,
    cache_selector="endpoints.kubernetes.io/managed-by!=endpoint-controller",
    merge_patch=None,
    apply_order=1,
    fields=_endpoints_fields,
    identity=_identity,
    size=_endpoints_size,
)
ENDPOINT_SLICE = Kind(
    name="EndpointSlice",
    api_version="discovery.k8s.io/v1",
    plural="endpointslices",
    managed_by_label=SLICE_MANAGED_BY_LABEL,
    cache_selector="endpointslice.kubernetes.io/managed-by!=endpointslice-controller.k8s.io",
    merge_patch=None,
    apply_order=2,
    fields=_slice_fields,
    identity=_identity,
    size=_slice_size,
)
EVENT = Kind(
    name="Event",
    api_version="v1",
    plural="events",
    managed_by_label=APP_MANAGED_BY_LABEL,
    cache_selector=None,
    merge_patch=None,
    apply_order=9,
    fields=lambda obj: {},
    identity=_identity,
)

LEASE = Kind(
    name="Lease",
    api_version="coordination.k8s.io/v1",
    plural="leases",
    managed_by_label=APP_MANAGED_BY_LABEL,
    cache_selector=None,
    merge_patch=None,
    apply_order=9,
    fields=lambda obj: {},
    identity=_identity,
)


def _resource_fields(obj: Obj) -> View:
    metadata = obj.get("metadata") or {}
    return {"spec": obj.get("spec"), "generation": metadata.get("generation")}


# What teams declare targets with (syncd.config.resource): read by a cache of its own, with
# its status written through the status subresource. A status change alone is noise.
EXTERNAL_SERVICE_API_VERSION = "syncd.io/v1alpha1"
EXTERNAL_SERVICE = Kind(
    name="ExternalService",
    api_version=EXTERNAL_SERVICE_API_VERSION,
    plural="externalservices",
    managed_by_label=APP_MANAGED_BY_LABEL,
    cache_selector="",
    merge_patch=None,
    apply_order=9,
    fields=_resource_fields,
    identity=_identity,
)


def _node_fields(obj: Obj) -> View:
    """What makes a Node one of the cluster's networks (syncd.cluster_networks)."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return {
        "podCIDRs": sorted(
            spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        ),
        "addresses": sorted(
            (a.get("type") or "", a.get("address") or "") for a in status.get("addresses") or ()
        ),
    }


def _service_cidr_fields(obj: Obj) -> View:
    return {"cidrs": sorted((obj.get("spec") or {}).get("cidrs") or ())}


# The cluster's own networks, read (never written) so that resources cannot point into them.
NODE = Kind(
    name="Node",
    api_version="v1",
    plural="nodes",
    managed_by_label=APP_MANAGED_BY_LABEL,
    cache_selector="",
    merge_patch=None,
    apply_order=9,
    fields=_node_fields,
    identity=_identity,
)
SERVICE_CIDR = Kind(  # networking.k8s.io/v1 since Kubernetes 1.33
    name="ServiceCIDR",
    api_version="networking.k8s.io/v1",
    plural="servicecidrs",
    managed_by_label=APP_MANAGED_BY_LABEL,
    cache_selector="",
    merge_patch=None,
    apply_order=9,
    fields=_service_cidr_fields,
    identity=_identity,
)

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        SERVICE,
        ENDPOINTS,
        ENDPOINT_SLICE,
        EVENT,
        LEASE,
        EXTERNAL_SERVICE,
        NODE,
        SERVICE_CIDR,
    )
}
CACHED_KINDS: tuple[Kind, ...] = (SERVICE, ENDPOINTS, ENDPOINT_SLICE)


def kind_of(obj: Obj) -> Kind:
    return KINDS[obj.get("kind", "")]


ObjectId = tuple[str, str, str]  # kind, namespace, name


def object_id(obj: Obj) -> ObjectId:
    metadata = obj.get("metadata") or {}
    return (obj.get("kind", ""), metadata.get("namespace", ""), metadata.get("name", ""))


def describe_object(obj: Obj) -> str:
    kind, namespace, name = object_id(obj)
    return f"{kind} {namespace}/{name}"


def target_key_of(obj: Obj) -> str:
    """The namespace/service an object belongs to (slices name theirs in a label)."""
    metadata = obj.get("metadata") or {}
    if obj.get("kind") == ENDPOINT_SLICE.name:
        service = labels_of(obj).get(SERVICE_NAME_LABEL, "")
    else:
        service = metadata.get("name", "")
    return sys.intern(f"{metadata.get('namespace', '')}/{service}")  # as Target.key
