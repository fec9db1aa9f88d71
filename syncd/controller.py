"""The long-running daemon: a controller in the mould of client-go's informers and queues.

    sources (polled jobs on a shared scheduler, Consul watches) ─┐
    cluster cache (list + watch of Services, Endpoints, slices) ─┼─▶ work queue ─▶ workers:
    resync (spread over the interval), reload (SIGHUP, edits) ───┘   (per-target     pipeline
                                                                      backoff)       + sink

- Workers reconcile against the cache: a converged target costs no API request at all.
  The queue never gives one target to two workers at once, and coalesces bursts.
- A failed target is retried with its own capped, jittered backoff (and all retries
  together are rate-limited); when the API server comes back after an outage, every
  failed target is retried at once instead of waiting out its backoff.
- The echo of syncd's own writes is recognised by the cache (see `syncd.cache`), so one
  change costs one write and one reconcile; someone else's edit of a slice is put back.
- A target is first applied once every one of its sources has answered, and its policy
  memory (what was applied, the active tier) is seeded from the cluster whenever it
  (re)starts: process start and reload alike, so the removal guard holds there too.
- Resync re-queues every target once per interval, spread evenly over it (no burst), and
  compares with the cache; a target none of whose inputs (answers, cached objects, policy
  memory, probe results) has changed since it last converged is known to be converged.
- Fail static: while no source of a target can answer, nothing is written for it and it
  is reported stale; its sources retry with backoff.
- SIGHUP or an edit of the config file reloads it (between reconciles); an invalid file is
  logged with every problem and the old config keeps running.
- Stop: no new target is started; a worker finishes the target in flight (a few writes),
  and the process exits within `stop_grace` seconds even if the API server hangs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field, replace

from syncd import observability
from syncd.cache import ClusterCache
from syncd.config import load_config
from syncd.errors import ConfigError, SourceError
from syncd.health import Prober
from syncd.kinds import Kind, Obj, target_key_of
from syncd.kube import Kube
from syncd.leader import LeaderElector
from syncd.model import Config, Snapshot, Target, ready_count
from syncd.observability import (
    HELD_REMOVALS,
    LEADER,
    PROBE_PANICS,
    RECONCILES,
    TIER_SWITCHES,
    WORKQUEUE_DEPTH,
    WORKQUEUE_RETRIES,
    TargetStatus,
)
from syncd.ownership import is_owned
from syncd.pipeline import Answer, Outcome, Step, TargetMemory, TargetResult, run, seed_memory
from syncd.policy import probe_key
from syncd.scheduler import DaemonPool, Scheduler
from syncd.sink import Sink
from syncd.watchers import SourceRunner, TargetSources
from syncd.workqueue import ResyncPacer, RetryLimiter, WorkQueue

log = logging.getLogger(__name__)

PRUNE = "\0prune"  # queue key: delete what removed targets left behind
RELOAD = "\0reload"  # queue key: read the config file again
_TICK = 1.0  # seconds between resync batches


@dataclass(frozen=True)
class DaemonSettings:
    resync_interval: float = 300.0  # every target is compared with the cache this often
    workers: int = 4  # targets reconciled at once (see README: why 4)
    config_poll_interval: float = 1.0  # how often the config file's mtime is checked
    source_threads: int = 8  # threads shared by polled sources (DNS, files, queries)
    probe_threads: int = 32  # threads shared by every target's health probes
    stop_grace: float = 1.5  # seconds workers get to finish after SIGTERM
    namespaces: tuple[str, ...] | None = None  # None: the whole cluster
    allow_protected: tuple[str, ...] = ()  # --allow-protected, kept across reloads
    stuck_after: float = 120.0  # a worker busy with one target longer than this is wedged


@dataclass
class _TargetState:
    """Everything the daemon keeps for one target."""

    target: Target
    answers: list[Answer | None]
    sources: TargetSources | None = None
    prober: Prober | None = None
    memory: TargetMemory = field(default_factory=TargetMemory)
    stale: bool = False
    protected: bool = False  # drain protection is keeping the last applied state
    held_since: float | None = None  # the held removal already reported
    reported: str | None = None  # the conflict or failure already reported
    converged_on: tuple | None = None  # the inputs of the last converged reconcile
    ready: int = 0  # backends applied, for the gauges
    not_ready: int = 0
    tier: int | None = None
    last_success: float | None = None  # unix time it was last found or made in sync


def _same_inputs(a: tuple | None, b: tuple) -> bool:
    """The same answer, cache and memory objects (the cache and the sources replace
    objects when something changes, never edit them) and equal probe results."""
    if a is None or len(a) != len(b):
        return False
    *objects_a, health_a = a
    *objects_b, health_b = b
    return all(x is y for x, y in zip(objects_a, objects_b, strict=True)) and health_a == health_b


class _Gate:
    """Workers pass side by side; a reload waits until none is inside, and holds them off."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside = 0
        self._closed = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._closed)
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._closed)
            self._closed = True
            self._cond.wait_for(lambda: self._inside == 1)  # the caller is a worker itself
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()


class Controller:
    def __init__(
        self,
        config: Config,
        kube: Kube,
        owner_id: str,
        settings: DaemonSettings | None = None,
        report: Callable[[TargetResult], None] = lambda result: None,
        stop: threading.Event | None = None,
        elector: LeaderElector | None = None,
    ):
        self._config = config
        self._kube = kube
        self._owner_id = owner_id
        self._settings = settings or DaemonSettings()
        self._report = report
        self._stop = stop or threading.Event()
        self._queue = WorkQueue(RetryLimiter(), on_depth=WORKQUEUE_DEPTH.set)
        self._cache = ClusterCache(
            kube,
            self._settings.namespaces,
            on_change=self._on_cluster_change,
            on_recovered=self._on_api_recovered,
        )
        self._elector = elector
        if elector is not None:
            elector.on_started = lambda: self._start_leading("leader")
            elector.on_stopped = self._stop_leading
        self._sink = Sink(
            kube,
            self._cache,
            owner_id,
            stop=self._stop,
            may_write=elector.is_leader if elector else None,
        )
        self._sink.allow_protected = config.allow_protected
        self._leading = threading.Event()  # workers run only while set
        self._first_pass: set[str] = set()  # targets not yet reconciled since leading
        self._busy: dict[str, tuple[Hashable, float]] = {}  # worker -> (key, since)
        self._threads: list[threading.Thread] = []
        self._scheduler = Scheduler(self._settings.source_threads, "sources")
        self._probe_pool = DaemonPool(self._settings.probe_threads, "probes")
        self._runner = SourceRunner(self._scheduler, config.consul)
        self._targets: dict[str, _TargetState] = {}
        self._lock = threading.Lock()
        self._gate = _Gate()
        self._failed: set[str] = set()
        self._ready = threading.Event()  # the cache has synced; workers run
        self._resync = ResyncPacer(self._settings.resync_interval, _TICK)
        self._config_mtime = self._mtime()  # as loaded: an edit from now on is a reload

    # -- public

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def cache(self) -> ClusterCache:
        return self._cache

    def request_reload(self) -> None:
        """Safe from a signal handler: a worker reloads between two reconciles."""
        self._queue.add(RELOAD, "reload")

    def run(self) -> int:
        """Until the stop event is set; returns the exit code."""
        log.info(
            "starting: %d targets from %s, owner id %r, %d workers",
            len(self._config.targets),
            self._config.path,
            self._owner_id,
            self._settings.workers,
        )
        observability.target_statuses = self._target_statuses
        observability.health = self.health
        observability.readiness = self.readiness
        self._threads += self._cache.start(self._stop)
        for target in self._config.targets:
            self._start_target(target)
        self._runner.commit()
        waited = time.monotonic()
        while not self._cache.wait_synced(self._stop, timeout=10):
            if self._stop.is_set():
                return self._shutdown([])
            log.warning(
                "waiting for the cluster cache (%.0fs so far): %s",
                time.monotonic() - waited,
                "; ".join(s.last_error for s in self._cache.statuses if s.last_error) or "listing",
            )
        log.info("cluster cache synced in %.1fs", time.monotonic() - waited)
        self._sink.learn_served_fields(self._config.targets)
        self._ready.set()
        self._rebuild_resync_order()
        if self._elector is None:
            LEADER.set(1)  # the only replica: it writes, as its help says
            self._start_leading("start")
        else:
            log.info("standing by until this replica holds the lease (%s)", self._elector.identity)
            self._threads.append(self._elector.start(self._stop))
        self._scheduler.call_later(_TICK, self._resync_tick)
        self._scheduler.call_later(self._settings.config_poll_interval, self._config_tick)
        workers = [
            threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
            for n in range(self._settings.workers)
        ]
        for worker in workers:
            worker.start()
        self._threads += workers
        self._stop.wait()
        return self._shutdown(workers)

    # -- leadership

    def _start_leading(self, reason: str = "leader") -> None:
        """May write from now on: every target's memory is read from the cache again (the
        previous leader may have changed things) and every target gets a first pass."""
        with self._lock:
            states = list(self._targets.values())
        for state in states:
            state.memory.memory = None
            state.converged_on = None
        self._first_pass = {state.target.key for state in states}
        self._leading.set()
        for state in states:
            self._queue.add(state.target.key, reason)
        self._queue.add(PRUNE, reason)

    def _stop_leading(self) -> None:
        self._leading.clear()

    def _shutdown(self, workers: list[threading.Thread]) -> int:
        self._leading.clear()
        self._queue.shut_down()
        if self._elector is not None:
            self._elector.release()
        self._runner.shutdown()  # first: stopping targets one by one must not re-place queries
        with self._lock:
            states = list(self._targets.values())
        for state in states:
            if state.sources is not None:
                self._runner.stop(state.sources)
        self._scheduler.stop()
        self._probe_pool.shutdown()
        deadline = time.monotonic() + self._settings.stop_grace
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        busy = [w.name for w in workers if w.is_alive()]
        if busy:
            log.warning(
                "stopping with %d writes in flight (each is applied whole or not at all)", len(busy)
            )
        log.info("stopped")
        return 0

    # -- workers

    def _work(self) -> None:
        name = threading.current_thread().name
        while not self._stop.is_set():
            if not self._leading.wait(0.5):
                continue  # a standby: the queue keeps what comes in, deduplicated
            item = self._queue.get(timeout=0.5)
            if item is None:
                continue
            key, reason = item
            self._busy[name] = (key, time.monotonic())
            try:
                if self._leading.is_set():  # leadership may have gone while waiting
                    with self._gate.shared():
                        self._process(key, reason)
            except Exception:
                log.exception("reconciling %s failed unexpectedly; retrying", key)
                self._queue.add_rate_limited(key)
            finally:
                self._busy.pop(name, None)
                self._queue.done(key)

    # -- health

    def health(self) -> list[str]:
        """What is wrong with the process's own loops ([] when alive): a dead thread, or a
        worker wedged on one target for longer than stuck_after."""
        problems = [f"thread {t.name} has died" for t in self._threads if not t.is_alive()]
        if not self._scheduler.alive:
            problems.append("the source scheduler has died")
        now = time.monotonic()
        for worker, (key, since) in list(self._busy.items()):
            if now - since > self._settings.stuck_after:
                problems.append(
                    f"{worker} has been busy with {key} for {now - since:.0f}s "
                    f"(stuck_after {self._settings.stuck_after:g}s)"
                )
        return problems

    def readiness(self) -> tuple[bool, str]:
        """Ready when the cache has synced and, as the leader, every target has had its
        first pass; a standby with a synced cache is ready as a standby. A replica that
        cannot read or write its Lease is not ready, whatever it is: it cannot take over."""
        if not self._ready.is_set():
            return False, "the cluster cache has not synced yet"
        if self._elector is not None and self._elector.problem:  # leader or not
            return False, f"cannot lead: {self._elector.problem}"
        if self._elector is not None and not self._leading.is_set():
            holder = self._elector.holder() or "nobody"
            return True, f"standby (the lease is held by {holder})"
        if self._first_pass:
            return False, f"{len(self._first_pass)} targets not yet reconciled"
        return True, "leader" if self._elector is not None else "ok"

    def _process(self, key: Hashable, reason: str) -> None:
        if key == RELOAD:
            with self._gate.exclusive():
                self._reload()
        elif key == PRUNE:
            self._prune(reason)
        else:
            with self._lock:
                state = self._targets.get(str(key))
            if state is not None:
                self._reconcile(state, reason)

    def _prune(self, reason: str) -> None:
        failed = False
        with self._lock:
            configured = list(self._targets)
        for result in self._sink.prune(configured):
            RECONCILES.labels(result.outcome.value, reason).inc()
            failed |= result.outcome is Outcome.FAILED
            self._report(result)
        if failed:
            self._queue.add_rate_limited(PRUNE, "retry")
        else:
            self._queue.forget(PRUNE)

    def _reconcile(self, state: _TargetState, reason: str) -> None:
        target = state.target
        with self._lock:
            answers = list(state.answers)
        if any(answer is None for answer in answers):
            return  # wait until every source has answered once
        self._first_pass.discard(target.key)
        live = self._cache.live_state(target)
        if state.memory.memory is None:
            state.memory.memory = seed_memory(target, live, self._owner_id, one_shot=False)
        health = state.prober.health() if state.prober else None
        inputs = (
            *answers,
            live.service,
            live.endpoints,
            *live.slices,
            state.memory.memory,
            self._config.address_policy,
            health,
        )
        if reason == "resync" and _same_inputs(state.converged_on, inputs):
            RECONCILES.labels(Outcome.CONVERGED.value, reason).inc()
            state.last_success = time.time()
            return  # nothing it depends on has changed since it last converged
        state.converged_on = None
        now = time.monotonic()
        step = run(
            target,
            answers,  # type: ignore[arg-type]
            state.memory.memory,
            live,
            now=now,
            address_policy=self._config.address_policy,
            owner_id=self._owner_id,
            health=health,
            problems=[
                f"sources[{i}]: {a}" for i, a in enumerate(answers) if isinstance(a, SourceError)
            ],
        )
        state.memory.memory = step.memory
        for warning in state.memory.new_warnings(step.evaluation.warnings):
            log.warning("%s: %s", target.key, warning)
        if step.evaluation.panic:
            PROBE_PANICS.labels(target.key).inc()
        verdict = step.evaluation.verdict
        if verdict.recheck_at is not None:  # e.g. a failback waiting for failback_after
            self._queue.add_after(target.key, verdict.recheck_at - now, "recheck")
        if step.plan is None:
            self._blocked(state, step, reason)
            return
        decision = step.plan.decision
        if state.stale:
            state.stale = False
            log.info("%s: %s answers again", target.key, decision.source)
        if state.protected:
            state.protected = False
            message = f"{decision.source} lists enough ready backends again; applying it"
            log.warning("%s: drain protection ends: %s", target.key, message)
            self._sink.record_event(target, "DrainProtectionEnded", message, "Normal")
        if not decision.backends:
            log.warning(
                "%s: %s lists no backends; applying that (an empty answer is real)",
                target.key,
                decision.source,
            )
        if decision.switched_from is not None:
            TIER_SWITCHES.labels(target.key, str(decision.switched_from), str(decision.tier)).inc()
            log.warning(
                "%s: switching from tier %d to tier %d (%s): %s",
                target.key,
                decision.switched_from,
                decision.tier,
                decision.source,
                decision.reason,
            )
        result = self._sink.apply(step.plan)
        if result.outcome in (Outcome.CONFLICT, Outcome.REFUSED):  # found before any write
            self._blocked(state, replace(step, plan=None, result=result), reason)
            return
        RECONCILES.labels(result.outcome.value, reason).inc()
        state.ready = ready_count(decision.backends)
        state.not_ready = len(decision.backends) - state.ready
        state.tier = decision.tier if len(target.sources) > 1 else None
        if result.outcome is Outcome.FAILED:
            if self._elector is not None and not self._elector.is_leader():
                return  # fenced: the next leader (perhaps this one again) takes over
            self._failed_attempt(state, result)
            return
        self._queue.forget(target.key)
        self._failed.discard(target.key)
        state.last_success = time.time()  # converged or changed: in sync now
        state.reported = None
        if result.outcome is Outcome.CONVERGED and verdict.recheck_at is None:
            state.converged_on = (*inputs[:-3], state.memory.memory, *inputs[-2:])
        if result.outcome is not Outcome.CONVERGED or decision.switched_from is not None:
            self._report(result)

    def _failed_attempt(self, state: _TargetState, result: TargetResult) -> None:
        key = state.target.key
        self._failed.add(key)
        if result.changes or result.stale_read:
            state.memory.memory = None  # what is applied is not what was decided: re-read it
        delay = self._queue.add_rate_limited(key)
        WORKQUEUE_RETRIES.inc()
        if state.reported != result.message:
            state.reported = result.message
            self._report(result)
        log.info("%s: retrying in %.1fs (attempt %d)", key, delay, self._queue.retries(key))

    def _blocked(self, state: _TargetState, step: Step, reason: str) -> None:
        """Nothing may be written: stale sources, a held removal, a conflict, a bad setup."""
        result = step.result
        assert result is not None
        key = state.target.key
        verdict = step.evaluation.verdict
        RECONCILES.labels(result.outcome.value, reason).inc()
        if result.outcome is Outcome.HELD:
            HELD_REMOVALS.labels(key).inc()
            if state.held_since != verdict.state.pending_since:
                state.held_since = verdict.state.pending_since
                self._report(result)
            assert verdict.hold_until is not None
            self._queue.add_after(key, verdict.hold_until - time.monotonic(), "hold")
        elif result.outcome is Outcome.STALE:
            if not state.stale:
                state.stale = True
                self._report(result)
        elif result.outcome is Outcome.PROTECTED:
            if not state.protected:
                state.protected = True
                self._report(result)
                self._sink.record_event(state.target, "DrainProtected", result.message, once=True)
        elif state.reported != result.message:  # a conflict or a bad setup: the cache
            state.reported = result.message  # wakes the target when the object changes
            self._report(result)
            if result.outcome is Outcome.CONFLICT:
                self._sink.record_event(state.target, "SyncConflict", result.message, once=True)

    def _target_statuses(self) -> list[TargetStatus]:
        with self._lock:
            states = list(self._targets.values())
        return [
            TargetStatus(
                s.target.key, s.stale, s.protected, s.ready, s.not_ready, s.tier, s.last_success
            )
            for s in states
        ]

    # -- sources and probes

    def _start_target(self, target: Target) -> None:
        state = _TargetState(target, [None] * len(target.sources))

        def on_answer(index: int, answer: Answer) -> None:
            with self._lock:
                state.answers[index] = answer
            self._queue.add(target.key, "source")

        if target.health_check is not None:
            state.prober = Prober(target.health_check, target.key, self._probe_pool)
        with self._lock:
            self._targets[target.key] = state
        state.sources = self._runner.start(target, on_answer)
        if state.prober is not None:
            self._scheduler.call_later(0, lambda: self._probe(state))

    def _probe(self, state: _TargetState) -> None:
        """One probe round of every registry-ready backend of every tier; reschedules itself."""
        assert state.prober is not None and state.target.health_check is not None
        if state.sources is None or state.sources.stop.is_set() or self._stop.is_set():
            return
        port_name = state.target.health_check.port
        with self._lock:
            answers = list(state.answers)
        keys = {
            probe_key(b, port_name)
            for a in answers
            if isinstance(a, Snapshot)
            for b in a.backends
            if b.ready
        }
        if state.prober.run_round(keys):
            self._queue.add(state.target.key, "probe")
        self._scheduler.call_later(state.prober.interval, lambda: self._probe(state))

    def _stop_target(self, key: str) -> None:
        with self._lock:
            state = self._targets.pop(key, None)
        if state is None:
            return
        if state.sources is not None:
            self._runner.stop(state.sources)
        self._failed.discard(key)

    # -- the cluster

    def _on_cluster_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        """A cached object changed, and not by syncd: wake its target (or prune)."""
        if not self._ready.is_set():
            return  # everything is queued once the cache has synced
        obj = new if new is not None else old
        assert obj is not None
        key = target_key_of(obj)
        with self._lock:
            configured = key in self._targets
        if configured:
            log.debug(
                "%s: %s %s changed; checking",
                key,
                kind.name,
                (obj.get("metadata") or {}).get("name"),
            )
            self._queue.add(key, "cluster")
        elif new is not None and is_owned(new, self._owner_id):
            self._queue.add(PRUNE, "cluster")

    def _on_api_recovered(self) -> None:
        """The API server answers again: retry every failed target now, not after its backoff."""
        for key in list(self._failed):
            self._queue.forget(key)
            self._queue.add(key, "api-recovered")
        self._queue.add(PRUNE, "api-recovered")

    # -- resync and reload

    def _rebuild_resync_order(self) -> None:
        with self._lock:
            self._resync.reset(list(self._targets))

    def _resync_tick(self) -> None:
        """Queue the next share of targets: each one once per interval, evenly spread."""
        if self._stop.is_set():
            return
        batch, round_done = self._resync.next_batch()
        for key in batch:
            self._queue.add(key, "resync")
        if round_done:
            self._queue.add(PRUNE, "resync")
        self._scheduler.call_later(_TICK, self._resync_tick)

    def _config_tick(self) -> None:
        if self._stop.is_set():
            return
        mtime = self._mtime()
        if mtime != self._config_mtime:
            self._config_mtime = mtime
            self.request_reload()
        self._scheduler.call_later(self._settings.config_poll_interval, self._config_tick)

    def _mtime(self) -> int | None:
        try:
            return self._config.path.stat().st_mtime_ns
        except OSError:
            return None

    def _reload(self) -> None:
        self._config_mtime = self._mtime()
        try:
            config = load_config(self._config.path, self._settings.allow_protected)
        except ConfigError as exc:
            log.error("new config rejected, keeping the previous one:")
            for problem in exc.problems:
                log.error("  %s", problem)
            return
        allowed = self._settings.namespaces
        outside = [t.key for t in config.targets if allowed and t.namespace not in allowed]
        if outside:
            log.error(
                "new config rejected, keeping the previous one: targets outside --namespaces "
                "%s: %s",
                ",".join(allowed or ()),
                ", ".join(outside),
            )
            return
        old = {t.key: t for t in self._config.targets}
        new = {t.key: t for t in config.targets}
        consul_changed = config.consul != self._config.consul
        removed = [k for k in old if k not in new]
        added = [k for k in new if k not in old]
        changed = [k for k in new if k in old and (new[k] != old[k] or consul_changed)]
        policy_changed = config.address_policy != self._config.address_policy
        if not (removed or added or changed or policy_changed):
            return
        self._config = config
        self._sink.allow_protected = config.allow_protected
        for key in removed + changed:
            self._stop_target(key)
        self._runner.use_consul(config.consul)
        self._sink.learn_served_fields(new[key] for key in added + changed)
        for key in added + changed:
            self._start_target(new[key])  # memory re-seeded from the cluster on first use
        self._runner.commit()
        log.info(
            "config reloaded: %d targets (added %s, changed %s, removed %s)",
            len(new),
            added or "none",
            changed or "none",
            removed or "none",
        )
        self._rebuild_resync_order()
        if policy_changed:
            for key in new:
                self._queue.add(key, "reload")
        self._queue.add(PRUNE, "reload")
