"""Backends written in the config, or in a YAML file beside it (re-read when it changes)."""

from __future__ import annotations

from syncd.config.backends import read_backends_file
from syncd.errors import ConfigError, SourceError
from syncd.model import Snapshot, StaticSourceConfig, Target

FILE_POLL_INTERVAL = 1.0  # seconds between checks of a backends file's modification time


class StaticSource:
    def __init__(self, config: StaticSourceConfig, target: Target):
        self._config = config
        self._target = target
        self._seen: int | None = None  # mtime of the file behind `_last`
        self._last: Snapshot | None = None

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

    def poll(self) -> tuple[Snapshot, float | None]:
        """Inline lists never change; a backends file is re-read when its mtime changes."""
        if self._config.file is None:
            return self.fetch(), None
        mtime = self._mtime()
        if self._last is None or mtime != self._seen:
            self._last = self.fetch()
            self._seen = mtime
        return self._last, FILE_POLL_INTERVAL

    def _mtime(self) -> int | None:
        try:
            return self._config.file.stat().st_mtime_ns if self._config.file else None
        except OSError:
            return None
