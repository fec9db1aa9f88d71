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
from syncd.sources.dns import DnsSource
from syncd.sources.static import StaticSource


def build_source(
    config: SourceConfig, target: Target, consul: ConsulConnection | None = None
) -> Source:
    """The live source object for one configured source of a target."""
    if isinstance(config, ConsulSourceConfig):
        return ConsulSource(config, target, consul or ConsulConnection())
    if isinstance(config, ConsulQuerySourceConfig):
        return ConsulQuerySource(config, target, consul or ConsulConnection())
    if isinstance(config, DnsSourceConfig):
        return DnsSource(config, target)
    return StaticSource(config, target)


__all__ = ["Source", "build_source"]
