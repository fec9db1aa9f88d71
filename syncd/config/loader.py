"""Load and validate syncd's YAML configuration into typed, frozen objects.

Every problem is collected (not just the first) and reported as one line that names the
file, the YAML line, the target and the field, e.g.::

    config/ceph-rgw.yaml:21: target storage/rgw: sources[0].backends[3]: '10.0.0.300' is not ...

Nothing outside this package ever sees unvalidated data: loading either returns a `Config`
or raises `ConfigError`, whatever the input.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from syncd.collector import collector_paused
from syncd.config.schema import (
    SUPPORTED_VERSIONS,
    parse_address_policy,
    parse_consul_connection,
    parse_target,
    raw_target_key,
)
from syncd.errors import ConfigError
from syncd.model import (
    AddressPolicy,
    Config,
    ConsulConnection,
    Target,
)
from syncd.ownership import OWNER_ID_RULE, valid_owner_id
from syncd.protected import refusal, valid_entry
from syncd.sources.types import source_types
from syncd.syntax.checks import Checker, Scope, expect_mapping, is_int, kind_name, string
from syncd.syntax.files import MAX_STATIC_BACKENDS, read_stdin, read_text_file
from syncd.syntax.yamldoc import parse_yaml


def parse_allow_protected(raw: object, scope: Scope) -> tuple[str, ...]:
    """`allow_protected`: the protected Services this config may write, by name."""
    if not isinstance(raw, list):
        scope.error(
            f"must be a list of 'namespace/service' (or 'namespace/*'), got {kind_name(raw)}"
        )
        return ()
    entries = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, str) or not valid_entry(entry):
            scope.at(index).error(f"{entry!r} is not 'namespace/service' or 'namespace/*'")
            continue
        entries.append(entry)
    return tuple(entries)


def load_config(
    path: str | Path, allow_protected: Iterable[str] = (), targets_required: bool = True
) -> Config:
    """Read, parse and validate a config file. Raises ConfigError listing every problem.
    `allow_protected` adds opt-ins to the config's own (--allow-protected); without
    `targets_required` (--resources: targets come from ExternalServices too) the file may
    have no targets."""
    if str(path) == "-":  # a pipeline's config; relative files resolve from here
        return load_config_text(read_stdin(), Path("stdin"), allow_protected, targets_required)
    path = Path(path)
    return load_config_text(read_text_file(path), path, allow_protected, targets_required)


def load_config_text(
    text: str,
    path: str | Path,
    allow_protected: Iterable[str] = (),
    targets_required: bool = True,
) -> Config:
    """Validate config text as if read from `path` (relative static files resolve beside it)."""
    with collector_paused():  # a config of thousands of targets all stays: see collector
        return _checked_config(text, Path(path), allow_protected, targets_required)


def _checked_config(
    text: str, path: Path, allow_protected: Iterable[str], targets_required: bool
) -> Config:
    file = str(path)
    doc = parse_yaml(text, file)
    checker = Checker(file, doc)
    root = Scope(checker, ())
    data = expect_mapping(
        doc.data,
        root,
        {"version", "owner_id", "targets", "consul", "address_policy", "allow_protected"},
        {"version", "targets"} if targets_required else {"version"},
    )
    if data is None:
        raise ConfigError(checker.problems)
    if "version" in data:
        version = data["version"]
        if not is_int(version) or version not in SUPPORTED_VERSIONS:
            hint = " (the number, not a string: version: 1)" if str(version) == "1" else ""
            root.at("version").error(f"unsupported version {version!r}{hint}; supported: 1")
    policy = AddressPolicy()
    if "address_policy" in data:
        policy = parse_address_policy(data["address_policy"], root.at("address_policy")) or policy
    targets = _targets(data, root, path.parent, policy, targets_required)
    _static_total(targets, root)
    allowed = _protected_refused(data, root, tuple(allow_protected))
    owner_id = _owner_id(data, root)
    consul = _consul(data, root, path.parent, targets)
    if checker.problems:
        raise ConfigError(checker.problems)
    return Config(
        path=path,
        targets=tuple(targets),
        version=data["version"],
        consul=consul,
        address_policy=policy,
        owner_id=owner_id,
        allow_protected=allowed,
    )


def _targets(
    data: dict, root: Scope, base: Path, policy: AddressPolicy, required: bool = True
) -> list[Target]:
    """Every valid target; each invalid or duplicate one is a problem of its own."""
    raw_targets = data.get("targets")
    targets: list[Target] = []
    if "targets" not in data:
        return targets
    if raw_targets is None and not required:
        return targets  # `targets:` with nothing under it
    if not isinstance(raw_targets, list):
        root.at("targets").error(f"must be a list of targets, got {kind_name(raw_targets)}")
        return targets
    if not raw_targets:
        if required:
            root.at("targets").error(
                "at least one target is required (or run with --resources: ExternalServices)"
            )
        return targets
    seen: dict[tuple, int] = {}
    for index, raw in enumerate(raw_targets):
        target = parse_target(raw, root.at("targets", index), base, policy)
        key = raw_target_key(raw)
        if key is not None and key in seen:
            root.at("targets", index).error(
                f"duplicate target {key[0]}/{key[1]} (also targets[{seen[key]}])"
            )
            continue
        if key is not None:
            seen[key] = index
        if target is not None:
            targets.append(target)
    return targets


def _static_total(targets: list[Target], root: Scope) -> None:
    """All the static backends of a config together stay within what a pod's memory holds."""
    total = sum(len(source.listed) for target in targets for source in target.sources)
    if total > MAX_STATIC_BACKENDS:
        root.at("targets").error(
            f"{total:,} static backends in all, more than the {MAX_STATIC_BACKENDS:,} a config "
            "may list (about 400 MiB of memory); split it over several configs (installs)"
        )


def _protected_refused(data: dict, root: Scope, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The protected Services this config may write; a target naming another is refused."""
    if "allow_protected" in data:
        allowed += parse_allow_protected(data["allow_protected"], root.at("allow_protected"))
    raw_targets = data.get("targets")
    for index, raw in enumerate(raw_targets if isinstance(raw_targets, list) else ()):
        key = raw_target_key(raw)
        if key is None or not all(isinstance(part, str) for part in key):
            continue
        refused = refusal(key[0], key[1], allowed)
        if refused is not None:
            root.at("targets", index, "namespace").error(f"target {key[0]}/{key[1]}: {refused}")
    return allowed


def _owner_id(data: dict, root: Scope) -> str | None:
    if "owner_id" not in data:
        return None
    owner_id = string(data["owner_id"], root.at("owner_id"))
    if owner_id is not None and not valid_owner_id(owner_id):
        root.at("owner_id").error(f"{owner_id!r} is not a valid owner id ({OWNER_ID_RULE})")
        return None
    return owner_id


def _consul(data: dict, root: Scope, base: Path, targets: list[Target]) -> ConsulConnection:
    """The connection; then each source type's checks across the whole config (the Consul
    budget for its datacenters, say)."""
    consul = ConsulConnection()
    if "consul" in data:
        consul = parse_consul_connection(data["consul"], root.at("consul"), base) or consul
    for name, row in source_types().items():
        if row.check_all is not None:
            sources = [s for t in targets for s in t.sources if s.kind == name]
            if sources:
                row.check_all(sources, consul, root)
    return consul
