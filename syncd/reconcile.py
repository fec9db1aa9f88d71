"""One reconcile pass: sources -> policy -> render -> plan -> apply, target by target.

Safety rules enforced here:

- Ownership: only objects carrying syncd's labels (and this instance's owner id) are
  updated or deleted. A same-named object that is not syncd's is a conflict: the target is
  reported and *nothing* is written for it (checked before the first write).
- A Service with a selector is always a conflict (the control plane fills its endpoints).
  A selectorless Service made by someone else is used only when `manage_service: false`.
- Fail static: when no source can answer, nothing is written and the target is reported
  stale; the cluster keeps the last applied state.
- One failing target never stops the others.
"""

from __future__ import annotations

import datetime
import enum
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from syncd.errors import KubeConflict, KubeError, OwnershipConflict, SourceError, TargetError
from syncd.health import Prober
from syncd.kube import Kube
from syncd.model import Backend, Config, ConsulConnection, Snapshot, Target
from syncd.ownership import (
    ACTIVE_SOURCE_ANNOTATION,
    ACTIVE_TIER_ANNOTATION,
    ANNOTATION_PREFIX,
    MANAGED_LABEL_KEYS,
    SERVICE_NAME_LABEL,
    is_owned,
    owned_selector,
    owner_description,
)
from syncd.plan import Action, Change, describe_object, object_id, plan_changes
from syncd.policy import Decision, PolicyState, evaluate, probe_key
from syncd.render import placement_of, render_target, slice_key_of
from syncd.sources import build_source

log = logging.getLogger(__name__)

_STALE_WRITE_RETRIES = 3


class Outcome(enum.StrEnum):
    CONVERGED = "converged"  # nothing to do
    CHANGED = "changed"  # writes applied (or planned, in a dry run)
    CONFLICT = "conflict"  # an object syncd would write is not syncd's
    STALE = "stale"  # no source could answer; last applied state kept
    HELD = "held"  # a large removal waits for confirmation; last applied state kept
    FAILED = "failed"  # the API or the target's setup failed

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


@dataclass(frozen=True)
class RunSettings:
    owner_id: str
    dry_run: bool = False


@dataclass
class _LiveState:
    """What the cluster holds for one target, split by ownership."""

    service: dict[str, Any] | None
    endpoints: dict[str, Any] | None
    owned_slices: list[dict[str, Any]] = field(default_factory=list)
    foreign_slices: list[dict[str, Any]] = field(default_factory=list)


def ask_sources(
    target: Target, consul: ConsulConnection | None = None
) -> tuple[list[Snapshot | SourceError], list[str]]:
    """One answer from every source of the target (a Snapshot or the SourceError)."""
    answers: list[Snapshot | SourceError] = []
    problems = []
    for index, source_config in enumerate(target.sources):
        source = build_source(source_config, target, consul)
        try:
            answers.append(source.fetch())
        except SourceError as exc:
            problems.append(f"sources[{index}] ({source.describe()}): {exc}")
            answers.append(exc)
    return answers, problems


def probe_round(target: Target, answers) -> dict | None:
    """--once: probe every registry-ready backend once (no rise/fall history in one run)."""
    if target.health_check is None:
        return None
    check = replace(target.health_check, rise=1, fall=1)
    prober = Prober(check, target.key)
    try:
        keys = {
            probe_key(b, check.port)
            for a in answers
            if isinstance(a, Snapshot)
            for b in a.backends
            if b.ready
        }
        prober.run_round(keys)
        return prober.health()
    finally:
        prober.close()


def run_pass(
    kube: Kube, config: Config, settings: RunSettings, sleep=time.sleep
) -> list[TargetResult]:
    """Reconcile every target once, then prune what removed targets left behind.

    The policy starts from what the cluster holds (applied backends, the active tier in the
    Service's annotation), so the removal guard works in one-shot runs too: a large removal
    is read again `confirm_after` later within the same run before it is applied.
    """
    results = []
    for target in config.targets:
        try:
            live = _read_live(kube, target, settings.owner_id)
        except KubeError as exc:
            results.append(TargetResult(target.key, Outcome.FAILED, message=str(exc)))
            continue

        def decide(state: PolicyState, target: Target = target):
            answers, problems = ask_sources(target, config.consul)
            for problem in problems:
                log.warning("%s: %s", target.key, problem)
            health = probe_round(target, answers)
            evaluation = evaluate(
                answers, state, time.monotonic(), target, config.address_policy, health
            )
            return evaluation, problems

        evaluation, problems = decide(seed_state(live, target))
        verdict = evaluation.verdict
        if verdict.decision is None and verdict.hold_until is not None:
            log.warning("%s: %s", target.key, verdict.reason)
            sleep(max(0.0, verdict.hold_until - time.monotonic()))
            evaluation, problems = decide(verdict.state)
            verdict = evaluation.verdict
            live = None  # read again: the cluster may have changed while we waited
        for warning in evaluation.warnings:
            log.warning("%s: %s", target.key, warning)
        if verdict.decision is None:
            outcome = Outcome.HELD if verdict.hold_until is not None else Outcome.STALE
            detail = "; ".join(problems)
            message = verdict.reason + (f": {detail}" if detail else "")
            results.append(TargetResult(target.key, outcome, message=message))
            continue
        results.append(reconcile_target(kube, target, verdict.decision, settings, live))
    results.extend(prune_removed_targets(kube, config, settings))
    return results


def seed_state(live: _LiveState, target: Target) -> PolicyState:
    """What the cluster says was applied last: the policy's memory for a one-shot run."""
    annotations = ((live.service or {}).get("metadata") or {}).get("annotations") or {}
    tier = annotations.get(ACTIVE_TIER_ANNOTATION) or ""
    applied = backends_of_slices(live.owned_slices)
    # No memory of how long a higher tier has qualified: a one-shot run fails back as soon
    # as it finds one qualifying (the daemon holds failbacks for failback_after).
    long_ago = (float("-inf"),) * len(target.sources)
    return PolicyState(
        active=int(tier) if tier.isdigit() else None,
        applied=applied or None,
        qualified_since=long_ago,
    )


def backends_of_slices(slices) -> frozenset[Backend]:
    """The backends that live EndpointSlices hold (inverse of rendering)."""
    backends = set()
    for obj in slices:
        key = slice_key_of(obj)
        if key is None or not key.ports:
            continue
        for endpoint in obj.get("endpoints") or ():
            address = (endpoint.get("addresses") or [""])[0]
            ready = (endpoint.get("conditions") or {}).get("ready") is not False
            backends.add(Backend(address, key.ports, ready))
    return frozenset(backends)


def reconcile_target(
    kube: Kube,
    target: Target,
    decision: Decision,
    settings: RunSettings,
    live: _LiveState | None = None,
) -> TargetResult:
    """Bring one target's objects in line with `decision.backends`."""
    for attempt in range(1, _STALE_WRITE_RETRIES + 1):
        try:
            changes, warnings = _reconcile(
                kube, target, decision, settings, live if attempt == 1 else None
            )
        except OwnershipConflict as exc:
            return TargetResult(target.key, Outcome.CONFLICT, message=str(exc), decision=decision)
        except TargetError as exc:
            return TargetResult(target.key, Outcome.FAILED, message=str(exc), decision=decision)
        except KubeConflict as exc:
            if attempt == _STALE_WRITE_RETRIES:
                return TargetResult(target.key, Outcome.FAILED, message=str(exc), decision=decision)
            log.info("%s: an object changed while syncing (%s); re-reading", target.key, exc)
            continue
        except _PartialApply as exc:
            return TargetResult(
                target.key, Outcome.FAILED, tuple(exc.applied), str(exc.error), decision=decision
            )
        except KubeError as exc:
            return TargetResult(target.key, Outcome.FAILED, message=str(exc), decision=decision)
        outcome = Outcome.CHANGED if changes else Outcome.CONVERGED
        if decision.switched_from is not None and not settings.dry_run:
            _record_switch(kube, target, decision)
        return TargetResult(
            target.key, outcome, tuple(changes), decision=decision, warnings=tuple(warnings)
        )
    raise AssertionError("unreachable")


class _PartialApply(Exception):
    """Some writes of a target were applied before one failed."""

    def __init__(self, applied: list[Change], error: Exception):
        super().__init__(str(error))
        self.applied = applied
        self.error = error


def _read_live(kube: Kube, target: Target, owner_id: str) -> _LiveState:
    service = kube.get("Service", target.namespace, target.service)
    endpoints = kube.get("Endpoints", target.namespace, target.service)
    slices = kube.list("EndpointSlice", target.namespace, f"{SERVICE_NAME_LABEL}={target.service}")
    state = _LiveState(service, endpoints)
    for obj in slices:
        (state.owned_slices if is_owned(obj, owner_id) else state.foreign_slices).append(obj)
    return state


def _check_service(target: Target, service: dict | None, owner_id: str) -> None:
    """Raise if the Service rules forbid touching this target at all."""
    name = f"Service {target.key}"
    if service is None:
        if not target.manage_service:
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
    owned = is_owned(service, owner_id)
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


def _desired(
    target: Target,
    backends: Iterable[Backend],
    state: _LiveState,
    owner_id: str,
    service_uid: str | None,
    annotations: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    return render_target(
        target,
        backends,
        owner_id,
        placement_of(state.owned_slices),
        service_uid,
        include_service=target.manage_service,
        service_annotations=annotations,
    )


def _check_creates(kube: Kube, changes: list[Change], state: _LiveState, owner_id: str) -> None:
    """Before any write: every object we would create must not exist under another owner."""
    foreign = {object_id(obj): obj for obj in state.foreign_slices}
    for change in changes:
        if change.action is not Action.CREATE:
            continue
        oid = (change.kind, change.namespace, change.name)
        if change.kind == "Endpoints":
            existing = state.endpoints
        elif change.kind == "Service":
            existing = state.service
        else:
            existing = foreign.get(oid) or kube.get(*oid)
        if existing is not None and not is_owned(existing, owner_id):
            raise OwnershipConflict(
                f"{change.ref} exists and is {owner_description(existing)}; "
                "left untouched, nothing written for this target"
            )


def _tier_annotations(target: Target, decision: Decision) -> dict[str, str] | None:
    """Where the backends come from, on the Service, for targets with several tiers."""
    if len(target.sources) < 2:
        return None
    return {
        ACTIVE_TIER_ANNOTATION: str(decision.tier),
        ACTIVE_SOURCE_ANNOTATION: decision.source[:250],
    }


def _record_switch(kube: Kube, target: Target, decision: Decision) -> None:
    """A tier switch is an Event on the Service (best effort: never fails the target)."""
    failback = decision.switched_from is not None and decision.tier < decision.switched_from
    message = (
        f"{'failback' if failback else 'failover'} from tier {decision.switched_from} "
        f"to tier {decision.tier} ({decision.source}): {decision.reason}"
    )
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    service = kube.get("Service", target.namespace, target.service) or {}
    event = {
        "metadata": {"generateName": f"{target.service}.", "namespace": target.namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Service",
            "name": target.service,
            "namespace": target.namespace,
            "uid": (service.get("metadata") or {}).get("uid", ""),
        },
        "reason": "Failback" if failback else "Failover",
        "message": message[:1000],
        "type": "Normal" if failback else "Warning",
        "source": {"component": "syncd"},
        "reportingComponent": "syncd",
        "reportingInstance": "syncd",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        kube.create_event(target.namespace, event)
    except KubeError as exc:
        log.warning("%s: could not record the tier switch as an Event: %s", target.key, exc)


def _reconcile(
    kube: Kube,
    target: Target,
    decision: Decision,
    settings: RunSettings,
    live: _LiveState | None,
) -> tuple[list[Change], list[str]]:
    """One attempt; `live` is what was just read, or None to read it now."""
    backends = decision.backends
    annotations = _tier_annotations(target, decision)
    owner_id = settings.owner_id
    state = live or _read_live(kube, target, owner_id)
    _check_service(target, state.service, owner_id)
    warnings = []
    endpoints_owned = state.endpoints is not None and is_owned(state.endpoints, owner_id)
    if state.endpoints is not None and not endpoints_owned:
        if target.output.endpoints:
            raise OwnershipConflict(
                f"Endpoints {target.key} exists and is {owner_description(state.endpoints)}; "
                "left untouched, nothing written for this target"
            )
        warnings.append(
            f"Endpoints {target.key} exists and is not syncd's: the mirroring controller adds "
            "its addresses to the Service too; delete it once syncd's slices are in place"
        )
    for obj in state.foreign_slices:
        warnings.append(
            f"{describe_object(obj)} also serves this Service and is "
            f"{owner_description(obj)}; syncd leaves it alone"
        )

    live: list[dict[str, Any]] = list(state.owned_slices)
    if endpoints_owned:
        live.append(state.endpoints)  # type: ignore[arg-type]
    if target.manage_service and state.service is not None:
        live.append(state.service)
    service_uid = (state.service or {}).get("metadata", {}).get("uid")

    changes = plan_changes(
        _desired(target, backends, state, owner_id, service_uid, annotations), live
    )
    _check_creates(kube, changes, state, owner_id)
    if settings.dry_run or not changes:
        return changes, warnings

    applied: list[Change] = []
    try:
        if changes[0].kind == "Service" and changes[0].action is Action.CREATE:
            # The slices need the new Service's uid for their ownerReference.
            created = kube.create(dict(changes[0].desired or {}))
            applied.append(changes[0])
            service_uid = created["metadata"]["uid"]
            live_rest = [obj for obj in live if obj.get("kind") != "Service"]
            desired = [
                obj
                for obj in _desired(target, backends, state, owner_id, service_uid, annotations)
                if obj.get("kind") != "Service"
            ]
            changes = [changes[0], *plan_changes(desired, live_rest)]
        for change in changes[len(applied) :]:
            apply_change(kube, change)
            applied.append(change)
    except KubeConflict:
        if not applied:
            raise
        raise _PartialApply(applied, KubeError("an object changed meanwhile")) from None
    except KubeError as exc:
        raise _PartialApply(applied, exc) from None
    return applied, warnings


def apply_change(kube: Kube, change: Change) -> None:
    """Perform one planned write."""
    if change.action is Action.CREATE:
        kube.create(dict(change.desired or {}))
    elif change.action is Action.DELETE:
        live_metadata = (change.live or {}).get("metadata") or {}
        kube.delete(change.kind, change.namespace, change.name, live_metadata.get("uid"))
    elif change.kind == "Service":
        kube.merge_patch("Service", change.namespace, change.name, _service_patch(change))
    else:
        kube.replace(_replacement(change))


def _replacement(change: Change) -> dict[str, Any]:
    """The desired object, keeping the live object's identity and other people's metadata."""
    desired = dict(change.desired or {})
    live_metadata = dict((change.live or {}).get("metadata") or {})
    metadata = dict(desired["metadata"])
    foreign_labels = {
        k: v for k, v in (live_metadata.get("labels") or {}).items() if k not in MANAGED_LABEL_KEYS
    }
    metadata["labels"] = {**foreign_labels, **metadata.get("labels", {})}
    for key in ("resourceVersion", "annotations"):
        if live_metadata.get(key) is not None:
            metadata[key] = live_metadata[key]
    if "ownerReferences" not in metadata and live_metadata.get("ownerReferences"):
        metadata["ownerReferences"] = live_metadata["ownerReferences"]
    desired["metadata"] = metadata
    return desired


def _service_patch(change: Change) -> dict[str, Any]:
    desired_labels = (change.desired or {}).get("metadata", {}).get("labels", {})
    live_labels = (change.live or {}).get("metadata", {}).get("labels") or {}
    labels: dict[str, Any] = {k: None for k in live_labels if k in MANAGED_LABEL_KEYS}
    labels.update(desired_labels)
    desired_annotations = (change.desired or {}).get("metadata", {}).get("annotations") or {}
    live_annotations = (change.live or {}).get("metadata", {}).get("annotations") or {}
    annotations: dict[str, Any] = {
        k: None for k in live_annotations if k.startswith(ANNOTATION_PREFIX)
    }
    annotations.update(desired_annotations)
    metadata: dict[str, Any] = {"labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "metadata": metadata,
        "spec": {"ports": (change.desired or {}).get("spec", {}).get("ports", [])},
    }


def prune_removed_targets(kube: Kube, config: Config, settings: RunSettings) -> list[TargetResult]:
    """Delete objects this instance owns for Services no longer in the config."""
    configured = {(t.namespace, t.service) for t in config.targets}
    leftovers: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    try:
        for kind in ("EndpointSlice", "Endpoints", "Service"):
            for obj in kube.list(kind, None, owned_selector(kind, settings.owner_id)):
                metadata = obj.get("metadata") or {}
                service = (
                    (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL)
                    if kind == "EndpointSlice"
                    else metadata.get("name")
                )
                key = (metadata.get("namespace", ""), service or "")
                if key not in configured:
                    leftovers[key].append(obj)
    except KubeError as exc:
        return [
            TargetResult(
                "(removed targets)",
                Outcome.FAILED,
                message=f"cannot list owned objects to prune: {exc}",
            )
        ]
    results = []
    for (namespace, service), objects in sorted(leftovers.items()):
        key = f"{namespace}/{service}"
        changes = plan_changes([], objects)
        applied = []
        try:
            for change in changes:
                if not settings.dry_run:
                    apply_change(kube, change)
                applied.append(change)
        except KubeError as exc:
            results.append(TargetResult(key, Outcome.FAILED, tuple(applied), str(exc)))
            continue
        results.append(
            TargetResult(
                key, Outcome.CHANGED, tuple(applied), message="target removed from the config"
            )
        )
    return results
