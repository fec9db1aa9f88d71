"""The long-running daemon: a controller in the mould of client-go's informers and queues.

This module is the composition; each part has a module of its own:

    syncd.targets           the running targets, their sources and probes
    syncd.reload            where the targets come from, what a reload changes
    syncd.network_follower  the cluster's own networks, followed
    syncd.workers           worker threads over the work queue; the reload gate; stuck workers
    syncd.leadership        may this replica write; first pass after taking over; readiness
    syncd.daemon_reconcile  one target's reconcile as a loop needs it (syncd.reconcile inside)
    syncd.cache, syncd.sink the cluster as read (list + watch) and as written


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

Everything is built here, with its callbacks and what it reads of the running config (a
function of `CurrentConfig`, which a reload swaps whole): nothing is written into a part
after it is made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from syncd.cache import ClusterCache
from syncd.daemon_reconcile import DaemonReconciler, Report
from syncd.kinds import Kind, Obj, target_key_of
from syncd.kube import Kube, with_deadline
from syncd.leader import LeaderElector, LeaderSettings
from syncd.leadership import Leadership
from syncd.model import AddressPolicy, Config, Target
from syncd.network_follower import NetworkFollower
from syncd.observability import LEADER, RECONCILES, WORKQUEUE_DEPTH, TargetStatus
from syncd.ownership import prunable_by
from syncd.process_memory import give_back_free_memory
from syncd.reload import ConfigSource, CurrentConfig, Reloader, Running
from syncd.resources import ResourceSet
from syncd.results import Outcome, TargetResult
from syncd.scheduler import DaemonPool, Scheduler
from syncd.sink import Sink
from syncd.targets import TargetRegistry
from syncd.watchers import SourceRunner
from syncd.workers import Job, Workers
from syncd.workqueue import ResyncPacer, RetryLimiter, WorkQueue

log = logging.getLogger(__name__)

_RESOURCES_WAIT = 30.0  # seconds the daemon waits for ExternalServices before going on


@dataclass(frozen=True)
class DaemonSettings:
    resync_interval: float = 300.0  # every target is compared with the cache this often
    workers: int = 4  # targets reconciled at once (docs/commands.md: why 4)
    config_poll_interval: float = 1.0  # how often the config file's mtime is checked
    source_threads: int = 8  # threads shared by polled sources (DNS, files, queries)
    probe_threads: int = 32  # threads shared by every target's health probes
    stop_grace: float = 1.5  # seconds workers get to finish after SIGTERM
    namespaces: tuple[str, ...] | None = None  # None: the whole cluster
    allow_protected: tuple[str, ...] = ()  # --allow-protected, kept across reloads
    stuck_after: float = 120.0  # a worker busy with one target longer than this is wedged
    resources: bool = False  # also the ExternalServices (--resources)
    tick: float = 1.0  # seconds between resync batches
    source_retry_cap: float = 5.0  # most seconds between asks of a failing polled source
    file_poll_interval: float = 1.0  # seconds between looks at a backends file


class Controller:
    """Builds the parts and runs them until the stop event is set. `lease`: leader election
    (one of several replicas); `clock`: tests give their own."""

    def __init__(
        self,
        config: Config,
        kube: Kube,
        owner_id: str,
        settings: DaemonSettings | None = None,
        report: Report = lambda result: None,
        stop: threading.Event | None = None,
        lease: LeaderSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._current = CurrentConfig(config)
        self._owner_id = owner_id
        self._settings = settings = settings or DaemonSettings()
        self._report = report
        self._stop = stop or threading.Event()
        self._clock = clock
        self._queue = WorkQueue(RetryLimiter(), on_depth=WORKQUEUE_DEPTH.set)
        self._cache = ClusterCache(
            kube, settings.namespaces, self._on_cluster_change, self._on_api_recovered
        )
        self._leadership = Leadership(self._elector(kube, lease))
        self._resources = self._resource_set(kube) if settings.resources else None
        self._sink = Sink(
            kube,
            self._cache,
            owner_id,
            stop=self._stop,
            may_write=self._leadership.fence,
            allow_protected=lambda: self._current.config.allow_protected,
            prunes_resources=lambda: self._resources is not None and self._resources.listed,
        )
        self._scheduler = Scheduler(settings.source_threads, "sources")
        self._probe_pool = DaemonPool(settings.probe_threads, "probes")
        self._runner = SourceRunner(
            self._scheduler, config.consul, settings.source_retry_cap, settings.file_poll_interval
        )
        self._targets = TargetRegistry(
            self._runner, self._scheduler, self._probe_pool, self._queue.add, self._stop
        )
        self._networks = NetworkFollower(
            kube, self._policy, self._targets, self._queue.add, self._scheduler
        )
        self._reconciler = self._daemon_reconciler(owner_id, report)
        self._workers = Workers(
            self._queue, self._process, self._leadership.leading, self._stop, clock
        )
        self._resync = ResyncPacer(settings.resync_interval, settings.tick)
        self._reloader = self._config_reloader(config)
        self._threads: list[threading.Thread] = []
        self._ready = threading.Event()  # the cache has synced; workers run

    def _policy(self) -> AddressPolicy:
        return self._current.config.address_policy

    def _elector(self, kube: Kube, lease: LeaderSettings | None) -> LeaderElector | None:
        if lease is None:
            return None
        return LeaderElector(
            with_deadline(kube, lease.renew_deadline / 2),  # a stalled renewal fails in time
            lease,
            on_started=lambda: self._start_leading("leader"),
            on_stopped=lambda: self._leadership.end(),
        )

    def _resource_set(self, kube: Kube) -> ResourceSet:
        """ExternalServices: their changes reload, their status is the leader's to write."""
        return ResourceSet(
            kube, self._settings.namespaces, self._leadership.fence, self._on_resource_change
        )

    def _daemon_reconciler(self, owner_id: str, report: Report) -> DaemonReconciler:
        """One target's reconcile, with what the daemon adds (syncd.daemon_reconcile)."""
        return DaemonReconciler(
            self._targets,
            self._cache,
            self._sink,
            self._queue,
            self._leadership,
            owner_id,
            report,
            self._clock,
            self._networks.current,
            self._reconciled,
            self._policy,
        )

    def _config_reloader(self, config: Config) -> Reloader:
        settings = self._settings
        source = ConfigSource(
            config, settings.allow_protected, settings.namespaces, self._resources
        )
        running = Running(
            self._targets, self._runner, self._sink, self._queue, self._resync,
            self._reconciler.forget,
        )  # fmt: skip
        return Reloader(source, self._current, running)

    # -- public

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def request_reload(self) -> None:
        """Safe from a signal handler: a worker reloads between two reconciles."""
        self._queue.add(Job.RELOAD, "reload")

    def run(self) -> int:
        """Until the stop event is set; returns the exit code."""
        config = self._current.config
        log.info(
            "starting: %d targets from %s, owner id %r, %d workers",
            len(config.targets),
            config.path,
            self._owner_id,
            self._settings.workers,
        )
        self._threads += self._cache.start(self._stop)
        self._threads += self._networks.start(self._stop)
        if self._resources is not None:  # their targets start with the file's
            self._threads += self._resources.cache.start(self._stop)
            self._resources.wait_listed(self._stop, _RESOURCES_WAIT)
            self._networks.wait(self._stop, _RESOURCES_WAIT)
            self._current.config = config = self._reloader.source.current()
        for target in config.targets:
            self._targets.start(target)
        self._runner.commit()
        if not self._cache.wait_logged(self._stop, "the cluster", self._clock):
            return self._shutdown()
        self._sink.learn_served_fields(config.targets)
        self._ready.set()
        self._networks.follow()  # what was read of them while starting, and changes
        self._resync.reset(self._targets.keys())
        elector = self._leadership.elector
        if elector is None:
            LEADER.set(1)  # the only replica: it writes, as its help says
            self._start_leading("start")
        else:
            log.info("standing by until this replica holds the lease (%s)", elector.identity)
            self._threads.append(elector.start(self._stop))
        self._scheduler.call_later(self._settings.tick, self._resync_tick)
        self._scheduler.call_later(self._settings.config_poll_interval, self._config_tick)
        self._workers.start(self._settings.workers)
        self._stop.wait()
        return self._shutdown()

    def _start_leading(self, reason: str) -> None:
        """May write from now on: every target's memory is read from the cache again (the
        previous leader may have changed things) and every target gets a first pass."""
        states = self._targets.states()
        for state in states:
            state.forget_cluster()
        self._leadership.begin(state.target.key for state in states)
        for state in states:
            self._queue.add(state.target.key, reason)
        self._queue.add(Job.PRUNE, reason)
        if self._resources is not None:
            self._queue.add(Job.RELOAD, reason)  # the status of resources with no target

    def _shutdown(self) -> int:
        self._leadership.end()
        self._queue.shut_down()
        if self._leadership.elector is not None:
            self._leadership.elector.release()
        self._targets.stop_all()
        self._scheduler.stop()
        self._probe_pool.shutdown()
        busy = self._workers.join(self._clock() + self._settings.stop_grace)
        if busy:
            log.warning(
                "stopping with %d writes in flight (each is applied whole or not at all)", len(busy)
            )
        log.info("stopped")
        return 0

    # -- health

    def health(self) -> list[str]:
        """What is wrong with the process's own loops ([] when alive)."""
        problems = [f"thread {t.name} has died" for t in self._threads if not t.is_alive()]
        if not self._scheduler.alive:
            problems.append("the source scheduler has died")
        return problems + self._workers.health(self._settings.stuck_after)

    def readiness(self) -> tuple[bool, str]:
        """Not ready while the cluster cannot be watched (the API server unreachable or
        stalled): what is applied stays, but no change can be seen or made."""
        problem = self._cache.problem() if self._ready.is_set() else ""
        if problem:
            return False, f"cannot watch the cluster: {problem}"
        return self._leadership.readiness(self._ready.is_set())

    def target_statuses(self) -> list[TargetStatus]:
        """What the per-target gauges show (read at each scrape)."""
        return self._targets.statuses()

    # -- what the workers do

    def _process(self, key: Hashable, reason: str) -> None:
        if key is Job.RELOAD:
            with self._workers.gate.exclusive():
                self._reloader.reload(self._leadership.leading.is_set())
        elif key is Job.PRUNE:
            self._prune(reason)
        else:
            state = self._targets.get(str(key))
            if state is not None:
                self._reconciler.reconcile(state, reason)

    def _prune(self, reason: str) -> None:
        failed = False
        for result in self._sink.prune(set(self._targets.keys()) | self._reloader.source.held):
            RECONCILES.labels(result.outcome.value, reason).inc()
            failed |= result.outcome is Outcome.FAILED
            self._report(result)
        if failed:
            self._queue.add_rate_limited(Job.PRUNE, "retry")
        else:
            self._queue.forget(Job.PRUNE)
        give_back_free_memory()  # after a first pass, a resync round or a reload

    # -- the cluster

    def _on_cluster_change(self, kind: Kind, old: Obj | None, new: Obj | None) -> None:
        """A cached object changed, and not by syncd: wake its target (or prune)."""
        if not self._ready.is_set():
            return  # everything is queued once the cache has synced
        obj = new if new is not None else old
        assert obj is not None
        key = target_key_of(obj)
        if key in self._targets:
            log.debug("%s: %s %s changed; checking", key, kind.name, obj["metadata"].get("name"))
            self._queue.add(key, "cluster")
        elif new is not None and prunable_by(new, self._owner_id):
            self._queue.add(Job.PRUNE, "cluster")

    def _on_api_recovered(self) -> None:
        """The API server answers again: retry every failed target now, not after its backoff."""
        self._reconciler.retry_failed()
        self._queue.add(Job.PRUNE, "api-recovered")

    # -- resync and reload

    def _resync_tick(self) -> None:
        """Queue the next share of targets: each one once per interval, evenly spread."""
        if self._stop.is_set():
            return
        batch, round_done = self._resync.next_batch()
        for key in batch:
            self._queue.add(key, "resync")
        if round_done:
            self._queue.add(Job.PRUNE, "resync")
        self._scheduler.call_later(self._settings.tick, self._resync_tick)

    def _config_tick(self) -> None:
        if self._stop.is_set():
            return
        if self._reloader.source.file_changed():
            self.request_reload()
        self._scheduler.call_later(self._settings.config_poll_interval, self._config_tick)

    def _on_resource_change(self) -> None:
        """An ExternalService was created, edited or deleted (its status alone is noise)."""
        if self._ready.is_set():
            self.request_reload()

    def _reconciled(self, target: Target, result: TargetResult) -> None:
        if self._resources is not None and target.resource is not None:
            live = self._cache.live_state(target)
            state = self._targets.get(target.key)
            prober = state.prober if state is not None else None
            unhealthy = prober.failing() if prober is not None else None
            self._resources.publish(target, result, live, self._owner_id, unhealthy)
