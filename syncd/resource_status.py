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
    "cluster-address": ("ClusterAddress", False),
    "empty": ("NoBackends", False),
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
    unhealthy: tuple[str, ...] | None = None  # "address:port - why", from the probes


@dataclass(frozen=True)
class Standing:
    """A resource as the merge of file and resources left it: valid or not, and whether
    another claim to its Service won."""

    generation: int
    service: str
    problems: tuple[str, ...] = ()  # not valid: the `check` lines
    conflict: str | None = None  # valid, but its Service is another's target
    observation: Observation | None = field(default=None, compare=False)


Condition = tuple[str, bool, str, str]  # type, status, reason, message


def desired_status(previous: Mapping[str, Any], standing: Standing, now: str) -> dict[str, Any]:
    """The status to write (compare with `previous`: equal means no write). `now` is an
    RFC 3339 time, used only where something changed."""
    before = {c.get("type"): c for c in previous.get("conditions") or () if isinstance(c, Mapping)}
    conditions = _conditions(standing)
    status: dict[str, Any] = {
        "observedGeneration": standing.generation,
        "service": standing.service,
        "conditions": [
            _condition(kind, ok, reason, message, standing.generation, before.get(kind), now)
            for kind, ok, reason, message in conditions
        ],
    }
    seen = standing.observation
    known = {k: previous[k] for k in _KEPT if k in previous}
    if seen is not None and seen.total is not None and seen.ready is not None:
        known["backends"] = {"ready": seen.ready, "total": seen.total}
        known["backendSummary"] = f"{seen.ready}/{seen.total}"
    if seen is not None and seen.objects is not None:
        known["objects"] = list(seen.objects)
    if seen is not None and seen.unhealthy is not None:
        known.pop("unhealthyBackends", None)
        if seen.unhealthy:
            known["unhealthyBackends"] = list(seen.unhealthy[:20])
    if seen is not None and seen.source is not None:
        known["activeSource"] = seen.source
        known["activeTier"] = seen.tier or 0
    ready = conditions[0][1]
    was_ready = (before.get("Ready") or {}).get("status") == "True"
    changed = seen is not None and seen.outcome == "changed"
    if ready and (changed or not was_ready or "lastSyncTime" not in known):
        known["lastSyncTime"] = now
    return {**status, **known}


def _conditions(standing: Standing) -> list[Condition]:
    """Ready first (with why not), then Valid, Conflict, Stale and DrainProtected."""
    seen = standing.observation
    said = seen.message if seen else ""
    valid = not standing.problems
    problems = "; ".join(standing.problems)
    conflict = standing.conflict or (said if seen and seen.outcome == "conflict" else "")
    outcome = seen.outcome if seen and valid and not standing.conflict else None
    stale, protected = outcome == "stale", outcome == "protected"
    if not valid:
        ready: Condition = ("Ready", False, "Invalid", problems)
    elif standing.conflict:
        ready = ("Ready", False, "Conflict", standing.conflict)
    elif outcome is None:
        ready = ("Ready", False, "Pending", "not reconciled yet")
    else:
        reason, ok = _READY.get(outcome, ("Unknown", False))
        ready = ("Ready", ok, reason, "" if ok else said)
    return [
        ready,
        ("Valid", valid, "Valid" if valid else "Invalid", problems),
        ("Conflict", bool(conflict), "Claimed" if conflict else "NoConflict", conflict),
        ("Stale", stale, "SourceUnavailable" if stale else "SourcesAnswer", said if stale else ""),
        (
            "DrainProtected",
            protected,
            "DrainProtected" if protected else "NotDrained",
            said if protected else "",
        ),
    ]


_KEPT = (
    "backends",
    "backendSummary",
    "objects",
    "activeSource",
    "activeTier",
    "lastSyncTime",
    "unhealthyBackends",
)


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
