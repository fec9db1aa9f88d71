"""The daemon's sources: started and stopped per target, their answers handed on.

Polled sources (static files, DNS, Consul prepared queries) run as jobs of the shared
scheduler: each asks its registry, hands on what changed, and schedules itself again after
the interval the answer asked for (a TTL, a poll interval) or, after a failure, a capped,
jittered backoff. Threads therefore do not grow with targets.

Consul service sources are followed by one `ConsulWatch` for the whole daemon, within a
budget of connections (see `syncd.sources.consul_watch`); targets asking the same question
share the answer. After starting or stopping targets, `commit` places the new ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from syncd.errors import SourceError
from syncd.model import ConsulConnection, Target
from syncd.ratelimit import backoff
from syncd.scheduler import Scheduler
from syncd.sources import ConsulClients, build_source
from syncd.sources.base import Answer, ChangeEmitter, PolledSource, Source
from syncd.sources.consul import ConsulSource
from syncd.sources.consul_watch import ConsulWatch, Subscription

log = logging.getLogger(__name__)

OnAnswer = Callable[[int, Answer], None]  # (source index, answer)

RETRY_BASE = 0.5  # seconds before asking a failing registry again, doubling ...


class Stopped:
    """A flag that is only ever looked at, never waited on: a threading.Event costs a
    condition, a lock and a deque (about 0.7 KiB), and the daemon keeps one per target."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass(slots=True)
class TargetSources:
    """The running sources of one target."""

    stop: Stopped = field(default_factory=Stopped)
    subscriptions: list[Subscription] = field(default_factory=list)


class _PolledJob:
    """One polled source: ask, hand on changes, schedule the next time."""

    def __init__(
        self,
        source: PolledSource,
        emitter: ChangeEmitter,
        scheduler: Scheduler,
        stop: Stopped,
        retry_cap: float,
    ):
        self._source = source
        self._emitter = emitter
        self._scheduler = scheduler
        self._stop = stop
        self._retry_cap = retry_cap
        self._failures = 0

    def run(self) -> None:
        if self._stop.is_set():
            return
        next_in: float | None
        try:
            snapshot, next_in = self._source.poll()
            self._failures = 0
            self._emitter.answer(snapshot)
        except SourceError as exc:
            next_in = self._backoff()
            self._emitter.failure(exc)
        except Exception:
            log.exception("asking %s failed", self._source.describe())
            next_in = self._backoff()
            self._emitter.failure(SourceError(f"{self._source.describe()}: unexpected failure"))
        if next_in is not None and not self._stop.is_set():
            self._scheduler.call_later(next_in, self.run)  # a stopped job ends at its next turn

    def _backoff(self) -> float:
        self._failures += 1
        return backoff(self._failures, RETRY_BASE, self._retry_cap)


class SourceRunner:
    """Starts every source of a target; each answer goes to `on_answer(index, answer)`.
    A failing polled source is asked again after a backoff of at most `retry_cap`
    seconds; a backends file is looked at every `file_poll` seconds."""

    def __init__(
        self,
        scheduler: Scheduler,
        consul: ConsulConnection,
        retry_cap: float = 5.0,
        file_poll: float = 1.0,
    ):
        self._scheduler = scheduler
        self._retry_cap = retry_cap
        self._file_poll = file_poll
        self._consul = ConsulWatch(ConsulClients(consul, consul.readers))

    @property
    def consul(self) -> ConsulWatch:
        return self._consul

    def use_consul(self, connection: ConsulConnection) -> None:
        """A new Consul connection (a reload): later targets use it; restart the others."""
        if connection != self._consul.clients.connection:
            self._consul.stop()
            self._consul = ConsulWatch(ConsulClients(connection, connection.readers))

    def start(self, target: Target, on_answer: OnAnswer) -> TargetSources:
        running = TargetSources()
        for index, source_config in enumerate(target.sources):
            source: Source = build_source(
                source_config, target, self._consul.clients, file_poll_interval=self._file_poll
            )

            def emit(answer: Answer, index: int = index) -> None:
                if not running.stop.is_set():  # a replaced source's late answer is dropped
                    on_answer(index, answer)

            if isinstance(source, ConsulSource):
                running.subscriptions.append(self._consul.subscribe(source, emit))
            elif isinstance(source, PolledSource):
                emitter = ChangeEmitter(emit, target.key)
                job = _PolledJob(source, emitter, self._scheduler, running.stop, self._retry_cap)
                self._scheduler.call_later(0, job.run)
            else:  # pragma: no cover - every source type is one of these
                raise TypeError(f"{source.describe()}: neither polled nor a Consul service")
        return running

    def stop(self, running: TargetSources) -> None:
        running.stop.set()
        for subscription in running.subscriptions:
            self._consul.unsubscribe(subscription)

    def commit(self) -> None:
        """Place the Consul sources started or stopped since the last commit."""
        self._consul.commit()

    def shutdown(self) -> None:
        self._consul.stop()


__all__ = ["OnAnswer", "Source", "SourceRunner", "TargetSources"]
