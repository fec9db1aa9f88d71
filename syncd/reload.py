"""Reloading, in one place: where the daemon's targets come from, what changed, and what
changes with it.

- Where: the config file (read again when it changes; an edit that does not load is
  logged with every problem and the previous file keeps running) and, with --resources,
  the ExternalServices teams declare, merged in (syncd.resources; a resource that is not
  valid is reported in its own status).
- What changed: a target changed when its own settings did, or the Consul connection it
  may use; a changed address policy makes every target decide again.
- What follows: exactly the targets the diff names restart (their memory is re-seeded
  from the cluster on first use); the config the rest of the daemon reads values of is
  swapped whole (`CurrentConfig`), so nothing is written into the parts.
One mistake never stops the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from syncd.config import load_config
from syncd.errors import ConfigError
from syncd.model import Config
from syncd.resources import ResourceSet
from syncd.sink import Sink
from syncd.targets import TargetRegistry
from syncd.watchers import SourceRunner
from syncd.workers import Job
from syncd.workqueue import ResyncPacer, WorkQueue

log = logging.getLogger(__name__)


class CurrentConfig:
    """The config the daemon runs now: swapped whole on reload. Parts that need a value of
    it (the address policy, the protected opt-ins) ask for it here when they use it."""

    def __init__(self, config: Config):
        self.config = config


class ConfigSource:
    """The file (as last loaded without a problem) and, with --resources, the resources."""

    def __init__(
        self,
        config: Config,
        allow_protected: tuple[str, ...] = (),
        namespaces: tuple[str, ...] | None = None,
        resources: ResourceSet | None = None,
    ):
        self.file = config
        self.resources = resources
        self._allow_protected = allow_protected
        self._namespaces = namespaces
        self._mtime = _stat(config.path)

    def file_changed(self) -> bool:
        return _stat(self.file.path) != self._mtime

    def current(self) -> Config:
        """The targets to run now: the file's (read again if it changed) and the resources'."""
        if self.file_changed():
            self._mtime = _stat(self.file.path)
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


def _stat(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


@dataclass(frozen=True)
class ConfigDiff:
    """What a reload changes: targets by key, and whether every target must be looked at."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # restarted: sources and memory start over
    removed: tuple[str, ...] = ()
    policy_changed: bool = False  # the address policy: every target decides again

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed or self.policy_changed)


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """A target changed when its own settings did, or the Consul connection it may use."""
    before = {t.key: t for t in old.targets}
    after = {t.key: t for t in new.targets}
    consul_changed = new.consul != old.consul
    return ConfigDiff(
        added=tuple(k for k in after if k not in before),
        changed=tuple(
            k for k in after if k in before and (after[k] != before[k] or consul_changed)
        ),
        removed=tuple(k for k in before if k not in after),
        policy_changed=new.address_policy != old.address_policy,
    )


@dataclass(frozen=True)
class Running:
    """What a reload acts on (the daemon's parts)."""

    targets: TargetRegistry
    runner: SourceRunner
    sink: Sink
    queue: WorkQueue
    resync: ResyncPacer
    forget: Callable[[str], None]  # the reconciler forgets a stopped target


class Reloader:
    """Reads the config again and applies what changed, between two reconciles."""

    def __init__(self, source: ConfigSource, current: CurrentConfig, running: Running):
        self.source = source
        self._current = current
        self._running = running

    def reload(self, leading: bool) -> None:
        """`leading`: this replica writes, so it also writes the resources' status."""
        config = self.source.current()
        resources, queue = self.source.resources, self._running.queue
        if resources is not None and leading:
            resources.publish_unapplied()
            for key in resources.stale_generations():
                queue.add(key, "resource")  # seen, though its target did not change
        diff = diff_configs(self._current.config, config)
        if diff.empty:
            return
        self._apply(config, diff)
        log.info(
            "config reloaded: %d targets (added %s, changed %s, removed %s)",
            len(config.targets),
            list(diff.added) or "none",
            list(diff.changed) or "none",
            list(diff.removed) or "none",
        )

    def _apply(self, config: Config, diff: ConfigDiff) -> None:
        """Restart exactly the targets the diff names; their memory is re-seeded from the
        cluster on first use."""
        running = self._running
        self._current.config = config
        for key in diff.removed + diff.changed:
            running.targets.stop(key)
            running.forget(key)
        running.runner.use_consul(config.consul)
        new = {t.key: t for t in config.targets}
        running.sink.learn_served_fields(new[key] for key in diff.added + diff.changed)
        for key in diff.added + diff.changed:
            running.targets.start(new[key])
        running.runner.commit()
        running.resync.reset(running.targets.keys())
        if diff.policy_changed:
            for key in new:
                running.queue.add(key, "reload")
        running.queue.add(Job.PRUNE, "reload")


__all__ = ["ConfigDiff", "ConfigSource", "CurrentConfig", "Reloader", "Running", "diff_configs"]
