"""What the cluster cache keeps of each kind of object: only what syncd reads, with the
strings and lists that thousands of objects share stored once.

A trimmed object is what `syncd.cache` stores and what every reader of the cache sees,
so a field is kept here exactly when something in syncd reads it from a live object
(kinds' views, ownership, placement, the resources' parse). A kind not in the table is
kept whole, with its metadata trimmed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from syncd.kinds import ENDPOINT_SLICE, EXTERNAL_SERVICE, NODE, SERVICE, SERVICE_CIDR, Obj

# Thousands of objects share a handful of label keys and values,
# namespaces, port lists and readiness conditions: those are stored once (interned or
# shared), not once per object. Cached objects are never modified, so sharing is safe.

_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")
_SHARED: dict[Any, Any] = {}


def _text(value: Any) -> Any:
    return sys.intern(value) if isinstance(value, str) else value


def _strings(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    return {_text(k): _text(v) for k, v in (mapping or {}).items()}


def _trim_metadata(obj: Obj) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    kept: dict[str, Any] = {k: metadata[k] for k in _KEPT_METADATA if k in metadata}
    if "namespace" in kept:
        kept["namespace"] = _text(kept["namespace"])
    for key in ("labels", "annotations"):
        if metadata.get(key):
            kept[key] = _strings(metadata[key])
    if metadata.get("ownerReferences"):
        kept["ownerReferences"] = [_strings(ref) for ref in metadata["ownerReferences"]]
    return kept


def _shared_ports(ports: Any) -> Any:
    if not ports:
        return ports
    key = tuple(tuple(sorted(_strings(p).items())) for p in ports)
    if key not in _SHARED:
        _SHARED[key] = [dict(items) for items in key]
    return _SHARED[key]


def _shared_list(values: Any) -> Any:
    key = ("list", *map(_text, values))
    if key not in _SHARED:
        _SHARED[key] = list(key[1:])
    return _SHARED[key]


_CONDITIONS = {ready: {"ready": ready} for ready in (True, False, None)}


class CachedEndpoint(NamedTuple):
    """A live slice endpoint as the cache keeps it: read like the dict it was (`get`), at a
    third of its size, as a daemon holds one per backend. Of its addresses only the first
    is kept: it is the only one syncd reads, and the only one a slice written by syncd or
    by the EndpointSlice controller has."""

    address: str | None
    conditions: Mapping[str, Any]
    zone: str | None
    hints: Any
    hostname: str | None

    def get(self, key: str, default: Any = None) -> Any:
        if key == "addresses":
            return default if self.address is None else (self.address,)
        value = getattr(self, key, None) if key in _ENDPOINT_KEYS else None
        return default if value is None else value


_ENDPOINT_KEYS = frozenset(("conditions", "zone", "hints", "hostname"))


def _trim_service(obj: Obj) -> dict[str, Any]:
    """Of its spec, what ownership, conflicts and warnings read; the values thousands of
    Services share (type, families) stored once. Of its clusterIP only whether it has
    one: `None` (headless) is kept, an address is not (10,000 unique strings)."""
    spec = obj.get("spec") or {}
    kept: dict[str, Any] = {k: spec[k] for k in ("selector", "trafficDistribution") if k in spec}
    if "type" in spec:
        kept["type"] = _text(spec["type"])
    if spec.get("ipFamilies"):
        kept["ipFamilies"] = _shared_list(spec["ipFamilies"])
    if spec.get("clusterIP") == "None":
        kept["clusterIP"] = "None"
    kept["ports"] = _shared_ports(spec.get("ports"))
    return {
        "metadata": _trim_metadata(obj),
        "spec": kept,
    }


def _trim_slice(obj: Obj) -> dict[str, Any]:
    """Endpoints keep their addresses, readiness, zone, hints and hostname: syncd writes
    slices whole from what it decided, so the rest of a live endpoint is never needed."""
    endpoints = [
        CachedEndpoint(
            _text(next(iter(e.get("addresses") or ()), None)),
            _CONDITIONS.get((e.get("conditions") or {}).get("ready"), _CONDITIONS[None]),
            _text(e.get("zone")) or None,
            e.get("hints") or None,
            e.get("hostname") or None,
        )
        for e in obj.get("endpoints") or ()
    ]
    return {
        "metadata": _trim_metadata(obj),
        "addressType": _text(obj.get("addressType")),
        "endpoints": endpoints,
        "ports": _shared_ports(obj.get("ports")),
    }


def _trim_resource(obj: Obj) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    return {
        "metadata": {
            key: metadata.get(key)
            for key in ("name", "namespace", "uid", "resourceVersion", "generation")
        }
        | {"creationTimestamp": metadata.get("creationTimestamp")},
        "spec": obj.get("spec") or {},
        "status": obj.get("status") or {},
    }


def _trim_node(obj: Obj) -> dict[str, Any]:
    """A Node is large (images, conditions, capacity): only its networks are kept."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return {
        "metadata": _trim_metadata(obj),
        "spec": {k: spec[k] for k in ("podCIDR", "podCIDRs") if k in spec},
        "status": {"addresses": list(status.get("addresses") or ())},
    }


def _trim_service_cidr(obj: Obj) -> dict[str, Any]:
    return {
        "metadata": _trim_metadata(obj),
        "spec": {"cidrs": list((obj.get("spec") or {}).get("cidrs") or ())},
    }


def _trim_whole(obj: Obj) -> dict[str, Any]:
    return {**obj, "metadata": _trim_metadata(obj)}


TRIMS: dict[str, Callable[[Obj], dict[str, Any]]] = {
    SERVICE.name: _trim_service,
    ENDPOINT_SLICE.name: _trim_slice,
    EXTERNAL_SERVICE.name: _trim_resource,
    NODE.name: _trim_node,
    SERVICE_CIDR.name: _trim_service_cidr,
}


def trimmed(kind_name: str, api_version: str, obj: Obj) -> dict[str, Any]:
    """What the cache keeps of `obj` (a list's items carry no kind: it is set here)."""
    kept = TRIMS.get(kind_name, _trim_whole)(obj)
    kept["apiVersion"], kept["kind"] = api_version, kind_name
    return kept


__all__ = ["TRIMS", "trimmed"]
