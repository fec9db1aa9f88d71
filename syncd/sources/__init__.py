"""Registries syncd reads backends from. Each source answers one question: what does the
registry list for this target right now? (a `Snapshot`, or `SourceError` if it cannot say)."""

from __future__ import annotations

from syncd.model import (
    ConsulConnection,
    ConsulQuerySourceConfig,
    ConsulSourceConfig,
    DnsSourceConfig,
    SourceConfig,
    Target,
)
from syncd.sources.base import Source
from syncd.sources.consul import ConsulQuerySource, ConsulSource
from syncd.sources.consul_api import ConsulClients
from syncd.sources.dns import DnsSource
from syncd.sources.static import StaticSource


def build_source(
    config: SourceConfig, target: Target, consul: ConsulClients | None = None
) -> Source:
    """The live source object for one configured source of a target. Consul sources use
    the `consul` clients (at most its size of connections at once, shared by every source
    built with it); without one, a private pool of one connection."""
    if isinstance(config, ConsulSourceConfig | ConsulQuerySourceConfig):
        if consul is None:
            consul = ConsulClients(ConsulConnection(), 1)
        if isinstance(config, ConsulSourceConfig):
            return ConsulSource(config, target, consul)
        return ConsulQuerySource(config, target, consul)
    if isinstance(config, DnsSourceConfig):
        return DnsSource(config, target)
    return StaticSource(config, target)


__all__ = ["ConsulClients", "Source", "build_source"]
