"""The long-running daemon: watchers feed a work queue keyed by target; one worker applies.

    source watchers (one thread per target and source) ─┐
    Kubernetes watch on syncd's own EndpointSlices ──────┼─▶ WorkQueue ─▶ worker: reconcile
    periodic resync, SIGHUP, config file changes ────────┘    (coalescing)   one target at a time

- Bursts coalesce: a target already waiting in the queue is not queued twice, and the
  worker always uses the latest answer of every source.
- A target is first reconciled once every one of its sources has answered (or failed), so
  startup never applies a lower tier just because the primary has not answered yet.
- Fail static: when no source can answer, nothing is written; the target is reported stale.
- Edits by hand to syncd's slices wake the target through the watch and are put back.
  Events caused by syncd's own writes are recognised by resourceVersion and skipped.
- SIGHUP or a changed config file reloads the config; an invalid one is logged and the old
  one keeps running. SIGTERM/SIGINT stop after the target being applied, well within 2 s.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from syncd.config import load_config
from syncd.errors import ConfigError, KubeError, SourceError
from syncd.health import Prober
from syncd.kube import Kube
from syncd.model import Config, Snapshot, Target
from syncd.observability import (
    ACTIVE_TIER,
    HELD_REMOVALS,
    PROBE_PANICS,
    RECONCILES,
    TARGET_BACKENDS,
    TARGET_STALE,
    TIER_SWITCHES,
)
from syncd.ownership import SERVICE_NAME_LABEL, owned_selector
from syncd.policy import PolicyState, evaluate, probe_key
from syncd.reconcile import (
    Outcome,
    RunSettings,
    TargetResult,
    prune_removed_targets,
    reconcile_target,
)
from syncd.sources import build_source

log = logging.getLogger(__name__)

_RELOAD = "\0reload"
_RESYNC = "\0resync"
_PRUNE = "\0prune"


@dataclass(frozen=True)
class DaemonSettings:
    resync_interval: float = 300.0  # full pass that repairs any drift
    config_poll_interval: float = 1.0  # how often the config file's mtime is checked
    watch_timeout: int = 300  # seconds before the Kubernetes watch is renewed


class WorkQueue:
    """Keys waiting to be processed, in arrival order; a key already waiting is not added."""

    def __init__(self):
        self._cond = threading.Condition()
        self._order: collections.deque[str] = collections.deque()
        self._waiting: set[str] = set()

    def add(self, key: str) -> None:
        with self._cond:
            if key not in self._waiting:
                self._waiting.add(key)
                self._order.append(key)
                self._cond.notify()

    def get(self, timeout: float) -> str | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._order, timeout):
                return None
            key = self._order.popleft()
            self._waiting.discard(key)
            return key


@dataclass
class _Watched:
    """A target, the threads that watch its sources and probe its backends, its policy."""

    target: Target
    stop: threading.Event
    threads: list[threading.Thread]
    prober: Prober | None = None
    policy: PolicyState = field(default_factory=PolicyState)
    held: float | None = None  # pending_since of the held removal already reported
    warned: set[str] = field(default_factory=set)


class Controller:
    def __init__(
        self,
        config: Config,
        kube: Kube,
        run_settings: RunSettings,
        settings: DaemonSettings = DaemonSettings(),
        report: Callable[[TargetResult], None] = lambda result: None,
    ):
        self._config = config
        self._kube = kube
        self._run = run_settings
        self._settings = settings
        self._report = report
        self._queue = WorkQueue()
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, int], Snapshot | SourceError] = {}
        self._watched: dict[str, _Watched] = {}
        self._stale: set[str] = set()

    # -- public

    def request_reload(self) -> None:
        """Safe from a signal handler: the worker reloads between two targets."""
        self._queue.add(_RELOAD)

    def run(self, stop: threading.Event) -> int:
        log.info(
            "starting: %d targets from %s, owner id %r",
            len(self._config.targets),
            self._config.path,
            self._run.owner_id,
        )
        for target in self._config.targets:
            self._start_watchers(target)
        self._queue.add(_PRUNE)
        background = [
            self._thread("kube-watch", self._watch_owned_slices, stop),
            self._thread("resync", self._resync_timer, stop),
            self._thread("config-watch", self._config_watcher, stop),
        ]
        for thread in background:
            thread.start()
        try:
            while not stop.is_set():
                key = self._queue.get(timeout=0.2)
                if key is not None and not stop.is_set():
                    self._process(key)
        finally:
            for watched in self._watched.values():
                watched.stop.set()
            log.info("stopped")
        return 0

    # -- the worker

    def _process(self, key: str) -> None:
        if key == _RELOAD:
            self._reload()
        elif key == _RESYNC:
            for target_key in list(self._watched):
                self._queue.add(target_key)
            self._queue.add(_PRUNE)
        elif key == _PRUNE:
            for result in prune_removed_targets(self._kube, self._config, self._run):
                self._report(result)
        elif key in self._watched:
            self._reconcile(self._watched[key].target)

    def _reconcile(self, target: Target) -> None:
        with self._lock:
            answers = [self._answers.get((target.key, i)) for i in range(len(target.sources))]
        if any(answer is None for answer in answers):
            return  # wait until every source has answered once
        watched = self._watched[target.key]
        health = watched.prober.health() if watched.prober else None
        evaluation = evaluate(
            answers, watched.policy, time.monotonic(), target, self._config.address_policy, health
        )  # type: ignore[arg-type]
        verdict = evaluation.verdict
        watched.policy = verdict.state
        for warning in evaluation.warnings:
            if warning not in watched.warned:
                log.warning("%s: %s", target.key, warning)
        watched.warned = set(evaluation.warnings)
        if evaluation.panic:
            PROBE_PANICS.labels(target.key).inc()
        if verdict.recheck_at is not None:  # e.g. a failback waiting for failback_after
            self._recheck(target.key, verdict.recheck_at)
        if verdict.decision is None:
            self._hold(target, verdict)
            return
        if target.key in self._stale:
            self._stale.discard(target.key)
            TARGET_STALE.labels(target.key).set(0)
            log.info("%s: %s answers again", target.key, verdict.decision.source)
        decision = verdict.decision
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
        ACTIVE_TIER.labels(target.key).set(decision.tier)
        result = reconcile_target(self._kube, target, decision, self._run)
        RECONCILES.labels(result.outcome.value).inc()
        ready = sum(1 for b in decision.backends if b.ready)
        TARGET_BACKENDS.labels(target.key, "true").set(ready)
        TARGET_BACKENDS.labels(target.key, "false").set(len(decision.backends) - ready)
        if result.outcome is not Outcome.CONVERGED or decision.switched_from is not None:
            self._report(result)

    def _recheck(self, key: str, at: float) -> None:
        """Queue the target again at monotonic time `at` (hold-downs end without events)."""
        timer = threading.Timer(max(0.05, at - time.monotonic()), self._queue.add, args=(key,))
        timer.daemon = True
        timer.start()

    def _hold(self, target: Target, verdict) -> None:
        """Nothing is applied: a failing registry (stale) or a large removal (held)."""
        watched = self._watched[target.key]
        if verdict.hold_until is not None:
            HELD_REMOVALS.labels(target.key).inc()
            if watched.held != verdict.state.pending_since:
                watched.held = verdict.state.pending_since
                self._report(TargetResult(target.key, Outcome.HELD, message=verdict.reason))
            self._recheck(target.key, verdict.hold_until)
            return
        if target.key not in self._stale:
            self._stale.add(target.key)
            TARGET_STALE.labels(target.key).set(1)
            result = TargetResult(target.key, Outcome.STALE, message=verdict.reason)
            RECONCILES.labels(result.outcome.value).inc()
            self._report(result)

    # -- sources

    def _start_watchers(self, target: Target) -> None:
        stop = threading.Event()
        threads = []
        for index, source_config in enumerate(target.sources):
            source = build_source(source_config, target, self._config.consul)

            def emit(answer, key=target.key, index=index, stop=stop):
                if stop.is_set():
                    return  # a replaced watcher's late answer
                with self._lock:
                    self._answers[(key, index)] = answer
                self._queue.add(key)

            thread = threading.Thread(
                target=self._watch_source,
                args=(source, stop, emit),
                name=f"source {target.key}[{index}]",
                daemon=True,
            )
            threads.append(thread)
        prober = None
        if target.health_check is not None:
            prober = Prober(target.health_check, target.key)
            threads.append(
                threading.Thread(
                    target=self._probe_loop,
                    args=(target, prober, stop),
                    name=f"probes {target.key}",
                    daemon=True,
                )
            )
        self._watched[target.key] = _Watched(target, stop, threads, prober)
        for thread in threads:
            thread.start()

    def _probe_loop(self, target: Target, prober: Prober, stop: threading.Event) -> None:
        """Probe every registry-ready backend of every tier; wake the target on a change."""
        port_name = target.health_check.port if target.health_check else None
        while not stop.is_set():
            with self._lock:
                answers = [self._answers.get((target.key, i)) for i in range(len(target.sources))]
            keys = {
                probe_key(b, port_name)
                for a in answers
                if isinstance(a, Snapshot)
                for b in a.backends
                if b.ready
            }
            if prober.run_round(keys):
                self._queue.add(target.key)
            stop.wait(prober.interval)
        prober.close()

    @staticmethod
    def _watch_source(source, stop: threading.Event, emit) -> None:
        try:
            source.watch(stop, emit)
        except SourceError as exc:  # e.g. an unreadable token file: report, keep state
            emit(exc)
        except Exception:
            log.exception("watcher of %s died", source.describe())
            emit(SourceError(f"{source.describe()}: watcher failed"))

    def _stop_watchers(self, key: str) -> None:
        watched = self._watched.pop(key, None)
        if watched:
            watched.stop.set()
        with self._lock:
            for answer_key in [k for k in self._answers if k[0] == key]:
                del self._answers[answer_key]
        self._stale.discard(key)

    # -- config reload

    def _reload(self) -> None:
        try:
            config = load_config(self._config.path)
        except ConfigError as exc:
            log.error("new config rejected, keeping the previous one:")
            for problem in exc.problems:
                log.error("  %s", problem)
            return
        old = {t.key: t for t in self._config.targets}
        new = {t.key: t for t in config.targets}
        consul_changed = config.consul != self._config.consul
        removed = [k for k in old if k not in new]
        added = [k for k in new if k not in old]
        changed = [k for k in new if k in old and (new[k] != old[k] or consul_changed)]
        if not (removed or added or changed):
            return
        self._config = config
        for key in removed + changed:
            self._stop_watchers(key)
        for key in added + changed:
            self._start_watchers(new[key])
        log.info(
            "config reloaded: %d targets (added %s, changed %s, removed %s)",
            len(new),
            added or "none",
            changed or "none",
            removed or "none",
        )
        self._queue.add(_PRUNE)

    def _config_watcher(self, stop: threading.Event) -> None:
        seen = self._mtime()
        while not stop.wait(self._settings.config_poll_interval):
            mtime = self._mtime()
            if mtime != seen:
                seen = mtime
                self.request_reload()

    def _mtime(self) -> int | None:
        try:
            return self._config.path.stat().st_mtime_ns
        except OSError:
            return None

    def _resync_timer(self, stop: threading.Event) -> None:
        while not stop.wait(self._settings.resync_interval):
            self._queue.add(_RESYNC)

    # -- Kubernetes

    def _watch_owned_slices(self, stop: threading.Event) -> None:
        """Wake a target when one of its slices is changed or deleted by someone else."""
        selector = owned_selector("EndpointSlice", self._run.owner_id)
        version = ""
        failures = 0
        while not stop.is_set():
            try:
                if not version:
                    _items, version = self._kube.list_with_version("EndpointSlice", None, selector)
                for kind, obj in self._kube.watch(
                    "EndpointSlice", selector, version, self._settings.watch_timeout
                ):
                    failures = 0
                    metadata = obj.get("metadata") or {}
                    version = metadata.get("resourceVersion") or version
                    if kind == "BOOKMARK" or version in self._kube.written_versions:
                        continue
                    service = (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL, "")
                    key = f"{metadata.get('namespace', '')}/{service}"
                    if key in self._watched:
                        # Usually someone else's edit; rarely our own write whose event
                        # beat the response. Either way a reconcile puts back what differs.
                        log.debug(
                            "%s: EndpointSlice %s %s; checking",
                            key,
                            metadata.get("name"),
                            kind.lower(),
                        )
                        self._queue.add(key)
                    if stop.is_set():
                        return
            except KubeError as exc:
                failures += 1
                if exc.status == 410:
                    version = ""  # too old: list again
                else:
                    log.warning("watching EndpointSlices: %s; retrying", exc)
                    version = ""
                stop.wait(min(5.0, 0.2 * 2**failures))

    @staticmethod
    def _thread(name: str, function, stop: threading.Event) -> threading.Thread:
        return threading.Thread(target=function, args=(stop,), name=name, daemon=True)
