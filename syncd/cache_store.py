"""What the cluster cache keeps of one kind: objects by (namespace, name), indexed by the
target they belong to (a Service and its Endpoints by name, slices by their service-name
label), trimmed to what syncd reads (syncd.cache_trim)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from syncd.cache_trim import trimmed
from syncd.kinds import Kind, Obj, target_key_of
from syncd.tuple_index import index_add, index_remove


def newer(candidate: Obj, current: Obj | None) -> bool:
    """Is `candidate` at least as new as `current`? (resourceVersions are etcd revisions)."""
    if current is None:
        return True
    new = (candidate.get("metadata") or {}).get("resourceVersion") or ""
    old = (current.get("metadata") or {}).get("resourceVersion") or ""
    if new.isdigit() and old.isdigit():
        return int(new) >= int(old)
    return True


class Store:
    """Objects of one kind by (namespace, name), indexed by the target they belong to."""

    def __init__(self, kind: Kind):
        self.kind = kind
        self.by_name: dict[tuple[str, str], dict[str, Any]] = {}
        # target -> its objects' names (most targets have one object of a kind)
        self.by_target: dict[str, tuple[tuple[str, str], ...]] = {}

    @staticmethod
    def name_of(obj: Obj) -> tuple[str, str]:
        metadata = obj.get("metadata") or {}
        return (metadata.get("namespace", ""), metadata.get("name", ""))

    def put(self, obj: Obj) -> dict[str, Any] | None:
        stored = trimmed(self.kind.name, self.kind.api_version, obj)
        name = self.name_of(stored)
        old = self.by_name.get(name)
        if old is not None:
            index_remove(self.by_target, target_key_of(old), name)
        self.by_name[name] = stored
        key = target_key_of(stored)
        if not key.endswith("/"):  # a slice of no Service belongs to no target
            index_add(self.by_target, key, name)
        return old

    def pop(self, name: tuple[str, str]) -> dict[str, Any] | None:
        old = self.by_name.pop(name, None)
        if old is not None:
            index_remove(self.by_target, target_key_of(old), name)
        return old

    def replace(
        self, pages: Iterable[Iterable[Obj]], namespace: str | None
    ) -> list[tuple[Obj | None, Obj | None]]:
        """A fresh list, page by page: store it, and return what changed as (old, new)."""
        changes: list[tuple[Obj | None, Obj | None]] = []
        seen = set()
        for page in pages:
            for item in page:
                name = self.name_of(item)
                seen.add(name)
                old = self.put(item)
                new = self.by_name[name]
                if old is None or old.get("metadata") != new.get("metadata"):
                    changes.append((old, new))
        for name in [n for n in self.by_name if n not in seen and namespace in (None, n[0])]:
            changes.append((self.pop(name), None))
        return changes


__all__ = ["Store", "newer"]
