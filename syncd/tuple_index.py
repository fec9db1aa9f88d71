"""Indexes whose entries hold one or two items each: key -> tuple of items.

A daemon keeps several indexes with an entry per target, per query or per node, and
nearly every entry holds a single item; a tuple of one costs a quarter of a set of one.
Adding and removing copy the tuple, which is cheap for the few items an entry holds.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def index_add(index: dict[K, tuple[V, ...]], key: K, item: V) -> None:
    index[key] = (*index.get(key, ()), item)


def index_remove(index: dict[K, tuple[V, ...]], key: K, item: V) -> None:
    """Remove `item` from the entry of `key`; an entry left empty goes."""
    rest = tuple(i for i in index.get(key, ()) if i != item)
    if rest:
        index[key] = rest
    else:
        index.pop(key, None)


__all__ = ["index_add", "index_remove"]
