"""Registries syncd reads backends from. Each source answers one question: what does the
registry list for this target right now? (a `Snapshot`, or `SourceError` if it cannot say).

Each kind of source is a module of this package with its row (syncd.sources.types): its
config section, its dataclass, how it is built and what it needs."""

from __future__ import annotations

from syncd.model import SourceConfig, Target
from syncd.sources.base import Source
from syncd.sources.consul_api import ConsulClients
from syncd.sources.types import SourceNeeds, source_types, type_of


def build_source(
    config: SourceConfig, target: Target, consul: ConsulClients | None = None, **needs: float
) -> Source:
    """The live source object for one configured source of a target. Consul sources use
    the `consul` clients (at most its size of connections at once, shared by every source
    built with it); without one, a private pool of one connection. `needs`: the rest of
    SourceNeeds (file_poll_interval)."""
    return type_of(config).build(config, target, SourceNeeds(consul=consul, **needs))


__all__ = ["ConsulClients", "Source", "SourceNeeds", "build_source", "source_types"]
