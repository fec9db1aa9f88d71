"""One reconcile of one target, the same for `run --once` and the daemon.

    answers, memory, live state, probe results ─▶ pipeline.run ─▶ plan ─▶ sink.apply
                                                                       └▶ Reconciled

The drivers differ only where a one-shot run and a loop must: where the inputs come from
(asked once, or kept current by watches and a cache), how long they wait for a held
removal (within the run, or by queueing the target again), and how often they retry a
write that found the object changed. What a result means (which Event it records, which
sentence names a source's failure) is decided here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from syncd.cluster_networks import ClusterNetworks
from syncd.errors import SourceError
from syncd.live import LiveState
from syncd.model import AddressPolicy, Answer, ProbeKey, Target
from syncd.pipeline import run
from syncd.policy import PolicyState
from syncd.results import Outcome, Step, TargetResult
from syncd.sink import Sink

# A result that lasts is told to `kubectl describe service` once, as an Event of this reason.
BLOCKED_EVENT_REASONS = {
    Outcome.PROTECTED: "DrainProtected",
    Outcome.CONFLICT: "SyncConflict",
    Outcome.CLUSTER_ADDRESS: "ClusterAddressRefused",
    Outcome.STALE: "SourcesUnavailable",  # what is applied is kept (fail static)
}


@dataclass(frozen=True)
class Reconciled:
    """What one reconcile concluded, and what it wrote."""

    step: Step  # the pipeline's verdict and plan (plan None: nothing could be written)
    result: TargetResult  # the sink's result, or why nothing was written

    @property
    def written(self) -> bool:
        """The plan went to the sink (converged counts); False when blocked before it."""
        return self.step.plan is not None

    @property
    def memory(self) -> PolicyState:
        return self.step.memory

    @property
    def recheck_at(self) -> float | None:
        """When to look again although nothing changes (a failback waiting its time)."""
        return self.step.evaluation.verdict.recheck_at

    @property
    def hold_until(self) -> float | None:
        """When a held removal may be confirmed."""
        return self.step.evaluation.verdict.hold_until


# found before any write, or refused by the cluster for a reason a retry does not change
_BLOCKED_BY_SINK = (Outcome.CONFLICT, Outcome.REFUSED, Outcome.CLUSTER_ADDRESS)


def source_problems(target: Target, answers: Sequence[Answer]) -> list[str]:
    """One line per source that could not answer, naming it the way `check` does (once:
    a source's own error often begins with its name too)."""
    problems = []
    for index, answer in enumerate(answers):
        if isinstance(answer, SourceError):
            name = target.sources[index].describe()
            text = str(answer).removeprefix(f"{name}: ")
            problems.append(f"sources[{index}] ({name}): {text}")
    return problems


def reconcile(
    target: Target,
    answers: Sequence[Answer],
    memory: PolicyState,
    live: LiveState,
    sink: Sink,
    *,
    now: float,
    address_policy: AddressPolicy,
    owner_id: str,
    health: Mapping[ProbeKey, bool] | None = None,
    networks: ClusterNetworks | None = None,
) -> Reconciled:
    """Decide with the pipeline and, when something may be written, apply it."""
    step = run(
        target,
        answers,
        memory,
        live,
        now=now,
        address_policy=address_policy,
        owner_id=owner_id,
        health=health,
        problems=source_problems(target, answers),
        networks=networks,
    )
    if step.plan is None:
        assert step.result is not None
        return Reconciled(step, step.result)
    result = sink.apply(step.plan)
    if step.result is not None and result.outcome is not Outcome.FAILED:
        # a refused resource's withdrawal: written, and still blocked (see pipeline.run)
        result = replace(step.result, changes=result.changes)
        return Reconciled(replace(step, plan=None, result=result), result)
    if result.outcome in _BLOCKED_BY_SINK:
        step = replace(step, plan=None, result=result)
    return Reconciled(step, result)


def record_blocked(sink: Sink, target: Target, result: TargetResult) -> None:
    """The Event a lasting blocked result gets (named after its text: recorded once)."""
    reason = BLOCKED_EVENT_REASONS.get(result.outcome)
    if reason is not None:  # a registry outage makes many targets stale at once: bulk
        bulk = result.outcome is Outcome.STALE
        sink.record_event(target, reason, result.message, once=True, bulk=bulk)
