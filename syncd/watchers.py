"""The daemon's sources: started and stopped per target, their answers handed on.

Polled sources (static files, DNS, Consul prepared queries) run as jobs of the shared
scheduler: each asks its registry, hands on what changed, and schedules itself again after
the interval the answer asked for (a TTL, a poll interval) or, after a failure, a capped,
jittered backoff. Threads therefore do not grow with targets.

Consul service sources follow their registry with blocking queries, each holding one HTTP
connection; they still run on a thread of their own here. Running them within a fixed
connection budget is the job of a Consul watch pool (the catalog-scale issue); it plugs in
where `_start_watched` is.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from syncd.errors import SourceError
from syncd.model import ConsulConnection, Target
from syncd.scheduler import Scheduler
from syncd.sources import build_source
from syncd.sources.base import Answer, ChangeEmitter, PolledSource, Source, WatchedSource

log = logging.getLogger(__name__)

OnAnswer = Callable[[int, Answer], None]  # (source index, answer)

RETRY_BASE = 0.5  # seconds before asking a failing registry again, doubling ...
RETRY_CAP = 5.0  # ... up to this


@dataclass
class TargetSources:
    """The running sources of one target."""

    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)


class _PolledJob:
    """One polled source: ask, hand on changes, schedule the next time."""

    def __init__(
        self,
        source: PolledSource,
        emitter: ChangeEmitter,
        scheduler: Scheduler,
        stop: threading.Event,
    ):
        self._source = source
        self._emitter = emitter
        self._scheduler = scheduler
        self._stop = stop
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
        return random.uniform(0.5, 1.0) * min(RETRY_CAP, RETRY_BASE * 2 ** (self._failures - 1))


class SourceRunner:
    """Starts every source of a target; each answer goes to `on_answer(index, answer)`."""

    def __init__(self, scheduler: Scheduler, consul: ConsulConnection):
        self._scheduler = scheduler
        self.consul = consul

    def start(self, target: Target, on_answer: OnAnswer) -> TargetSources:
        running = TargetSources()
        for index, source_config in enumerate(target.sources):
            source = build_source(source_config, target, self.consul)

            def emit(answer: Answer, index: int = index) -> None:
                if not running.stop.is_set():  # a replaced source's late answer is dropped
                    on_answer(index, answer)

            emitter = ChangeEmitter(emit, target.key)
            if isinstance(source, WatchedSource):
                running.threads.append(
                    self._start_watched(source, emit, running.stop, target, index)
                )
            elif isinstance(source, PolledSource):
                job = _PolledJob(source, emitter, self._scheduler, running.stop)
                self._scheduler.call_later(0, job.run)
            else:  # pragma: no cover - every source type is one of the two
                raise TypeError(f"{source.describe()}: neither polled nor watched")
        return running

    @staticmethod
    def _start_watched(
        source: WatchedSource,
        emit: Callable[[Answer], None],
        stop: threading.Event,
        target: Target,
        index: int,
    ) -> threading.Thread:
        def watch() -> None:
            try:
                source.watch(stop, emit)
            except SourceError as exc:  # e.g. an unreadable token file: report, keep state
                emit(exc)
            except Exception:
                log.exception("watcher of %s died", source.describe())
                emit(SourceError(f"{source.describe()}: watcher failed"))

        thread = threading.Thread(target=watch, name=f"source {target.key}[{index}]", daemon=True)
        thread.start()
        return thread

    @staticmethod
    def stop(running: TargetSources) -> None:
        running.stop.set()


__all__ = ["OnAnswer", "Source", "SourceRunner", "TargetSources"]
