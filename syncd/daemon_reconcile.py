"""The daemon's side of one reconcile (`syncd.reconcile`): what a loop does that a one-shot
run does not.

- Before: a target is first decided once every one of its sources has answered; its policy
  memory is seeded from the cluster when it (re)starts; a resync of a target none of whose
  inputs (answers, cached objects, memory, probe results) has changed since it last
  converged costs nothing at all.
- After: a transition (stale, drain protected, held, a conflict, a failure) is reported
  once while it lasts; a failed write is retried with the target's own backoff; a held
  removal and a waiting failback queue the target again for when they are due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from syncd.cache import ClusterCache
from syncd.cluster_networks import ClusterNetworks
from syncd.leadership import Leadership
from syncd.live import seed_memory
from syncd.model import AddressPolicy, Target, ready_count
from syncd.observability import (
    HELD_REMOVALS,
    PROBE_PANICS,
    RECONCILES,
    TIER_SWITCHES,
    WORKQUEUE_RETRIES,
)
from syncd.reconcile import Reconciled, reconcile, record_blocked
from syncd.results import Outcome, TargetResult
from syncd.sink import Sink
from syncd.targets import DecisionInputs, TargetRegistry, TargetState
from syncd.workqueue import WorkQueue

log = logging.getLogger(__name__)

Report = Callable[[TargetResult], None]


class DaemonReconciler:
    """Reconciles one target at a time for the workers, and keeps what follows from it."""

    def __init__(
        self,
        registry: TargetRegistry,
        cache: ClusterCache,
        sink: Sink,
        queue: WorkQueue,
        leadership: Leadership,
        owner_id: str,
        report: Report,
        clock: Callable[[], float] = time.monotonic,
        networks: Callable[[], ClusterNetworks | None] = lambda: None,
        on_reconciled: Callable[[Target, TargetResult], None] | None = None,
        address_policy: Callable[[], AddressPolicy] = AddressPolicy,
    ):
        self._registry = registry
        self._networks = networks  # the cluster's own, as last read (syncd.network_watch)
        self._cache = cache
        self._sink = sink
        self._queue = queue
        self._leadership = leadership
        self._owner_id = owner_id
        self._report = report
        self._clock = clock
        self._address_policy = address_policy  # the running config's
        # told of every reconcile's result (an ExternalService's status follows it)
        self._on_reconciled = on_reconciled
        self.failed: set[str] = set()  # targets whose last write failed (retried on recovery)
        self._failed_lock = threading.Lock()

    def reconcile(self, state: TargetState, reason: str) -> None:
        target = state.target
        answers = self._registry.answers(state)
        if any(answer is None for answer in answers):
            return  # wait until every source has answered once
        live = self._cache.live_state(target)
        if state.memory.policy is None:
            state.memory.policy = seed_memory(target, live, self._owner_id, one_shot=False)
        health = state.prober.health() if state.prober else None
        networks = self._networks()
        policy = self._address_policy()
        inputs = DecisionInputs(
            (*answers, live.service, live.endpoints, *live.slices, networks, state.memory.policy),
            (policy, health),
        )
        if reason == "resync" and inputs.same_as(state.converged_on):
            RECONCILES.labels(Outcome.CONVERGED.value, reason).inc()
            state.last_success = time.time()
            return  # nothing it depends on has changed since it last converged
        state.converged_on = None
        now = self._clock()
        done = reconcile(
            target,
            answers,  # type: ignore[arg-type]  # no None left (checked above)
            state.memory.policy,
            live,
            self._sink,
            now=now,
            address_policy=policy,
            owner_id=self._owner_id,
            health=health,
            networks=networks,
        )
        state.memory.policy = done.memory
        state.refused = done.result.outcome is Outcome.CLUSTER_ADDRESS
        self._note_evaluation(state, done)
        if done.recheck_at is not None:  # e.g. a failback waiting for failback_after
            self._queue.add_after(target.key, done.recheck_at - now, "recheck")
        RECONCILES.labels(done.result.outcome.value, reason).inc()
        if not done.written:
            self._blocked(state, done)
        else:
            self._written(state, done, inputs)
        self._leadership.passed(target.key)  # its first pass is done: written, or why not
        if self._on_reconciled is not None:
            self._on_reconciled(target, done.result)

    def _note_evaluation(self, state: TargetState, done: Reconciled) -> None:
        for warning in state.memory.new_warnings(done.step.evaluation.warnings):
            log.warning("%s: %s", state.target.key, warning, extra={"target": state.target.key})
        if done.step.evaluation.panic:
            PROBE_PANICS.labels(state.target.key).inc()

    def _written(self, state: TargetState, done: Reconciled, inputs: DecisionInputs) -> None:
        """The plan went to the sink: changed, converged or failed."""
        target, result = state.target, done.result
        assert done.step.plan is not None
        if done.step.result is not None:  # a refused resource's withdrawal failed: retry it
            if not self._leadership.fenced():
                self._failed_attempt(state, result)
            return
        decision = done.step.plan.decision
        self._ended(state, decision.source)
        if not decision.backends:
            log.warning(
                "%s: %s lists no backends; applying that (an empty answer is real)",
                target.key,
                decision.source,
                extra={"target": target.key, "source": decision.source, "action": "apply"},
            )
        if decision.switched_from is not None:
            TIER_SWITCHES.labels(target.key, str(decision.switched_from), str(decision.tier)).inc()
        state.ready = ready_count(decision.backends)
        state.not_ready = len(decision.backends) - state.ready
        state.tier = decision.tier if len(target.sources) > 1 else None
        if result.outcome is Outcome.FAILED:
            if not self._leadership.fenced():  # fenced: the next leader takes over
                self._failed_attempt(state, result)
            return
        self._queue.forget(target.key)
        with self._failed_lock:
            self.failed.discard(target.key)
        state.last_success = time.time()  # converged or changed: in sync now
        state.reported = None
        if result.outcome is Outcome.CONVERGED and done.recheck_at is None:
            state.converged_on = DecisionInputs(
                (*inputs.objects[:-1], state.memory.policy), inputs.health
            )
        if result.outcome is not Outcome.CONVERGED or decision.switched_from is not None:
            self._report(result)

    def _ended(self, state: TargetState, source: str) -> None:
        """Stale or drain protection is over: said once."""
        if state.stale:
            state.stale = False
            about = {"target": state.target.key, "source": source, "action": "apply"}
            log.info("%s: %s answers again", state.target.key, source, extra=about)
        if state.protected:
            state.protected = False
            message = f"{source} lists enough ready backends again; applying it"
            about = {"target": state.target.key, "source": source, "action": "apply"}
            log.warning("%s: drain protection ends: %s", state.target.key, message, extra=about)
            self._sink.record_event(state.target, "DrainProtectionEnded", message, "Normal")

    def _failed_attempt(self, state: TargetState, result: TargetResult) -> None:
        key = state.target.key
        with self._failed_lock:
            self.failed.add(key)
        if result.changes or result.stale_read:
            state.memory.policy = None  # what is applied is not what was decided: re-read it
        delay = self._queue.add_rate_limited(key)
        WORKQUEUE_RETRIES.inc()
        if state.reported != result.message:
            state.reported = result.message
            self._report(result)
        attempt = self._queue.retries(key)
        about = {"target": key, "action": "retry"}
        log.info("%s: retrying in %.1fs (attempt %d)", key, delay, attempt, extra=about)

    def _blocked(self, state: TargetState, done: Reconciled) -> None:
        """Nothing was written: stale sources, a held removal, a conflict, a bad setup.
        Each is reported (and its Event recorded) once while it lasts."""
        result, key = done.result, state.target.key
        if result.outcome is Outcome.HELD:
            HELD_REMOVALS.labels(key).inc()
            pending_since = done.step.evaluation.verdict.state.pending_since
            if state.held_since != pending_since:
                state.held_since = pending_since
                self._report(result)
            assert done.hold_until is not None
            self._queue.add_after(key, done.hold_until - self._clock(), "hold")
            return
        if result.outcome is Outcome.STALE:
            first, state.stale = not state.stale, True
        elif result.outcome is Outcome.PROTECTED:
            first, state.protected = not state.protected, True
        else:  # a conflict or a bad setup: the cache wakes the target when the object changes
            first, state.reported = state.reported != result.message, result.message
        if first:
            self._report(result)
            record_blocked(self._sink, state.target, result)

    def retry_failed(self) -> None:
        """The API server answers again: every failed target now, not after its backoff."""
        with self._failed_lock:
            failed = list(self.failed)
        for key in failed:
            self._queue.forget(key)
            self._queue.add(key, "api-recovered")

    def forget(self, key: str) -> None:
        with self._failed_lock:
            self.failed.discard(key)
