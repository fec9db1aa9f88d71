"""What an ExternalService's status says, from what syncd made of it (pure).

The status is rewritten only when it changes, so nothing in it may change while nothing
happens: no "last checked" time, and condition transition times carried over while a
condition keeps its status. `lastSyncTime` moves when syncd writes a change or finds the
target in sync again after a problem, not on every check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# outcome (syncd.pipeline.Outcome's values) -> (Ready's reason, Ready?)
_READY = {
    "converged": ("InSync", True),
    "changed": ("InSync", True),
    "stale": ("SourceUnavailable", False),
    "protected": ("DrainProtected", False),
    "held": ("RemovalHeld", False),
    "conflict": ("Conflict", False),
    "failed": ("WriteFailed", False),
    "refused": ("Refused", False),
}


@dataclass(frozen=True)
class Observation:
    """What the last reconcile of a resource's target found (None fields: not known, keep
    what the status says)."""

    outcome: str  # an Outcome's value
    message: str = ""
    ready: int | None = None
    total: int | None = None
    tier: int | None = None
    source: str | None = None
    objects: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Standing:
    """A resource as the merge of file and resources left it: valid or not, and whether
    another claim to its Service won."""

    generation: int
    service: str
    problems: tuple[str, ...] = ()  # not valid: the `check` lines
    conflict: str | None = None  # valid, but its Service is another's target
    observation: Observation | None = field(default=None, compare=False)


def desired_status(previous: Mapping[str, Any], standing: Standing, now: str) -> dict[str, Any]:
    """The status to write (compare with `previous`: equal means no write). `now` is an
    RFC 3339 time, used only where something changed."""
    before = {c.get("type"): c for c in previous.get("conditions") or () if isinstance(c, Mapping)}
    seen = standing.observation
    conditions: list[tuple[str, bool, str, str]] = []  # type, status, reason, message
    valid = not standing.problems
    conditions.append(
        ("Valid", valid, "Valid" if valid else "Invalid", "; ".join(standing.problems))
    )
    said = seen.message if seen else ""
    conflict = standing.conflict or (said if seen and seen.outcome == "conflict" else "")
    conditions.append(
        ("Conflict", bool(conflict), "Claimed" if conflict else "NoConflict", conflict)
    )
    outcome = seen.outcome if seen and valid and not standing.conflict else None
    conditions.append(_flag("Stale", outcome == "stale", "SourceUnavailable", said))
    conditions.append(_flag("DrainProtected", outcome == "protected", "DrainProtected", said))
    if not valid:
        ready = ("Invalid", False, conditions[0][3])
    elif standing.conflict:
        ready = ("Conflict", False, standing.conflict)
    elif outcome is None:
        ready = ("Pending", False, "not reconciled yet")
    else:
        reason, ok = _READY.get(outcome, ("Unknown", False))
        ready = (reason, ok, "" if ok else said)
    conditions.insert(0, ("Ready", ready[1], ready[0], ready[2]))

    status: dict[str, Any] = {
        "observedGeneration": standing.generation,
        "service": standing.service,
        "conditions": [
            _condition(kind, ok, reason, message, standing.generation, before.get(kind), now)
            for kind, ok, reason, message in conditions
        ],
    }
    known = {k: previous[k] for k in _KEPT if k in previous}
    if seen is not None and seen.total is not None and seen.ready is not None:
        known["backends"] = {"ready": seen.ready, "total": seen.total}
        known["backendSummary"] = f"{seen.ready}/{seen.total}"
    if seen is not None and seen.objects is not None:
        known["objects"] = list(seen.objects)
    if seen is not None and seen.source is not None:
        known["activeSource"] = seen.source
        known["activeTier"] = seen.tier or 0
    was_ready = (before.get("Ready") or {}).get("status") == "True"
    if ready[1] and (outcome == "changed" or not was_ready or "lastSyncTime" not in known):
        known["lastSyncTime"] = now
    return {**status, **known}


_KEPT = ("backends", "backendSummary", "objects", "activeSource", "activeTier", "lastSyncTime")


def _flag(kind: str, on: bool, reason: str, message: str) -> tuple[str, bool, str, str]:
    return (kind, on, reason if on else "No" + reason, message if on else "")


def _condition(
    kind: str,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    before: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    status = "True" if ok else "False"
    since = now
    if before is not None and before.get("status") == status and before.get("lastTransitionTime"):
        since = before["lastTransitionTime"]
    return {
        "type": kind,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": since,
        "reason": reason,
        "message": message[:1024],
    }


__all__ = ["Observation", "Standing", "desired_status"]
