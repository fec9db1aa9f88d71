"""Backends written in the config, or in a YAML file beside it (re-read on every fetch)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from syncd.config import read_backends_file
from syncd.errors import ConfigError, SourceError
from syncd.model import Snapshot, StaticSourceConfig, Target


class StaticSource:
    def __init__(self, config: StaticSourceConfig, target: Target):
        self._config = config
        self._target = target

    def describe(self) -> str:
        return self._config.describe()

    def fetch(self) -> Snapshot:
        if self._config.file is None:
            backends = self._config.backends
        else:
            try:
                backends = read_backends_file(self._config.file, self._target.ports)
            except ConfigError as exc:
                # The file was valid at load time; a broken edit since then must not
                # empty the Service, so it is a source failure, not an empty answer.
                raise SourceError("; ".join(exc.problems)) from None
        return Snapshot(backends=frozenset(backends), source=self.describe())

    def watch(
        self,
        stop: threading.Event,
        emit: Callable[[Snapshot | SourceError], None],
        poll_interval: float = 1.0,
    ):
        """Inline lists never change; a backends file is re-read when its mtime changes."""
        answer = self._answer()
        emit(answer)
        if self._config.file is None:
            return
        seen = self._mtime()
        while not stop.wait(poll_interval):
            mtime = self._mtime()
            if mtime != seen:
                seen = mtime
                emit(self._answer())

    def _answer(self) -> Snapshot | SourceError:
        try:
            return self.fetch()
        except SourceError as exc:
            return exc

    def _mtime(self) -> float | None:
        try:
            return self._config.file.stat().st_mtime_ns if self._config.file else None
        except OSError:
            return None
