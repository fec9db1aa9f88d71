"""Read-only dicts and lists for objects that are shared once memoised.

A rendered slice or a managed view is remembered (`syncd.memo`) and handed to every later
caller with the same inputs; an edit by one of them would silently change what the others
get. Frozen, such an edit fails at once, where it is made. They still are dicts and lists:
equal to plain ones, and serialised by `json` as they are (`yaml` through `plain`).
"""

from __future__ import annotations

from typing import Any, NoReturn


def _refuse(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError(
        "this object is shared (a memoised rendering or view): copy it before changing it"
    )


class FrozenDict(dict[str, Any]):
    __setitem__ = __delitem__ = _refuse
    clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __reduce__(self) -> tuple[Any, ...]:  # copies (copy, deepcopy) are plain dicts
        return (dict, (dict(self),))


class FrozenList(list[Any]):
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = remove = pop = clear = sort = reverse = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def freeze(value: Any) -> Any:
    """The same data, read-only all the way down."""
    if isinstance(value, dict):
        return FrozenDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return FrozenList(freeze(item) for item in value)
    if isinstance(value, tuple):
        return tuple(freeze(item) for item in value)
    return value


def plain(value: Any) -> Any:
    """Plain dicts and lists again (for yaml, which knows no subclasses)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
