"""Registries syncd reads backends from. Each source answers one question: what does the
registry list for this target right now? (a `Snapshot`, or `SourceError` if it cannot say)."""

from __future__ import annotations

from syncd.model import SourceConfig, StaticSourceConfig, Target
from syncd.sources.base import Source
from syncd.sources.static import StaticSource


def build_source(config: SourceConfig, target: Target) -> Source:
    """The live source object for one configured source of a target."""
    if isinstance(config, StaticSourceConfig):
        return StaticSource(config, target)
    raise TypeError(f"no source implementation for {type(config).__name__}")


__all__ = ["Source", "StaticSource", "build_source"]
