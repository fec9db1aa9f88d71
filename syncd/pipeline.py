"""One pipeline for every driver: (target, answers, memory, live state) -> decision -> plan.

`syncd render`, `syncd run --once` and the daemon differ only in where the inputs come from
(a file and no cluster; one read of everything; watches and a cache) and what they do with
the plan (print it, apply it once, apply it and keep watching). The decision and the plan
are made here, the same way for all three, and without any I/O:

    answers ─▶ policy.evaluate (address policy, probes, tiers, guard) ─▶ decision
    decision + live state ─▶ ownership rules ─▶ render ─▶ plan (Service first, deletes last)

What the cluster holds is `syncd.live`'s (and the policy's memory seeded from it); what
a step concludes is `syncd.results`'.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from syncd.cluster_networks import (
    ClusterNetworks,
    Refusal,
    applies_to,
    file_target_warnings,
    refusal,
)
from syncd.errors import OwnershipConflict, TargetError
from syncd.kinds import (
    TRAFFIC_DISTRIBUTION,
    Obj,
    describe_object,
)
from syncd.live import LiveState, backends_of_endpoints, backends_of_slices
from syncd.model import (
    AddressPolicy,
    Answer,
    Backend,
    ProbeKey,
    Snapshot,
    Target,
)
from syncd.ownership import (
    ACTIVE_SOURCE_ANNOTATION,
    ACTIVE_TIER_ANNOTATION,
    owner_description,
    updatable_by,
)
from syncd.plan import plan_changes
from syncd.policy import Decision, Evaluation, PolicyState, Verdict, evaluate
from syncd.render import placement_of, render_target
from syncd.results import PENDING_UID, Outcome, Step, TargetPlan, TargetResult


def run(
    target: Target,
    answers: Sequence[Answer],
    memory: PolicyState,
    live: LiveState,
    *,
    now: float,
    address_policy: AddressPolicy,
    owner_id: str,
    health: Mapping[ProbeKey, bool] | None = None,
    problems: Sequence[str] = (),
    networks: ClusterNetworks | None = None,
) -> Step:
    """Decide and plan for one target. `problems` are the sources' failures, for messages;
    `networks` the cluster's own (None where no cluster is known: render)."""
    if networks is not None and applies_to(target, address_policy):
        refused = refusal(target, address_policy, networks, _addresses(answers, live, owner_id))
        if refused is not None and refused.unknown:  # nothing written, nothing withdrawn
            message = refused.message()
            result = TargetResult(target.key, Outcome.STALE, message=message)
            return Step(Evaluation(Verdict(None, memory, reason=message)), result=result)
        if refused is not None:
            return withdrawal(target, refused, memory, live, owner_id)
    evaluation = evaluate(answers, memory, now, target, address_policy, health)
    verdict = evaluation.verdict
    noted = (
        []
        if verdict.decision is None or networks is None
        else (file_target_warnings(target, networks, verdict.decision.backends))
    )
    noted += filter(None, [headless_warning(target, live, owner_id)])
    if noted:
        evaluation = replace(evaluation, warnings=(*evaluation.warnings, *noted))
    if verdict.decision is None:
        if verdict.hold_until is not None:
            outcome = Outcome.HELD
        elif verdict.protected:
            outcome = Outcome.PROTECTED
        else:
            outcome = Outcome.STALE
        detail = "; ".join(problems)
        message = verdict.reason + (f": {detail}" if detail else "")
        return Step(evaluation, result=TargetResult(target.key, outcome, message=message))
    if not verdict.decision.backends and not _applied_before(live, owner_id):
        message = (
            f"{verdict.decision.source} lists no backends, and nothing was ever applied for "
            "this target: not creating an empty Service (the first answer with backends "
            "creates it)"
        )
        result = TargetResult(target.key, Outcome.EMPTY, message=message)
        return Step(evaluation, result=result)
    try:
        plan = plan_target(target, verdict.decision, live, owner_id)
    except OwnershipConflict as exc:
        return Step(evaluation, result=_blocked(target, Outcome.CONFLICT, exc, verdict.decision))
    except TargetError as exc:
        return Step(evaluation, result=_blocked(target, Outcome.FAILED, exc, verdict.decision))
    return Step(evaluation, plan=plan)


def _applied_before(live: LiveState, owner_id: str) -> bool:
    """Does the cluster hold anything this instance wrote for the target?"""
    return any(
        obj is not None and updatable_by(obj, owner_id)
        for obj in (live.service, live.endpoints, *live.slices)
    )


def _addresses(answers: Sequence[Answer], live: LiveState, owner_id: str) -> list[str]:
    """Every address the target's answers list, and every address applied for it now."""
    listed = [b.address for a in answers if isinstance(a, Snapshot) for b in a.backends]
    applied = backends_of_slices(live.owned_slices(owner_id))
    if live.endpoints is not None and updatable_by(live.endpoints, owner_id):
        applied |= backends_of_endpoints(live.endpoints)
    return listed + [b.address for b in applied]


def withdrawal(
    target: Target, refused: Refusal, memory: PolicyState, live: LiveState, owner_id: str
) -> Step:
    """A refused resource: nothing is written for it, and the endpoint objects written for
    it before (the network changed, or the spec) are deleted. Its Service stays, so its
    name still resolves and clients are refused rather than sent into the cluster; the
    policy forgets what was applied, so nothing holds the refusal's removals back."""
    message = refused.message()
    forgotten = replace(memory, applied=None, pending=None, pending_since=None)
    evaluation = Evaluation(Verdict(None, forgotten, reason=message))
    result = TargetResult(target.key, Outcome.CLUSTER_ADDRESS, message=message)
    owned: list[Obj] = list(live.owned_slices(owner_id))
    if live.endpoints is not None and updatable_by(live.endpoints, owner_id):
        owned.append(live.endpoints)
    if not owned:
        return Step(evaluation, result=result)
    decision = Decision(frozenset(), 0, "(withdrawn)", message)
    plan = TargetPlan(target, decision, tuple(plan_changes([], owned)))
    return Step(evaluation, plan=plan, result=result)


def _blocked(target: Target, outcome: Outcome, exc: Exception, decision: Decision) -> TargetResult:
    return TargetResult(target.key, outcome, message=str(exc), decision=decision)


def check_service(target: Target, live: LiveState, owner_id: str) -> None:
    """Raise if the Service rules forbid touching this target at all."""
    service = live.service
    name = f"Service {target.key}"
    if service is None:
        if not target.manage_service and not live.offline:
            raise TargetError(f"{name} does not exist; create it, or set manage_service: true")
        return
    spec = service.get("spec") or {}
    if spec.get("selector"):
        raise OwnershipConflict(
            f"{name} has a selector, so the control plane manages its endpoints; "
            "syncd only serves selectorless Services"
        )
    if spec.get("type") == "ExternalName":
        raise OwnershipConflict(f"{name} is of type ExternalName and cannot have endpoints")
    owned = updatable_by(service, owner_id)
    if target.manage_service and not owned:
        raise OwnershipConflict(
            f"{name} exists and is {owner_description(service)}; "
            "set manage_service: false to use it as it is"
        )
    if not target.manage_service:
        live_ports = {
            (p.get("name") or "", p.get("protocol") or "TCP") for p in spec.get("ports") or ()
        }
        missing = [p for p in target.ports if (p.name, p.protocol) not in live_ports]
        if missing:
            names = ", ".join(f"{p.name or '(unnamed)'}/{p.protocol}" for p in missing)
            raise TargetError(f"{name} has no port {names}; its ports must match the config")


HINTED_DISTRIBUTIONS = ("PreferClose", "PreferSameZone")


def topology_hints(
    target: Target, live: LiveState, backends: Iterable[Backend]
) -> tuple[bool, str | None]:
    """Write zone hints? Only when the Service asks (its trafficDistribution: the config's
    for a Service syncd manages, the live one's otherwise) and every ready backend has a
    zone, as kube-proxy ignores the hints of a Service whose ready endpoints lack one.
    Returns the answer and, when it is no for want of zones, a warning."""
    if target.manage_service:
        wanted = target.traffic_distribution
    else:
        wanted = ((live.service or {}).get("spec") or {}).get("trafficDistribution")
    if wanted not in HINTED_DISTRIBUTIONS:
        return False, None
    missing = sorted(b.address for b in backends if b.ready and not b.zone)
    if missing:
        return False, (
            f"trafficDistribution {wanted}: {len(missing)} ready backends have no zone "
            f"(e.g. {missing[0]}); no zone hints written, so clients use every zone"
        )
    return True, None


def headless_warning(target: Target, live: LiveState, owner_id: str) -> str | None:
    """The Service syncd manages is not what `headless` asks, and cannot become it: the
    API server never changes a Service's clusterIP. Deleting it is the owner's call."""
    service = live.service
    if not target.manage_service or service is None or not updatable_by(service, owner_id):
        return None
    if ((service.get("spec") or {}).get("clusterIP") == "None") == target.headless:
        return None
    now, wanted = (
        ("has a ClusterIP", "headless: true asks for none")
        if target.headless
        else ("is headless (clusterIP: None)", "headless is off")
    )
    return (
        f"Service {target.key} {now} and {wanted}; a Service's clusterIP cannot change in "
        f"place: delete it (kubectl delete service -n {target.namespace} {target.service}) "
        "and syncd creates it again as configured, with its endpoints"
    )


def family_warning(target: Target, live: LiveState, backends: Iterable[Backend]) -> str | None:
    """The live Service has no ClusterIP of a family its ready backends are in: kube-proxy
    programs a Service's endpoints of its own families only, so those are never used.
    A headless Service has no ClusterIP at all: the cluster DNS answers both families."""
    spec = (live.service or {}).get("spec") or {}
    families = spec.get("ipFamilies")
    if not families or spec.get("clusterIP") == "None":
        return None
    counts = {"IPv4": 0, "IPv6": 0}
    for backend in backends:
        if backend.ready:
            counts[backend.family.value] += 1
    unused = [(family, n) for family, n in counts.items() if n and family not in families]
    if not unused:
        return None
    family, count = unused[0]
    return (
        f"Service {target.key} has ClusterIPs of {'/'.join(families)} only: kube-proxy "
        f"programs none of its {count} {family} endpoints; set ipFamilyPolicy: "
        "PreferDualStack on it (on a dual-stack cluster it then gets both)"
    )


def tier_annotations(target: Target, decision: Decision) -> dict[str, str] | None:
    """Where the backends come from, on the Service, for targets with several tiers."""
    if len(target.sources) < 2:
        return None
    return {
        ACTIVE_TIER_ANNOTATION: str(decision.tier),
        ACTIVE_SOURCE_ANNOTATION: decision.source[:250],
    }


def plan_target(target: Target, decision: Decision, live: LiveState, owner_id: str) -> TargetPlan:
    """The writes for one target; raises OwnershipConflict or TargetError instead.

    The Service is planned first and, when it does not exist yet, the objects that point
    at it carry PENDING_UID until the sink has created it.
    """
    check_service(target, live, owner_id)
    warnings: list[str] = []
    wanted = target.traffic_distribution
    if wanted and (TRAFFIC_DISTRIBUTION, wanted) in live.unsupported:
        warnings.append(
            f"traffic_distribution {wanted}: this Kubernetes API server does not keep it; "
            "left out of the Service (no zone hints written)"
        )
        target = replace(target, traffic_distribution=None)
    endpoints = live.endpoints
    endpoints_owned = endpoints is not None and updatable_by(endpoints, owner_id)
    if endpoints is not None and not endpoints_owned:
        if target.output.endpoints:
            raise OwnershipConflict(
                f"Endpoints {target.key} exists and is {owner_description(endpoints)}; "
                "left untouched, nothing written for this target"
            )
        warnings.append(
            f"Endpoints {target.key} exists and is not syncd's: the mirroring controller adds "
            "its addresses to the Service too; delete it once syncd's slices are in place"
        )
    owned_slices = live.owned_slices(owner_id)
    for obj in live.foreign_slices(owner_id):
        warnings.append(
            f"{describe_object(obj)} also serves this Service and is "
            f"{owner_description(obj)}; syncd leaves it alone"
        )
    if live.service is not None:
        service_uid: str | None = (live.service.get("metadata") or {}).get("uid")
    else:
        service_uid = None if live.offline else PENDING_UID
    hints, why_not = topology_hints(target, live, decision.backends)
    if why_not:
        warnings.append(why_not)
    missing_family = family_warning(target, live, decision.backends)
    if missing_family:
        warnings.append(missing_family)
    desired = render_target(
        target,
        decision.backends,
        owner_id,
        placement_of(owned_slices),
        service_uid,
        include_service=target.manage_service,
        service_annotations=tier_annotations(target, decision),
        hints=hints,
    )
    current: list[Obj] = list(owned_slices)
    if endpoints_owned:
        current.append(endpoints)  # type: ignore[arg-type]
    if target.manage_service and live.service is not None:
        current.append(live.service)
    changes = plan_changes(desired, current)
    return TargetPlan(target, decision, tuple(changes), tuple(warnings))


__all__ = [
    "HINTED_DISTRIBUTIONS",
    "check_service",
    "family_warning",
    "plan_target",
    "run",
    "tier_annotations",
    "topology_hints",
    "withdrawal",
]
