"""One row per source type: everything syncd knows of a kind of source, in its own module.

A source type is a module of this package that defines `SOURCE_TYPES`, a tuple of rows:
its config section's parser and dataclass, how a live source is built, what it needs
(a Consul connection), the checks that span a whole config, and its part of the
ExternalService CRD's schema. The config loader, the builder, the daemon's watchers, the
CLI and the CRD generator (`python -m syncd.crd`) read these rows and nothing else, so a
new source type is one new module (plus its docs and tests, and the regenerated CRD):
`source_types()` finds it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncd.model import ConsulConnection, ServicePort, SourceConfig, Target
from syncd.sources.base import Source
from syncd.syntax.checks import Scope

# (the source's mapping, where it is, the Service's ports, the config's directory)
Parse = Callable[[dict, Scope, tuple[ServicePort, ...], Path], SourceConfig | None]


@dataclass(frozen=True)
class SourceNeeds:
    """What the driver shares with the sources it builds: one pool of Consul connections
    (syncd.sources.consul_api.ConsulClients) for every Consul source, say."""

    consul: Any = None  # ConsulClients, or None: each builds a private one
    file_poll_interval: float = 1.0  # seconds between looks at a file's modification time


# `hostname_from` is one key of the CRD's source schema whichever types take it (a key
# has one schema there): every value any type takes; each type's CEL rule narrows it.
HOSTNAME_FROM_PATTERN = "^(node|service_id|srv_target|meta:[A-Za-z0-9_-]{1,128})$"


@dataclass(frozen=True)
class SourceType:
    """A kind of source, as a config names it (`type: <name>`)."""

    name: str
    parse: Parse  # reports every problem through `scope`; None when there was one
    example: Mapping[str, Any]  # a small valid source of this type, for docs and tests
    build: Callable[[Any, Target, SourceNeeds], Source]
    crd: Mapping[str, Any] = field(default_factory=dict)  # its keys' CRD schema
    crd_rules: tuple[Mapping[str, str], ...] = ()  # CEL rules on a source of this type
    file_keys: tuple[str, ...] = ()  # keys naming files in syncd's pod: never in a resource
    needs: frozenset[str] = frozenset()  # "consul": the CONSUL_* environment is checked
    # checks across every source of this type in a config, e.g. the Consul budget
    check_all: Callable[[Sequence[Any], ConsulConnection, Scope], None] | None = None


@functools.cache
def source_types() -> Mapping[str, SourceType]:
    """Every source type of this package, by name (found once, at first use)."""
    import syncd.sources as package

    found: dict[str, SourceType] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for row in getattr(module, "SOURCE_TYPES", ()):
            if row.name in found:
                raise RuntimeError(f"source type {row.name!r} is defined twice")
            found[row.name] = row
    return found


def type_of(config: SourceConfig) -> SourceType:
    return source_types()[config.kind]


__all__ = ["Parse", "SourceNeeds", "SourceType", "source_types", "type_of"]
