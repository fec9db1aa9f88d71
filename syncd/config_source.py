"""Where the daemon's targets come from: the config file, read again when it changes, and
(with --resources) the ExternalServices teams declare, merged in (syncd.resources).

An edit of the file that does not load is logged with every problem and the previous file
keeps running; a resource that is not valid is reported in its own status. Either way one
mistake never stops the rest.
"""

from __future__ import annotations

import logging

from syncd.config import load_config
from syncd.errors import ConfigError
from syncd.model import Config
from syncd.resources import ResourceSet

log = logging.getLogger(__name__)


class ConfigSource:
    def __init__(
        self,
        config: Config,
        allow_protected: tuple[str, ...] = (),
        namespaces: tuple[str, ...] | None = None,
        resources: ResourceSet | None = None,
    ):
        self.file = config  # the file as last loaded without a problem
        self.resources = resources
        self._allow_protected = allow_protected
        self._namespaces = namespaces
        self._mtime = self._stat()

    def file_changed(self) -> bool:
        return self._stat() != self._mtime

    def current(self) -> Config:
        """The targets to run now: the file's (read again if it changed) and the resources'."""
        if self.file_changed():
            self._mtime = self._stat()
            self.file = self._load() or self.file
        if self.resources is None:
            return self.file
        return self.resources.merge(self.file).config

    @property
    def held(self) -> frozenset[str]:
        """Services claimed by resources that are not valid: never pruned while they exist."""
        return self.resources.held if self.resources is not None else frozenset()

    def _load(self) -> Config | None:
        """The file as it is now, or None (logged) when it may not replace the running one."""
        try:
            config = load_config(
                self.file.path, self._allow_protected, targets_required=self.resources is None
            )
        except ConfigError as exc:
            log.error("new config rejected, keeping the previous one:")
            for problem in exc.problems:
                log.error("  %s", problem)
            return None
        allowed = self._namespaces
        outside = [t.key for t in config.targets if allowed and t.namespace not in allowed]
        if outside:
            log.error(
                "new config rejected, keeping the previous one: targets outside --namespaces "
                "%s: %s",
                ",".join(allowed or ()),
                ", ".join(outside),
            )
            return None
        return config

    def _stat(self) -> int | None:
        try:
            return self.file.path.stat().st_mtime_ns
        except OSError:
            return None


__all__ = ["ConfigSource"]
