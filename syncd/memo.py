"""Bounded caches for pure functions whose inputs repeat: the same live object compared
again, the same slice rendered again, the same address checked again.

A large target changes one backend at a time, yet every reconcile is a pure function of
the whole target; these caches make the unchanged part cost a lookup instead of a rebuild.
They never change a result: a hit returns what the function would compute.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")

# Only objects at least this large (endpoints) are remembered: smaller ones cost less to
# rebuild than to keep, and 10,000 small targets must not fill the memory with copies.
WORTH_REMEMBERING = 32


class Memo(Generic[V]):
    """At most `size` entries; when full, the oldest half goes. Safe across threads."""

    def __init__(self, size: int):
        self._size = size
        self._data: dict[Hashable, V] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        return self._data.get(key)

    def put(self, key: Hashable, value: V) -> V:
        with self._lock:
            if len(self._data) >= self._size:
                for old in list(self._data)[: self._size // 2]:
                    del self._data[old]
            self._data[key] = value
        return value

    def __len__(self) -> int:
        return len(self._data)


class IdentityMemo(Generic[V]):
    """f(obj) for objects that are replaced, never edited (the cluster cache's, rendered
    ones): keyed by identity, and holding the object so its id cannot be reused."""

    def __init__(self, size: int):
        self._memo: Memo[tuple[Any, V]] = Memo(size)

    def get_or(self, obj: Any, extra: Hashable, compute: Callable[[], V]) -> V:
        key = (id(obj), extra)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is obj:
            return hit[1]
        return self._memo.put(key, (obj, compute()))[1]
