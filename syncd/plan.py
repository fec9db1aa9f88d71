"""Desired objects vs live objects -> the smallest list of writes (pure; no I/O).

Objects are compared only on the fields syncd manages (each kind's view in `kinds`): server-set
fields, defaults and other people's labels never cause a write, so a converged target plans
nothing. Order matters for traffic: creates and updates come before deletes, so a Service
never has fewer endpoints mid-way than before or after; the Service itself is created first
and deleted last.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from syncd.frozen import plain
from syncd.kinds import (
    KINDS,
    ObjectId,
    describe_object,
    kind_of,
    object_id,
    owner_refs,
    readable_view,
)
from syncd.memo import WORTH_REMEMBERING, Memo

__all__ = ["Action", "Change", "ObjectId", "describe_object", "object_id", "plan_changes"]


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


def managed_view(obj: Mapping[str, Any], compare_owner_refs: bool = True) -> dict[str, Any]:
    """The part of an object syncd decides, normalized so that equal means 'no write needed'."""
    return kind_of(obj).view(obj, compare_owner_refs)


def _differs(want: Mapping[str, Any], have: Mapping[str, Any]) -> bool:
    """Does `have` need a write to become `want`? Remembered per pair of objects: the
    unchanged slices of a large target are compared once, not on every change."""
    remember = len(want.get("endpoints") or ()) >= WORTH_REMEMBERING
    key = (id(want), id(have))
    hit = _COMPARED.get(key) if remember else None
    if hit is not None and hit[0] is want and hit[1] is have:
        return hit[2]
    compare_refs = bool(owner_refs(want))
    differs = managed_view(want, compare_refs) != managed_view(have, compare_refs)
    if remember:
        _COMPARED.put(key, (want, have, differs))
    return differs


# Rendered and live objects are replaced, never edited: a pair compared once stays so.
_COMPARED: Memo[tuple[Mapping[str, Any], Mapping[str, Any], bool]] = Memo(16384)


class _IndentedDumper(yaml.SafeDumper):
    """Indents list items under their key, which reads better in a diff."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _readable(obj: Mapping[str, Any] | None, compare_refs: bool) -> list[str]:
    return [] if obj is None else _yaml(readable_view(managed_view(obj, compare_refs)))


def _yaml(data: Any) -> list[str]:
    return yaml.dump(plain(data), Dumper=_IndentedDumper, sort_keys=False).splitlines()


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
        obj = self.desired if self.desired is not None else self.live
        size = KINDS[self.kind].size(obj) if obj is not None else ""
        detail = f" ({size})" if size else ""
        verb = self.action.value if planned else f"{self.action.value}d"
        return f"{verb} {self.ref}{detail}"

    def diff(self) -> str:
        """A readable diff of the managed fields: '+' lines added, '-' lines removed."""
        compare_refs = bool(self.desired and owner_refs(self.desired))
        before = _readable(self.live, compare_refs)
        after = _readable(self.desired, compare_refs)
        if self.action is Action.CREATE:
            return "\n".join("+ " + line for line in _yaml(dict(self.desired or {})))
        if self.action is Action.DELETE:
            return "\n".join("- " + line for line in before)
        lines = list(difflib.unified_diff(before, after, lineterm="", n=2))[2:]
        return "\n".join("  ..." if line.startswith("@@") else line for line in lines)


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
        if _differs(want, have):
            updates.append(Change(Action.UPDATE, kind, namespace, name, desired=want, live=have))
    for oid, have in live_by_id.items():
        if oid not in desired_by_id:
            kind, namespace, name = oid
            deletes.append(Change(Action.DELETE, kind, namespace, name, live=have))

    def order(change: Change) -> tuple[int, str]:
        return (KINDS[change.kind].apply_order, change.name)

    return (
        sorted(creates, key=order)
        + sorted(updates, key=order)
        + sorted(deletes, key=lambda c: (-KINDS[c.kind].apply_order, c.name))
    )
