"""Apply a plan to the cluster: ownership checks first, then writes in a safe order.

Rules enforced here, before and while writing:

- Ownership: only objects carrying syncd's labels (and this instance's owner id) are
  updated or deleted. An object syncd would create that exists under another owner is a
  conflict: the target is reported and *nothing* is written for it (checked against the
  cluster cache before the first write).
- Order: the Service first (slices point at its uid), creates and updates before deletes,
  so a Service never has fewer endpoints mid-way than before or after.
- Stopping: a shutdown starts no new target, and a target whose first write is out gets
  its other writes too (a plan is a few writes), so no target is left half-written unless
  the API server itself fails mid-way; then the order above keeps what is written safe.
- Every write goes through the cache (the echo of syncd's own writes is not news).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from syncd.cache import ClusterCache
from syncd.errors import KubeConflict, KubeError
from syncd.kinds import (
    CACHED_KINDS,
    EXTERNAL_SERVICE,
    KINDS,
    RESOURCE_LABEL,
    SERVICE,
    guarded_replacement,
    labels_of,
    target_key_of,
)
from syncd.kube import Kube
from syncd.model import Target
from syncd.ownership import owner_description, updatable_by
from syncd.plan import Action, Change, plan_changes
from syncd.policy import Decision
from syncd.protected import refusal
from syncd.ratelimit import TokenBucket
from syncd.results import Outcome, TargetPlan, TargetResult, with_service_uid

log = logging.getLogger(__name__)


REMOVED_FROM_CONFIG = "target removed from the config"


def restricted_endpoints_refusal(exc: KubeError) -> str | None:
    """The cluster's own refusal of an endpoint address in its networks, said as such, or
    None for any other error. OpenShift's RestrictedEndpointsAdmission answers 403 "endpoint
    address X is not allowed" to a writer without `create` on endpoints/restricted (or
    endpointslices/restricted); retrying would change nothing."""
    text = str(exc)
    if exc.status != 403 or "endpoint address" not in text or "is not allowed" not in text:
        return None
    detail = text[text.index("endpoint address") :].split(";")[0].strip()
    return (
        f"the cluster refused the write: {detail} (OpenShift's RestrictedEndpointsAdmission: "
        "the address is in the cluster's own networks); fix the address, or, if it is meant, "
        "grant syncd create on endpointslices/restricted (deploy/components/openshift-"
        "restricted-endpoints, docs/openshift.md)"
    )


class Sink:
    """Writes plans for one syncd instance (owner id) through the API and the cache."""

    def __init__(
        self,
        kube: Kube,
        cache: ClusterCache,
        owner_id: str,
        dry_run: bool = False,
        stop: threading.Event | None = None,
        component: str = "syncd",
        may_write: Callable[[], bool] | None = None,
        allow_protected: Callable[[], tuple[str, ...]] = tuple,
        prunes_resources: Callable[[], bool] = lambda: False,
    ):
        self._kube = kube
        self._may_write = may_write  # the leader's fence, checked right before every write
        self._cache = cache
        self._owner_id = owner_id
        self._dry_run = dry_run
        self._stop = stop or threading.Event()
        self._component = component
        # bulk Events (a registry outage: every target stale): 25, then one per 5 s
        self._bulk_events = TokenBucket(0.2, 25)
        # protected Services the running config may write, by name (syncd.protected)
        self._allow_protected = allow_protected
        # objects written for ExternalServices are pruned only by a run that reads them
        # (--resources): another run with the same identity does not know they exist
        self._prunes_resources = prunes_resources

    def apply(self, plan: TargetPlan) -> TargetResult:
        """Apply one target's plan; the result says what was written and what went wrong."""
        target, decision = plan.target, plan.decision
        refused = self._refused(plan)
        if refused is not None:
            return TargetResult(target.key, Outcome.REFUSED, message=refused, decision=decision)
        conflict = self._conflicting_create(plan.changes)
        if conflict is not None:
            return TargetResult(target.key, Outcome.CONFLICT, message=conflict, decision=decision)
        if self._dry_run or not plan.changes:
            outcome = Outcome.CHANGED if plan.changes else Outcome.CONVERGED
            return TargetResult(
                target.key, outcome, plan.changes, decision=decision, warnings=plan.warnings
            )
        if self._stop.is_set():  # stopping: start no new target (one begun is finished)
            return TargetResult(target.key, Outcome.FAILED, message="stopped", decision=decision)
        applied: list[Change] = []
        service_uid: str | None = None
        try:
            for change in plan.changes:
                if service_uid is not None:
                    change = with_service_uid(change, service_uid)
                written = self.write(change)
                if change.kind == SERVICE.name and change.action is Action.CREATE and written:
                    service_uid = written["metadata"]["uid"]
                applied.append(change)
        except KubeError as exc:
            refused = restricted_endpoints_refusal(exc)
            if refused is not None:
                log.error("%s: %s", target.key, refused, extra={"target": target.key})
                return TargetResult(
                    target.key, Outcome.CLUSTER_ADDRESS, tuple(applied), refused, decision
                )
            stale = isinstance(exc, KubeConflict)
            return TargetResult(
                target.key,
                Outcome.FAILED,
                tuple(applied),
                f"an object changed meanwhile: {exc}" if stale and applied else str(exc),
                decision,
                plan.warnings,
                stale_read=stale and not applied,
            )
        if decision.switched_from is not None:
            self.record_switch(target, decision)
        return TargetResult(
            target.key, Outcome.CHANGED, tuple(applied), decision=decision, warnings=plan.warnings
        )

    def _refused(self, plan: TargetPlan) -> str | None:
        """The last line of defence: a plan that would write a protected Service (its
        Endpoints or slices) nobody opted in is refused whole, however it got here (the
        config loader refuses such targets first). Logged, counted, and an Event."""
        for change in plan.changes:
            service = plan.target.service if change.kind != SERVICE.name else change.name
            message = refusal(change.namespace, service, self._allow_protected())
            if message is not None:
                about = {"target": plan.target.key, "action": "refuse"}
                log.error("%s: REFUSED: %s; nothing written", plan.target.key, message, extra=about)
                self._event(change.namespace, service, "SyncRefused", message)
                return f"{message}; nothing written"
        return None

    def _conflicting_create(self, changes: Iterable[Change]) -> str | None:
        """An object we would create that exists and is not ours (checked before writing)."""
        for change in changes:
            if change.action is not Action.CREATE:
                continue
            existing = self._cache.get(change.kind, change.namespace, change.name)
            if existing is not None and not updatable_by(existing, self._owner_id):
                return (
                    f"{change.ref} exists and is {owner_description(existing)}; "
                    "left untouched, nothing written for this target"
                )
        return None

    # -- single writes

    def write(self, change: Change) -> dict[str, Any] | None:
        """Perform one planned write; the answer goes into the cache."""
        oid = (change.kind, change.namespace, change.name)
        if self._may_write is not None and not self._may_write():
            raise KubeError(f"{change.ref}: not written: this replica is not the leader any more")
        self._cache.expect(oid, None if change.action is Action.DELETE else change.desired)
        try:
            if change.action is Action.DELETE:
                uid = ((change.live or {}).get("metadata") or {}).get("uid")
                self._kube.delete(
                    change.kind, change.namespace, change.name, uid, fence=self._may_write
                )
                self._cache.deleted(*oid, uid=uid or "")
                return None
            kind, desired = KINDS[change.kind], change.desired or {}
            if change.action is Action.CREATE:
                written = self._kube.create(dict(desired), fence=self._may_write)
            elif kind.merge_patch is not None:  # only the fields syncd manages
                patch = kind.merge_patch(desired, change.live or {})
                written = self._kube.merge_patch(
                    change.kind, change.namespace, change.name, patch, fence=self._may_write
                )
            else:  # the whole object, guarded by the live resourceVersion
                body = guarded_replacement(desired, change.live or {})
                written = self._kube.replace(body, fence=self._may_write)
        except KubeError:
            self._cache.write_failed(oid)
            raise
        if change.kind == SERVICE.name:
            dropped = self._cache.served.check_answer(change.desired or {}, written)
            if dropped is not None:
                self._event(
                    change.namespace, change.name, "FieldIgnored", self._dropped_message(dropped)
                )
        self._cache.wrote(written)
        return written

    def learn_served_fields(self, targets: Iterable[Target]) -> None:
        """Before writing: does the API server keep the field values these targets ask
        for, where their live Services say it may not? (see syncd.served)"""
        targets = list(targets)

        def live_service(target: Target) -> dict[str, Any] | None:
            service = self._cache.get(SERVICE.name, target.namespace, target.service)
            return (
                service if service is not None and updatable_by(service, self._owner_id) else None
            )

        for dropped in self._cache.served.probe(self._kube, targets, live_service):
            self._report_dropped(dropped, targets)

    def _report_dropped(self, dropped: tuple[str, str], targets: Iterable[Target]) -> None:
        """An Event on every Service asking for a field value the server does not keep."""
        for target in targets:
            if target.traffic_distribution == dropped[1] and target.manage_service:
                self.record_event(target, "FieldIgnored", self._dropped_message(dropped), once=True)

    def _dropped_message(self, dropped: tuple[str, str]) -> str:
        field, value = dropped
        return (
            f"traffic_distribution {value}: this Kubernetes API server does not keep "
            f"Service {field}={value} ({self._cache.served.reason(dropped)}); "
            "syncd leaves it out and writes no zone hints"
        )

    # -- events

    def record_switch(self, target: Target, decision: Decision) -> None:
        """A tier switch is an Event on the Service (best effort: never fails the target)."""
        message = decision.switch_sentence()
        assert message is not None
        failback = decision.failback
        self.record_event(
            target,
            "Failback" if failback else "Failover",
            message,
            "Normal" if failback else "Warning",
        )

    def record_event(
        self,
        target: Target,
        reason: str,
        message: str,
        type_: str = "Warning",
        once: bool = False,
        bulk: bool = False,
    ) -> None:
        """An Event on the target's Service, as `kubectl describe service` shows it, or on
        the ExternalService that declared the target, where its team looks
        (`kubectl describe externalservice`). A `bulk` one is dropped when the budget of
        bulk Events is spent.

        With `once`, the Event is named after what it says: recording the same again is a
        409 and nothing more, until the API server expires it (an hour), so a condition
        that lasts is reported once, not on every pass, even by a one-shot run.
        """
        if bulk and not self._bulk_events.try_take():
            log.debug("%s: %s not recorded as an Event (bulk budget spent)", target.key, reason)
            return
        about = None
        if target.resource is not None:
            about = {
                "apiVersion": EXTERNAL_SERVICE.api_version,
                "kind": EXTERNAL_SERVICE.name,
                "name": target.resource.name,
                "namespace": target.namespace,
                "uid": target.resource.uid,
            }
        self._event(target.namespace, target.service, reason, message, type_, once, about)

    def _event(
        self,
        namespace: str,
        service_name: str,
        reason: str,
        message: str,
        type_: str = "Warning",
        once: bool = True,
        about: dict[str, str] | None = None,
    ) -> None:
        """An Event about `about`, else the Service `service_name`."""
        if self._dry_run:
            return
        target_key = f"{namespace}/{service_name}"
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if about is None:
            service = self._cache.get(SERVICE.name, namespace, service_name) or {}
            about = {
                "apiVersion": "v1",
                "kind": "Service",
                "name": service_name,
                "namespace": namespace,
                "uid": (service.get("metadata") or {}).get("uid", ""),
            }
        if once:
            digest = hashlib.sha256(f"{self._owner_id}\0{reason}\0{message}".encode()).hexdigest()
            name: dict[str, str] = {"name": f"{service_name}.syncd-{digest[:16]}"}
        else:
            name = {"generateName": f"{service_name}."}
        event = {
            "metadata": {**name, "namespace": namespace},
            "involvedObject": about,
            "reason": reason,
            "message": message[:1000],
            "type": type_,
            "source": {"component": self._component},
            "reportingComponent": self._component,
            "reportingInstance": self._component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._kube.create_event(namespace, event)
        except KubeConflict:
            pass  # recorded already (once)
        except KubeError as exc:
            log.warning("%s: could not record %s as an Event: %s", target_key, reason, exc)

    # -- removed targets

    def prune(self, configured: Iterable[str]) -> list[TargetResult]:
        """Delete what this instance owns for Services no longer in the config (per target,
        from the cache: no list requests)."""
        keep = set(configured)
        prunes_resources = self._prunes_resources()
        leftovers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for kind in CACHED_KINDS:
            for obj in self._cache.owned(kind.name, self._owner_id):
                key = target_key_of(obj)
                if key in keep or (RESOURCE_LABEL in labels_of(obj) and not prunes_resources):
                    continue
                leftovers[key].append(obj)
        results = []
        for key, objects in sorted(leftovers.items()):
            changes = plan_changes([], objects)
            applied: list[Change] = []
            try:
                for change in changes:
                    if not self._dry_run:
                        self.write(change)
                    applied.append(change)
            except KubeError as exc:
                results.append(TargetResult(key, Outcome.FAILED, tuple(applied), str(exc)))
                continue
            results.append(
                TargetResult(key, Outcome.CHANGED, tuple(applied), message=REMOVED_FROM_CONFIG)
            )
        return results
