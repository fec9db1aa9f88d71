"""What the pipeline concludes for a target and what a driver makes of it (pure): the
outcome, the result, the plan of writes, and a driver's memory of a target between steps."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from syncd.model import Target
from syncd.plan import Change
from syncd.policy import Decision, Evaluation, PolicyState

# The uid a new Service will get is only known once it is created: objects planned in the
# same pass carry this until the sink fills in the real one (see `with_service_uid`).
PENDING_UID = "(uid of the Service created in this pass)"


class Outcome(enum.StrEnum):
    CONVERGED = "converged"  # nothing to do
    CHANGED = "changed"  # writes applied (or planned, in a dry run)
    CONFLICT = "conflict"  # an object syncd would write is not syncd's
    STALE = "stale"  # no source could answer; last applied state kept
    HELD = "held"  # a large removal waits for confirmation; last applied state kept
    FAILED = "failed"  # the API or the target's setup failed
    PROTECTED = "protected"  # a registry answer would drain the target; last state kept
    REFUSED = "refused"  # a protected Service nobody opted in (syncd.protected): untouched
    EMPTY = "empty"  # its sources list no backends and nothing was ever applied for it
    CLUSTER_ADDRESS = "cluster-address"  # a resource points into the cluster's own networks
    #                                      (syncd.cluster_networks): its endpoints withdrawn

    @property
    def ok(self) -> bool:
        return self in (Outcome.CONVERGED, Outcome.CHANGED)


@dataclass(frozen=True)
class TargetResult:
    target: str
    outcome: Outcome
    changes: tuple[Change, ...] = ()  # applied, or planned when dry_run
    message: str = ""
    decision: Decision | None = None
    warnings: tuple[str, ...] = ()
    stale_read: bool = False  # a guarded write found the object changed (409) before
    #                           anything was written: read the target again and retry


@dataclass(frozen=True)
class TargetPlan:
    """The writes that bring one target in line with a decision, in the order to apply."""

    target: Target
    decision: Decision
    changes: tuple[Change, ...]  # the Service first, then Endpoints and slices, deletes last
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """What the pipeline concluded for one target at one moment: a plan to apply, a
    result saying why nothing may be written, or both (a refused resource's withdrawal:
    apply the plan, and the outcome is the result's)."""

    evaluation: Evaluation  # the policy's verdict, its memory for next time, warnings
    plan: TargetPlan | None = None  # None: nothing may be written now (see `result`)
    result: TargetResult | None = None  # why not: stale, held, conflict, failed setup

    @property
    def memory(self) -> PolicyState:
        return self.evaluation.verdict.state


def with_service_uid(change: Change, uid: str) -> Change:
    """`change` with PENDING_UID replaced by the uid of the Service just created."""
    if change.desired is None:
        return change
    metadata = change.desired.get("metadata") or {}
    refs = metadata.get("ownerReferences") or ()
    if not any(ref.get("uid") == PENDING_UID for ref in refs):
        return change
    fixed_refs = [{**ref, "uid": uid} if ref.get("uid") == PENDING_UID else ref for ref in refs]
    desired: dict[str, Any] = {
        **change.desired,
        "metadata": {**metadata, "ownerReferences": fixed_refs},
    }
    return replace(change, desired=desired)


@dataclass(slots=True)
class TargetMemory:
    """A driver's running state for one target between steps (the daemon keeps one each)."""

    policy: PolicyState | None = None  # None: seed from the cluster before the next step
    warned: frozenset[str] = frozenset()  # (frozen: the empty one is shared by every target)

    def new_warnings(self, warnings: Iterable[str]) -> list[str]:
        """Warnings not already logged for this target (each is logged once per streak)."""
        warnings = list(warnings)
        current = frozenset(warnings)
        fresh = [w for w in warnings if w not in self.warned]
        self.warned = current
        return fresh


__all__ = [
    "PENDING_UID",
    "Outcome",
    "Step",
    "TargetMemory",
    "TargetPlan",
    "TargetResult",
    "with_service_uid",
]
