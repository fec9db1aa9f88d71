"""The contract every source keeps, and what the drivers share to run them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from syncd.addresses import AddressRejected, canonical_endpoint_ip
from syncd.errors import SourceError
from syncd.model import Answer, Snapshot

log = logging.getLogger(__name__)

Emit = Callable[[Answer], None]


class Source(Protocol):
    """Reads one registry for one target."""

    def describe(self) -> str:
        """Short human name used in logs, e.g. 'static file backends.yaml'."""
        ...

    def fetch(self) -> Snapshot:
        """The registry's current answer, in one non-blocking read (render, --once).

        An empty snapshot means the registry says "no backends". A failure must never be
        reported as empty: raise SourceError, and callers keep the last applied state.
        """
        ...


@runtime_checkable
class PolledSource(Source, Protocol):
    """A source the daemon asks again and again on its shared scheduler."""

    def poll(self) -> tuple[Snapshot, float | None]:
        """The current answer and how many seconds until it should be asked again (None:
        never; the answer cannot change). Raises SourceError when it cannot answer."""
        ...


class ChangeEmitter:
    """What a watcher passes on: answers that differ from the last, one error per streak.

    A failure right after an answer is reported once (the caller then keeps the last state
    and retries); the next good answer is always passed on, changed or not, to end the
    streak. A snapshot's warnings (dropped registry entries) are logged once when they
    appear, not again with every answer that still carries them.
    """

    __slots__ = ("_emit", "_label", "_warned", "last")

    def __init__(self, emit: Emit, label: str):
        self._emit = emit
        self._label = label
        self._warned: frozenset[str] = frozenset()
        self.last: Answer | None = None

    def answer(self, snapshot: Snapshot) -> None:
        warnings = frozenset(snapshot.warnings)
        for warning in snapshot.warnings:
            if warning not in self._warned:
                about = {"target": self._label, "source": snapshot.source, "action": "drop"}
                log.warning("%s: %s: %s", self._label, snapshot.source, warning, extra=about)
        self._warned = warnings
        last = self.last
        if (
            last is None
            or isinstance(last, SourceError)
            or (snapshot.backends != last.backends or snapshot.source != last.source)
        ):
            self.last = snapshot
            self._emit(snapshot)

    def failure(self, error: SourceError, quiet: bool = False) -> None:
        """`quiet`: the caller has logged one line for many sources already."""
        if not isinstance(self.last, SourceError):
            if not quiet:
                about = {"target": self._label, "action": "keep"}
                log.warning(
                    "%s: %s; keeping the last state, retrying", self._label, error, extra=about
                )
            self.last = error
            self._emit(error)


__all__ = [
    "Answer",
    "ChangeEmitter",
    "Emit",
    "PolledSource",
    "Source",
    "SourceError",
]


@dataclass(frozen=True)
class Dropped:
    """A registry entry syncd will not write: the warning, and the metric's reason."""

    warning: str
    reason: str  # "address" or "port"


def checked_entry(label: str, address: str, ports: Iterable[object]) -> str | Dropped:
    """A registry's address and ports as an endpoint may carry them, for every registry
    alike: the canonical address, or why the entry is dropped. Registries are untrusted:
    whoever can register may not point a Service at an address the cluster refuses."""
    try:
        address = canonical_endpoint_ip(address)
    except AddressRejected as exc:
        return Dropped(f"{label}{exc}; dropped", "address")
    for port in ports:
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            return Dropped(f"{label}port {port!r} is out of range 1-65535; dropped", "port")
    return address
