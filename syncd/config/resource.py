"""Targets declared as Kubernetes objects: the ExternalService custom resource.

A team declares an external service next to its application, under its own RBAC:

    apiVersion: syncd.io/v1alpha1
    kind: ExternalService
    metadata: {name: ocs-external-rgw-lb, namespace: storage}
    spec:                       # a config file's target, without `namespace`
      ports: [{name: http, port: 80}]
      sources: [{type: static, backends: ["192.168.7.50:8080"]}]

`spec` takes exactly the keys of a config file's target except `namespace` (the
resource's own), and `service` defaults to the resource's name, so a target moves between
the file and a resource by copying. The CRD's schema rejects most mistakes at
`kubectl apply`; everything else is checked here by the same code as `syncd check`, and a
resource that fails is reported in its status (Valid=False, with the `check` lines) and
nothing is written for it. A resource may not read files in syncd's pod (a static
`file`, a health check's `ca_file`) nor reach a protected Service unless the daemon's
config opts in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from syncd.config.schema import parse_target
from syncd.model import AddressPolicy, Config, ResourceRef, Target
from syncd.protected import refusal
from syncd.sources.types import source_types
from syncd.syntax.checks import Checker, Scope
from syncd.syntax.yamldoc import Document


@dataclass(frozen=True)
class ParsedResource:
    """One ExternalService, as syncd understood it."""

    namespace: str
    name: str
    uid: str
    generation: int
    service: str  # the Service it claims (spec.service, or its own name)
    target: Target | None  # None: not valid (problems say why)
    problems: tuple[str, ...] = ()
    created: str = ""  # creationTimestamp: the older of two claims to a Service wins

    @property
    def key(self) -> str:
        """The namespace/service it claims, as a target's key."""
        return f"{self.namespace}/{self.service}"

    @property
    def label(self) -> str:
        return f"ExternalService {self.namespace}/{self.name}"


def parse_resource(
    obj: Mapping[str, Any], policy: AddressPolicy, allow_protected: Iterable[str] = ()
) -> ParsedResource:
    """The target an ExternalService declares, or the `check` lines saying why it has none."""
    metadata = obj.get("metadata") or {}
    namespace, name = str(metadata.get("namespace", "")), str(metadata.get("name", ""))
    spec = obj.get("spec")
    spec = dict(spec) if isinstance(spec, Mapping) else {}
    service = spec.get("service", name)
    service = service if isinstance(service, str) else name
    parsed = ParsedResource(
        namespace,
        name,
        str(metadata.get("uid", "")),
        int(metadata.get("generation") or 0),
        service,
        None,
        created=str(metadata.get("creationTimestamp") or ""),
    )
    label = parsed.label
    problems = [f"{label}: spec.{key}: {why}" for key, why in _refused_keys(spec)]
    refused = refusal(namespace, service, allow_protected)
    if refused is not None:
        problems.append(f"{label}: {refused}")
    if problems:
        return _invalid(parsed, problems)
    raw_target = {**spec, "namespace": namespace, "service": service}
    checker = Checker(label, Document({"spec": raw_target}, line_of_root=0))
    target = parse_target(raw_target, Scope(checker, ("spec",)), Path("/nonexistent"), policy)
    if target is None or checker.problems:
        return _invalid(parsed, checker.problems)
    return replace(parsed, target=replace(target, resource=ResourceRef(name, parsed.uid)))


RESOURCE_GROUP = "syncd.io/"


def is_resource_manifest(data: Any) -> bool:
    """Is this YAML document an ExternalService (what `kubectl apply -f` takes)?"""
    return (
        isinstance(data, Mapping)
        and str(data.get("apiVersion", "")).startswith(RESOURCE_GROUP)
        and data.get("kind") == "ExternalService"
    )


def check_resource_manifests(
    documents: Iterable[Any], policy: AddressPolicy, allow_protected: Iterable[str] = ()
) -> list[ParsedResource]:
    """`syncd check` of a manifest of ExternalServices: each parsed as syncd would (a
    manifest without a namespace is checked as if in `default`, as kubectl would apply it).
    The ones that are not valid carry their problems."""
    checked = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not is_resource_manifest(document):
            checked.append(
                ParsedResource("", f"document {index + 1}", "", 0, "", None,
                               (f"document {index + 1}: not an ExternalService",))
            )  # fmt: skip
            continue
        metadata = dict(document.get("metadata") or {})
        metadata.setdefault("namespace", "default")
        checked.append(parse_resource({**document, "metadata": metadata}, policy, allow_protected))
    return checked


@dataclass(frozen=True)
class Merged:
    """The file's targets and the resources', side by side."""

    config: Config  # the file's, with every resource target that won its Service added
    resources: tuple[ParsedResource, ...]
    conflicts: Mapping[tuple[str, str], str]  # (namespace, name) -> why it is not applied
    held: frozenset[str]  # Services of invalid resources: never pruned while they exist

    @property
    def keep(self) -> frozenset[str]:
        """Every Service whose objects must stay: targets, and what invalid resources claim."""
        return frozenset(t.key for t in self.config.targets) | self.held


def merge_resources(config: Config, resources: Iterable[ParsedResource]) -> Merged:
    """The config with the resources' targets added. A Service claimed by the file and a
    resource is the file's; claimed by two resources, the older one's (then by name). An
    invalid resource gets no target, and what it claims is not pruned: an edit with a typo
    must not empty a Service."""
    file_keys = {t.key: t for t in config.targets}
    winners: dict[str, ParsedResource] = {}
    conflicts: dict[tuple[str, str], str] = {}
    held = set()
    ordered = sorted(resources, key=lambda r: (r.created, r.namespace, r.name))
    for resource in ordered:
        if resource.target is None:
            held.add(resource.key)
            continue
        if resource.key in file_keys:
            conflicts[(resource.namespace, resource.name)] = (
                f"Service {resource.key} is a target of the config file {config.path}; "
                "that target is applied, this resource is not"
            )
        elif resource.key in winners:
            other = winners[resource.key]
            conflicts[(resource.namespace, resource.name)] = (
                f"Service {resource.key} is claimed by the older ExternalService "
                f"{other.namespace}/{other.name}; that one is applied, this one is not"
            )
        else:
            winners[resource.key] = resource
    targets = config.targets + tuple(r.target for r in winners.values() if r.target is not None)
    return Merged(replace(config, targets=targets), tuple(ordered), conflicts, frozenset(held))


def _refused_keys(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    refused = []
    if "namespace" in spec:
        refused.append(("namespace", "a resource's target is in the resource's own namespace"))
    types = source_types()
    for index, source in enumerate(spec.get("sources") or ()):
        row = types.get(str(source.get("type"))) if isinstance(source, Mapping) else None
        for key in row.file_keys if row is not None else ():
            if key in source:
                refused.append(
                    (
                        f"sources[{index}].{key}",
                        "a resource cannot read files in syncd's pod; give the values inline",
                    )
                )
    health = spec.get("health_check")
    if isinstance(health, Mapping) and "ca_file" in health:
        refused.append(("health_check.ca_file", "a resource cannot read files in syncd's pod"))
    return refused


def _invalid(parsed: ParsedResource, problems: Iterable[str]) -> ParsedResource:
    return replace(parsed, problems=tuple(problems))


__all__ = [
    "Merged",
    "ParsedResource",
    "check_resource_manifests",
    "is_resource_manifest",
    "merge_resources",
    "parse_resource",
]
