"""Desired objects vs live objects -> the smallest list of writes (pure; no I/O).

Objects are compared only on the fields syncd manages (see `managed_view`): server-set
fields, defaults and other people's labels never cause a write, so a converged target plans
nothing. Order matters for traffic: creates and updates come before deletes, so a Service
never has fewer endpoints mid-way than before or after; the Service itself is created first
and deleted last.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from syncd.ownership import ANNOTATION_PREFIX, MANAGED_LABEL_KEYS, labels_of

ObjectId = tuple[str, str, str]  # kind, namespace, name


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


def object_id(obj: Mapping[str, Any]) -> ObjectId:
    metadata = obj.get("metadata") or {}
    return (obj.get("kind", ""), metadata.get("namespace", ""), metadata.get("name", ""))


def describe_object(obj: Mapping[str, Any]) -> str:
    kind, namespace, name = object_id(obj)
    return f"{kind} {namespace}/{name}"


def _ip_key(address: str) -> tuple[int, int]:
    try:
        ip = ipaddress.ip_address(address)
        return (ip.version, int(ip))
    except ValueError:
        return (9, 0)


def _ports(ports: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
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


def _owner_refs(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return sorted(
        (
            {k: ref.get(k) for k in ("apiVersion", "kind", "name", "uid", "controller")}
            for ref in refs
        ),
        key=lambda r: (r["kind"] or "", r["name"] or ""),
    )


def managed_view(obj: Mapping[str, Any], compare_owner_refs: bool = True) -> dict[str, Any]:
    """The part of an object syncd decides, normalized so that equal means 'no write needed'."""
    kind = obj.get("kind", "")
    labels = {k: v for k, v in labels_of(obj).items() if k in MANAGED_LABEL_KEYS}
    view: dict[str, Any] = {"labels": dict(sorted(labels.items()))}
    if compare_owner_refs:
        view["ownerReferences"] = _owner_refs(obj)
    if kind == "EndpointSlice":
        view["addressType"] = obj.get("addressType")
        view["ports"] = _ports(obj.get("ports"))
        endpoints = [
            {
                "address": (e.get("addresses") or [""])[0],
                "ready": (e.get("conditions") or {}).get("ready") is not False,
            }
            for e in obj.get("endpoints") or ()
        ]
        view["endpoints"] = sorted(endpoints, key=lambda e: _ip_key(e["address"]))
    elif kind == "Endpoints":
        subsets = []
        for subset in obj.get("subsets") or ():
            subsets.append(
                {
                    "ports": _ports(subset.get("ports")),
                    "addresses": sorted(
                        (a.get("ip") for a in subset.get("addresses") or ()), key=_ip_key
                    ),
                    "notReadyAddresses": sorted(
                        (a.get("ip") for a in subset.get("notReadyAddresses") or ()), key=_ip_key
                    ),
                }
            )
        view["subsets"] = sorted(subsets, key=lambda s: repr(s["ports"]))
    elif kind == "Service":
        view["ports"] = _ports((obj.get("spec") or {}).get("ports"))
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        view["annotations"] = dict(
            sorted((k, v) for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIX))
        )
    return view


class _IndentedDumper(yaml.SafeDumper):
    """Indents list items under their key, which reads better in a diff."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)


def _yaml(data: Any) -> list[str]:
    return yaml.dump(data, Dumper=_IndentedDumper, sort_keys=False).splitlines()


@dataclass(frozen=True)
class Change:
    """One write: create `desired`, update `live` to `desired`, or delete `live`."""

    action: Action
    kind: str
    namespace: str
    name: str
    desired: Mapping[str, Any] | None = None
    live: Mapping[str, Any] | None = None

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def summary(self, planned: bool = False) -> str:
        """One line for the user: what happens (or would) to which object, and its size."""
        detail = ""
        obj = self.desired if self.desired is not None else self.live
        if self.kind == "EndpointSlice" and obj is not None:
            endpoints = obj.get("endpoints") or ()
            not_ready = sum(
                1 for e in endpoints if (e.get("conditions") or {}).get("ready") is False
            )
            detail = f" ({len(endpoints)} endpoints" + (
                f", {not_ready} not ready)" if not_ready else ")"
            )
        elif self.kind == "Endpoints" and obj is not None:
            count = sum(
                len(s.get("addresses") or ()) + len(s.get("notReadyAddresses") or ())
                for s in obj.get("subsets") or ()
            )
            detail = f" ({count} addresses)"
        verb = self.action.value if planned else f"{self.action.value}d"
        return f"{verb} {self.ref}{detail}"

    def diff(self) -> str:
        """A readable diff of the managed fields: '+' lines added, '-' lines removed."""
        compare_refs = bool(self.desired and _owner_refs(self.desired))
        before = _yaml(managed_view(self.live, compare_refs)) if self.live is not None else []
        after = _yaml(managed_view(self.desired, compare_refs)) if self.desired is not None else []
        if self.action is Action.CREATE:
            return "\n".join("+ " + line for line in _yaml(dict(self.desired or {})))
        if self.action is Action.DELETE:
            return "\n".join("- " + line for line in before)
        lines = list(difflib.unified_diff(before, after, lineterm="", n=2))[2:]
        return "\n".join("  ..." if line.startswith("@@") else line for line in lines)


_APPLY_ORDER = {"Service": 0, "Endpoints": 1, "EndpointSlice": 2}


def plan_changes(
    desired: Iterable[Mapping[str, Any]], live: Iterable[Mapping[str, Any]]
) -> list[Change]:
    """Writes that turn `live` (objects syncd owns) into `desired`; [] when converged.

    Live objects not desired are deleted, so pass only objects this syncd instance owns.
    """
    live_by_id = {object_id(obj): obj for obj in live}
    desired_by_id = {object_id(obj): obj for obj in desired}
    creates, updates, deletes = [], [], []
    for oid, want in desired_by_id.items():
        have = live_by_id.get(oid)
        kind, namespace, name = oid
        if have is None:
            creates.append(Change(Action.CREATE, kind, namespace, name, desired=want))
            continue
        compare_refs = bool(_owner_refs(want))
        if managed_view(want, compare_refs) != managed_view(have, compare_refs):
            updates.append(Change(Action.UPDATE, kind, namespace, name, desired=want, live=have))
    for oid, have in live_by_id.items():
        if oid not in desired_by_id:
            kind, namespace, name = oid
            deletes.append(Change(Action.DELETE, kind, namespace, name, live=have))

    def order(change: Change) -> tuple[int, str]:
        return (_APPLY_ORDER.get(change.kind, 9), change.name)

    return (
        sorted(creates, key=order)
        + sorted(updates, key=order)
        + sorted(deletes, key=lambda c: (-_APPLY_ORDER.get(c.kind, 9), c.name))
    )
