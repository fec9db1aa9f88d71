"""Decide what the cluster should see, from what the sources answered (pure; no I/O).

Order of decisions, each one only ever *filters* or *holds*:

1. Address policy: registry entries in the global deny list (metadata service, loopback,
   link-local, multicast, the Service CIDR ...) or outside a target's `allowed_cidrs` are
   dropped and reported. Whoever can write to a registry must not be able to point a
   Service at the metadata endpoint or at cluster-internal addresses.
2. Active probes: a backend is ready only if its registry and its probe both say so. If the
   probes would fail at least `panic_threshold` of the backends the registries call healthy
   (across all tiers), the probe path itself is assumed broken: probes are ignored, loudly.
3. Failover tiers: the active tier is the first with at least `min_ready` ready backends.
   Failover to a lower tier is immediate; failback to a higher tier waits until it has
   qualified continuously for `failback_after`. If no tier qualifies, nothing changes (the
   last applied state stays), except for a single-source target, whose real answers,
   empty ones included, are applied.
4. Guard: within one tier, a change that removes more than `max_removal_fraction` of the
   applied backends is held until the same answer is seen again `confirm_after` later.

A driver keeps a `PolicyState` per target between decisions; every driver seeds it from
what the cluster holds when a target (re)starts (`syncd.live.seed_memory`), the daemon
and `--once` alike, so the guard holds on a first decision too.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from syncd.addresses import address_filter
from syncd.errors import SourceError
from syncd.hostnames import settle_hostnames
from syncd.model import (
    AddressPolicy,
    Answer,
    Backend,
    FailoverConfig,
    GuardConfig,
    PortSet,
    ProbeKey,
    Snapshot,
    Target,
    ready_count,
)

# --------------------------------------------------------------------------- address policy


def filter_addresses(
    snapshot: Snapshot, target: Target, policy: AddressPolicy
) -> tuple[Snapshot, list[str]]:
    """Drop backends the address policy refuses; one warning per dropped backend."""
    kept, warnings = [], []
    checks = address_filter(policy.denied, target.allowed_cidrs)  # shared with the loader
    if checks.all_passed(map(_ADDRESS, snapshot.backends)):
        return snapshot, []  # the usual case: every address was checked before
    refusal = checks.refusal
    for backend in snapshot.backends:
        reason = refusal(backend.address)
        if reason:
            warnings.append(f"{snapshot.source}: {backend.address} {reason}; dropped")
        else:
            kept.append(backend)
    if not warnings:
        return snapshot, []
    return replace(snapshot, backends=frozenset(kept)), warnings


_ADDRESS = operator.attrgetter("address")


# --------------------------------------------------------------------------- probes


def probe_key(backend: Backend, port_name: str | None) -> ProbeKey:
    """Which (address, port) a backend is probed on: the named Service port, else the first."""
    port = next((p for p in backend.ports if p.name == port_name), backend.ports[0])
    return (backend.address, port.port)


def probe_keys(answers: Iterable[Answer | None], port_name: str | None) -> set[ProbeKey]:
    """What to probe: every backend a registry calls ready, in every answer (every tier)."""
    return {
        probe_key(b, port_name)
        for a in answers
        if isinstance(a, Snapshot)
        for b in a.backends
        if b.ready
    }


@dataclass(frozen=True)
class ProbeVerdict:
    answers: tuple[Snapshot | SourceError, ...]
    panic: bool = False
    failing: int = 0  # registry-ready backends whose probe fails
    healthy_by_registry: int = 0


def apply_probes(
    answers: Sequence[Snapshot | SourceError],
    health: Mapping[ProbeKey, bool],
    port_name: str | None,
    panic_threshold: float,
) -> ProbeVerdict:
    """Mark registry-ready backends whose probe fails as not ready, unless in panic.

    Backends not probed yet count as healthy (as a registry's word is all there is).
    """
    registry_ready = probe_keys(answers, port_name)
    failing = {key for key in registry_ready if health.get(key) is False}
    if registry_ready and len(failing) / len(registry_ready) >= panic_threshold and failing:
        return ProbeVerdict(tuple(answers), True, len(failing), len(registry_ready))
    adjusted = []
    for answer in answers:
        if isinstance(answer, Snapshot):
            backends = frozenset(
                replace(b, ready=False) if b.ready and probe_key(b, port_name) in failing else b
                for b in answer.backends
            )
            answer = replace(answer, backends=backends)
        adjusted.append(answer)
    return ProbeVerdict(tuple(adjusted), False, len(failing), len(registry_ready))


# --------------------------------------------------------------------------- tiers and guards


@dataclass(frozen=True)
class Decision:
    backends: frozenset[Backend]
    tier: int  # index of the source whose answer is used
    source: str
    reason: str
    switched_from: int | None = None  # set when this decision changes the active tier

    @property
    def failback(self) -> bool:
        """Back to a higher tier (a lower index) than the one active until now."""
        return self.switched_from is not None and self.tier < self.switched_from

    def switch_sentence(self) -> str | None:
        """How a tier switch is told everywhere (log, Event): None when there is none."""
        if self.switched_from is None:
            return None
        return (
            f"{'failback' if self.failback else 'failover'} from tier {self.switched_from} "
            f"to tier {self.tier} ({self.source}): {self.reason}"
        )


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What a target's policy remembers between decisions."""

    active: int | None = None
    qualified_since: tuple[float | None, ...] = ()
    applied: frozenset[Backend] | None = None
    pending: frozenset[Backend] | None = None  # a large removal waiting for confirmation
    pending_since: float | None = None


@dataclass(frozen=True)
class Verdict:
    decision: Decision | None  # None: change nothing, keep what is applied
    state: PolicyState
    reason: str = ""  # why nothing changes, when decision is None
    hold_until: float | None = None  # a held removal may be applied from then on
    recheck_at: float | None = None  # decide again then, even if no answer changes
    protected: bool = False  # a registry answer would drain the target (drain_floor)


def _ready_count(answer: Snapshot | SourceError) -> int:
    return ready_count(answer.backends) if isinstance(answer, Snapshot) else -1


def choose(
    answers: Sequence[Snapshot | SourceError], state: PolicyState, now: float, target: Target
) -> Verdict:
    """The tier and backends to apply now, and the policy's memory for next time."""
    failover = target.failover
    qualifies = [_ready_count(a) >= failover.min_ready for a in answers]
    previous = state.qualified_since or (None,) * len(answers)
    since = tuple(
        (previous[i] if i < len(previous) and previous[i] is not None else now) if ok else None
        for i, ok in enumerate(qualifies)
    )
    state = replace(state, qualified_since=since)
    candidates = [i for i, ok in enumerate(qualifies) if ok]
    recheck_at: float | None = None
    if candidates:
        chosen, reason, recheck_at = _tier(candidates, state, since, now, failover)
    elif len(answers) == 1 and isinstance(answers[0], Snapshot):
        chosen, reason = 0, "the only source"
    else:
        return _nothing_qualifies(answers, state, failover)
    answer = answers[chosen]
    assert isinstance(answer, Snapshot)
    switched = state.active if state.active is not None and chosen != state.active else None
    decision = Decision(answer.backends, chosen, answer.source, reason, switched)
    protected = _drain_protection(decision, state, target)
    if protected is not None:
        return protected
    if switched is None:  # a failover replaces everything by design; not a "removal"
        held = _guard(answer.backends, state, now, target.guards)
        if held is not None:
            return held
    new_state = replace(
        state, active=chosen, applied=answer.backends, pending=None, pending_since=None
    )
    return Verdict(decision, new_state, recheck_at=recheck_at)


def _tier(
    candidates: list[int],
    state: PolicyState,
    since: tuple[float | None, ...],
    now: float,
    failover: FailoverConfig,
) -> tuple[int, str, float | None]:
    """Among qualifying tiers: (the one to use, why, when to look again for a failback)."""
    best, current = candidates[0], state.active
    if current is None:
        return best, f"first tier with {failover.min_ready}+ ready backends", None
    if current not in candidates:
        return best, f"tier {current} has fewer than {failover.min_ready} ready", None
    if best >= current:
        return current, "active tier", None
    waited = now - (since[best] or now)
    if waited >= failover.failback_after:
        why = (
            f"tier {best} has qualified for {waited:.0f}s "
            f"(failback_after {failover.failback_after:g}s)"
        )
        return best, why, None
    why = f"tier {best} qualifies, failback after {failover.failback_after - waited:.0f}s more"
    return current, why, (since[best] or now) + failover.failback_after


def _nothing_qualifies(
    answers: Sequence[Snapshot | SourceError], state: PolicyState, failover: FailoverConfig
) -> Verdict:
    """No tier qualifies: stale while a source cannot answer, else protection."""
    if any(isinstance(a, SourceError) for a in answers):  # stale: one is unknown
        failed = all(isinstance(a, SourceError) for a in answers)
        why = "no source answered" if failed else "no answering tier qualifies"
        return Verdict(None, state, f"{why}; keeping what is applied")
    # Every source answered and none qualifies: not stale, a protection
    return Verdict(
        None,
        state,
        f"no tier has {failover.min_ready} ready backends; keeping what is applied",
        protected=True,
    )


def _drain_protection(decision: Decision, state: PolicyState, target: Target) -> Verdict | None:
    """A registry answer may not take a target below `drain_floor` ready backends while it
    has at least that many applied: a registry that lost its catalog must not take the
    Service down with it. The operator's own lists (static sources) are not second-guessed,
    and a lower tier that qualifies still takes over (it is chosen before this check)."""
    floor = target.drain_floor
    if floor <= 0 or state.applied is None:
        return None
    if target.sources[decision.tier].operators_own:
        return None
    ready, applied = ready_count(decision.backends), ready_count(state.applied)
    if ready >= floor or applied < floor:
        return None
    return Verdict(
        None,
        state,
        f"drain protection: {decision.source} lists {ready} ready backends, fewer than "
        f"drain_floor {floor}, while {applied} are applied; keeping them until the registry "
        "recovers (drain_floor: 0 lets a registry empty the Service)",
        protected=True,
    )


def _identities(backends: frozenset[Backend]) -> set[tuple[str, PortSet]]:
    return {b.identity for b in backends}


def _guard(
    backends: frozenset[Backend], state: PolicyState, now: float, guards: GuardConfig
) -> Verdict | None:
    """Hold a large removal until it is seen again confirm_after later; None lets it pass."""
    if not state.applied or backends is state.applied:
        return None
    # Backends that differ at all bound the removals from above (a readiness change counts
    # here, not below): a small change passes without comparing identities.
    if len(state.applied - backends) / len(state.applied) <= guards.max_removal_fraction:
        return None
    applied, wanted = _identities(state.applied), _identities(backends)
    removed = applied - wanted
    fraction = len(removed) / len(applied)
    if fraction <= guards.max_removal_fraction:
        return None
    if state.pending is not None and _identities(state.pending) == wanted:
        assert state.pending_since is not None
        if now - state.pending_since >= guards.confirm_after:
            return None  # confirmed
        since = state.pending_since
    else:
        since = now
    new_state = replace(state, pending=backends, pending_since=since)
    return Verdict(
        None,
        new_state,
        f"would remove {len(removed)} of {len(applied)} backends "
        f"({fraction:.0%} > max_removal_fraction {guards.max_removal_fraction:.0%}); "
        f"held until seen again {guards.confirm_after:g}s after first",
        hold_until=since + guards.confirm_after,
    )


@dataclass(frozen=True)
class Evaluation:
    verdict: Verdict
    warnings: tuple[str, ...] = ()
    panic: bool = False


def evaluate(
    answers: Sequence[Snapshot | SourceError],
    state: PolicyState,
    now: float,
    target: Target,
    policy: AddressPolicy,
    health: Mapping[ProbeKey, bool] | None = None,
) -> Evaluation:
    """The whole decision for one target: address policy, probes, tiers, guard."""
    warnings: list[str] = []
    filtered: list[Snapshot | SourceError] = []
    for answer in answers:
        if isinstance(answer, Snapshot):
            answer, dropped = filter_addresses(answer, target, policy)
            warnings += dropped
        filtered.append(answer)
    panic = False
    if target.health_check is not None and health is not None:
        probed = apply_probes(
            filtered, health, target.health_check.port, target.health_check.panic_threshold
        )
        filtered, panic = list(probed.answers), probed.panic
        if panic:
            warnings.append(
                f"PANIC: probes fail {probed.failing} of {probed.healthy_by_registry} backends "
                f"the registries call healthy (>= panic_threshold "
                f"{target.health_check.panic_threshold:.0%}); assuming the probe path is "
                "broken and ignoring the probes"
            )
    verdict = choose(filtered, state, now, target)
    if verdict.decision is not None:
        named = settle_hostnames(verdict.decision.backends)
        warnings += named.warnings
        if named.backends is not verdict.decision.backends:
            verdict = replace(verdict, decision=replace(verdict.decision, backends=named.backends))
    return Evaluation(verdict, tuple(warnings), panic)
