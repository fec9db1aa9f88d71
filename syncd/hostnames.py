"""One DNS name per backend host, whatever the sources said (pure; no I/O).

An endpoint's `hostname` makes the cluster DNS answer `<hostname>.<service>.<namespace>.svc`
with its address. Sources give names per backend, and a host serving several ports is
several backends: the name belongs to the address, so every backend of an address carries
it. Registries can disagree with themselves; a name then resolves to one address, never
to a round-robin of strangers:

- an address named twice keeps the first of its names in sort order;
- a name claimed by several addresses stays with the lowest address; the others have no
  name (they still serve the Service), and a warning says so.

`syncd check` refuses both in a static list, so only registries reach these rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from syncd.addresses import ip_sort_key
from syncd.model import Backend


@dataclass(frozen=True)
class NamedBackends:
    backends: frozenset[Backend]
    warnings: tuple[str, ...] = ()


def settle_hostnames(backends: frozenset[Backend]) -> NamedBackends:
    """The backends with one name per address and one address per name."""
    if not any(backend.hostname for backend in backends):
        return NamedBackends(backends)
    names_of: dict[str, set[str]] = {}
    for backend in backends:
        if backend.hostname:
            names_of.setdefault(backend.address, set()).add(backend.hostname)
    warnings: list[str] = []
    name_of: dict[str, str] = {}
    for address, names in names_of.items():
        name_of[address] = min(names)
        if len(names) > 1:
            warnings.append(
                f"{address} is named {_listed(map(repr, sorted(names)))}; an address has one name: "
                f"{min(names)!r} is used"
            )
    addresses_of: dict[str, list[str]] = {}
    for address, name in name_of.items():
        addresses_of.setdefault(name, []).append(address)
    for name, addresses in addresses_of.items():
        if len(addresses) > 1:
            addresses.sort(key=ip_sort_key)
            for address in addresses[1:]:
                del name_of[address]
            warnings.append(
                f"{name!r} names {_listed(addresses)}; a name answers one address: it "
                f"stays with {addresses[0]}, the others are left without a name"
            )
    settled = frozenset(_named(backend, name_of.get(backend.address)) for backend in backends)
    return NamedBackends(settled, tuple(sorted(warnings)))


def _named(backend: Backend, name: str | None) -> Backend:
    return backend if backend.hostname == name else replace(backend, hostname=name)


def _listed(items: Iterable[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    *rest, last = items
    return f"{', '.join(rest)} and {last}" if rest else last
