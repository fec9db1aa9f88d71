"""Decide which backends the cluster should see from what the sources answered (pure).

For now: sources are tried in order and the first one with at least one ready backend is
used; if none has a ready backend, the first that answered at all is used (a real empty
answer is applied); if every source failed, there is no decision and the caller keeps the
last applied state (fail static). Failover hold-downs, probes and guards build on this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from syncd.errors import SourceError
from syncd.model import Backend, Snapshot


@dataclass(frozen=True)
class Decision:
    backends: frozenset[Backend]
    tier: int  # index of the source whose answer is used
    source: str
    reason: str


def choose_backends(answers: Sequence[Snapshot | SourceError]) -> Decision | None:
    """The backends to apply, or None when no source could answer (keep what is applied)."""
    answered = [(i, a) for i, a in enumerate(answers) if isinstance(a, Snapshot)]
    for index, snapshot in answered:
        if any(backend.ready for backend in snapshot.backends):
            reason = "first source with ready backends" if index else "primary source"
            return Decision(snapshot.backends, index, snapshot.source, reason)
    if answered:
        index, snapshot = answered[0]
        return Decision(snapshot.backends, index, snapshot.source, "no source has ready backends")
    return None
