"""The daemon's targets: what it keeps for each, starting and stopping their sources and
probes, and what a reload changes.

Each target has its sources running (polled jobs or Consul watches, see `syncd.watchers`)
and, with a health check, a probe round rescheduling itself. Every new answer or probe
result wakes the target (`wake(key, reason)`); the worker that takes it reads the answers
from here. Which targets a new config adds, changes or removes is a pure function
(`diff_configs`), so a reload restarts exactly those.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from syncd.health import Prober
from syncd.model import Answer, Target
from syncd.observability import TargetStatus
from syncd.policy import probe_keys
from syncd.results import TargetMemory
from syncd.scheduler import DaemonPool, Scheduler
from syncd.watchers import SourceRunner, TargetSources

Wake = Callable[[str, str], None]  # (target key, reason): queue the target


@dataclass(frozen=True, slots=True)
class DecisionInputs:
    """Everything one decision depends on. The sources and the cache replace objects
    when something changes, never edit them, so identity says "unchanged"."""

    objects: tuple[object, ...]
    health: object

    def same_as(self, other: DecisionInputs | None) -> bool:
        return (
            other is not None
            and len(other.objects) == len(self.objects)
            and all(a is b for a, b in zip(self.objects, other.objects, strict=True))
            and self.health == other.health
        )


@dataclass(slots=True)
class TargetState:
    """Everything the daemon keeps for one target."""

    target: Target
    answers: list[Answer | None]  # None: that source has not answered yet
    sources: TargetSources | None = None
    prober: Prober | None = None
    memory: TargetMemory = field(default_factory=TargetMemory)
    stale: bool = False
    protected: bool = False  # drain protection is keeping the last applied state
    refused: bool = False  # a resource pointing into the cluster's networks (withdrawn)
    held_since: float | None = None  # the held removal already reported
    reported: str | None = None  # the conflict or failure already reported
    converged_on: DecisionInputs | None = None  # the inputs of its last converged reconcile
    ready: int = 0  # backends applied, for the gauges
    not_ready: int = 0
    tier: int | None = None
    last_success: float | None = None  # unix time it was last found or made in sync

    def forget_cluster(self) -> None:
        """Read what is applied from the cluster again before the next decision."""
        self.memory.policy = None
        self.converged_on = None


class TargetRegistry:
    """The running targets, their sources and probes."""

    def __init__(
        self,
        runner: SourceRunner,
        scheduler: Scheduler,
        probe_pool: DaemonPool,
        wake: Wake,
        stop: threading.Event,
    ):
        self._runner = runner
        self._scheduler = scheduler
        self._probe_pool = probe_pool
        self._wake = wake
        self._stop = stop
        self._states: dict[str, TargetState] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> TargetState | None:
        with self._lock:
            return self._states.get(key)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._states

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._states)

    def states(self) -> list[TargetState]:
        with self._lock:
            return list(self._states.values())

    def answers(self, state: TargetState) -> list[Answer | None]:
        with self._lock:
            return list(state.answers)

    def start(self, target: Target) -> None:
        state = TargetState(target, [None] * len(target.sources))

        def on_answer(index: int, answer: Answer) -> None:
            with self._lock:
                state.answers[index] = answer
            self._wake(target.key, "source")

        if target.health_check is not None:
            state.prober = Prober(target.health_check, target.key, self._probe_pool)
        with self._lock:
            self._states[target.key] = state
        state.sources = self._runner.start(target, on_answer)
        if state.prober is not None:
            self._scheduler.call_later(0, lambda: self._probe(state))

    def stop(self, key: str) -> None:
        with self._lock:
            state = self._states.pop(key, None)
        if state is not None and state.sources is not None:
            self._runner.stop(state.sources)

    def stop_all(self) -> None:
        """On shutdown: the runner is shut down first, so stopping one by one moves nothing."""
        self._runner.shutdown()
        for state in self.states():
            if state.sources is not None:
                self._runner.stop(state.sources)

    def _probe(self, state: TargetState) -> None:
        """One probe round of every registry-ready backend of every tier; reschedules itself."""
        assert state.prober is not None and state.target.health_check is not None
        if state.sources is None or state.sources.stop.is_set() or self._stop.is_set():
            return
        answers = self.answers(state)
        if state.prober.run_round(probe_keys(answers, state.target.health_check.port)):
            self._wake(state.target.key, "probe")
        self._scheduler.call_later(state.prober.interval, lambda: self._probe(state))

    def statuses(self) -> list[TargetStatus]:
        return [
            TargetStatus(
                s.target.key,
                s.stale,
                s.protected,
                s.ready,
                s.not_ready,
                s.tier,
                s.last_success,
                s.refused,
            )
            for s in self.states()
        ]
