"""Backends written in the config, or in a YAML file beside it (re-read on every fetch)."""

from __future__ import annotations

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
