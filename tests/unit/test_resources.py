"""ExternalServices without a cluster: a resource becomes the same target as a file's, its
mistakes read like `check`'s, a Service claimed twice goes to the file or the older claim,
and a status changes only when something happened."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from harness.helpers import REPO
from syncd.config import load_config
from syncd.config.resource import merge_resources, parse_resource
from syncd.model import AddressPolicy, Config, ResourceRef
from syncd.resource_status import Observation, Standing, desired_status
from syncd.sources.types import source_types

EXAMPLE = REPO / "config" / "resources" / "ceph-rgw.yaml"
NOW, LATER = "2026-11-30T10:00:00Z", "2026-11-30T11:00:00Z"


def _resource(name: str, spec: dict, namespace: str = "apps", created: str = NOW) -> dict:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": 3,
            "creationTimestamp": created,
        },
        "spec": spec,
    }


SPEC = {
    "ports": [{"name": "http", "port": 80}],
    "sources": [{"type": "static", "backends": ["192.0.2.1:80"]}],
}


def test_a_resource_declares_the_same_target_as_the_file_it_was_copied_from():
    example = yaml.safe_load(EXAMPLE.read_text())
    from_resource = parse_resource(
        {**example, "metadata": {**example["metadata"], "uid": "u"}}, AddressPolicy()
    )
    from_file = load_config(REPO / "config" / "ceph-rgw.yaml").targets[0]
    assert from_resource.problems == ()
    assert from_resource.target is not None
    assert from_resource.target.resource == ResourceRef("ocs-external-rgw-lb", "u")
    assert replace(from_resource.target, resource=None) == from_file


def test_the_service_defaults_to_the_resources_name_and_the_namespace_is_its_own():
    parsed = parse_resource(_resource("db", SPEC), AddressPolicy())
    assert parsed.target is not None and parsed.target.key == "apps/db"
    renamed = parse_resource(_resource("db", {**SPEC, "service": "postgres"}), AddressPolicy())
    assert renamed.key == "apps/postgres"


def test_what_the_schema_cannot_see_is_reported_like_check_and_declares_nothing():
    bad = {**SPEC, "sources": [{"type": "static", "backends": ["10.0.0.300:80", "127.0.0.1:80"]}]}
    parsed = parse_resource(_resource("db", bad), AddressPolicy())
    assert parsed.target is None
    assert parsed.problems == (
        "ExternalService apps/db: target apps/db: sources[0].backends[0]: '10.0.0.300' is not "
        "an IP address",
        "ExternalService apps/db: target apps/db: sources[0].backends[1]: '127.0.0.1' is a "
        "loopback address, which the Kubernetes API rejects",
    )


def test_a_resource_cannot_read_files_reach_another_namespace_or_a_protected_service():
    sneaky = {**SPEC, "namespace": "other", "sources": [{"type": "static", "file": "/etc/shadow"}]}
    problems = parse_resource(_resource("x", sneaky), AddressPolicy()).problems
    assert any("spec.namespace" in p for p in problems)
    assert any("cannot read files in syncd's pod" in p for p in problems)
    protected = parse_resource(_resource("dns", SPEC, namespace="kube-system"), AddressPolicy())
    assert protected.target is None and "protected namespace" in protected.problems[0]
    allowed = parse_resource(
        _resource("dns", SPEC, namespace="kube-system"), AddressPolicy(), ["kube-system/dns"]
    )
    assert allowed.target is not None


def test_a_service_claimed_twice_goes_to_the_file_then_to_the_older_resource():
    config = Config(
        path=Path("/etc/syncd/config.yaml"),
        targets=load_config(REPO / "config" / "ceph-rgw.yaml").targets,
    )
    file_key = config.targets[0]
    claims_file = _resource("rgw", {**SPEC, "service": file_key.service}, file_key.namespace)
    older = _resource("a-new-name", {**SPEC, "service": "db"}, created=NOW)
    newer = _resource("db", SPEC, created=LATER)
    invalid = _resource("typo", {**SPEC, "sources": [{"type": "static", "backends": ["x:1"]}]})
    merged = merge_resources(
        config, [parse_resource(r, AddressPolicy()) for r in (newer, claims_file, older, invalid)]
    )
    assert [t.key for t in merged.config.targets] == [file_key.key, "apps/db"]
    assert merged.config.targets[1].resource == ResourceRef("a-new-name", "uid-a-new-name")
    assert (
        "is a target of the config file /etc/syncd/config.yaml"
        in merged.conflicts[(file_key.namespace, "rgw")]
    )
    assert "the older ExternalService apps/a-new-name" in merged.conflicts[("apps", "db")]
    assert merged.held == {"apps/typo"} and "apps/typo" in merged.keep


def _ready(previous: dict, observation: Observation, now: str = NOW) -> dict:
    return desired_status(previous, Standing(3, "db", observation=observation), now)


def test_a_status_says_what_happened_and_stays_the_same_while_nothing_does():
    first = _ready(
        {},
        Observation(
            "changed", ready=2, total=3, tier=0, source="static list", objects=("Service/db",)
        ),
    )
    conditions = {c["type"]: c for c in first["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["Valid"]["status"] == "True"
    assert first["backendSummary"] == "2/3" and first["lastSyncTime"] == NOW
    assert first["observedGeneration"] == 3 and first["objects"] == ["Service/db"]
    converged = Observation(
        "converged", ready=2, total=3, tier=0, source="static list", objects=("Service/db",)
    )
    assert _ready(first, converged, LATER) == first  # nothing changed: nothing to write


def test_a_problem_flips_ready_and_its_condition_and_keeps_what_is_known():
    first = _ready({}, Observation("changed", ready=2, total=2, source="consul service web"))
    stale = _ready(first, Observation("stale", "no source answered: consul down"), LATER)
    conditions = {c["type"]: c for c in stale["conditions"]}
    assert conditions["Ready"] == {
        **conditions["Ready"],
        "status": "False",
        "reason": "SourceUnavailable",
        "lastTransitionTime": LATER,
    }
    assert (
        conditions["Stale"]["status"] == "True" and "consul down" in conditions["Stale"]["message"]
    )
    assert conditions["Valid"]["lastTransitionTime"] == NOW  # unchanged: its time is kept
    assert stale["backendSummary"] == "2/2" and stale["lastSyncTime"] == NOW
    back = _ready(
        stale, Observation("converged", ready=2, total=2, source="consul service web"), LATER
    )
    assert back["lastSyncTime"] == LATER  # in sync again after a problem


def test_an_invalid_or_conflicting_resource_is_not_ready_and_says_why():
    invalid = desired_status({}, Standing(1, "db", problems=("x: y: bad",)), NOW)
    conditions = {c["type"]: c for c in invalid["conditions"]}
    assert (
        conditions["Valid"]["status"] == "False" and conditions["Valid"]["message"] == "x: y: bad"
    )
    assert conditions["Ready"]["reason"] == "Invalid"
    claimed = desired_status({}, Standing(1, "db", conflict="the file's"), NOW)
    conditions = {c["type"]: c for c in claimed["conditions"]}
    assert (
        conditions["Conflict"]["status"] == "True" and conditions["Ready"]["reason"] == "Conflict"
    )


def _enums(schema: dict, path: str = "") -> list[tuple[str, list]]:
    """(path, values) of every enum in a CRD schema; list items as `[]`."""
    found = []
    if "enum" in schema:
        found.append((path, schema["enum"]))
    for name, child in (schema.get("properties") or {}).items():
        found += _enums(child, f"{path}.{name}" if path else name)
    if "items" in schema:
        found += _enums(schema["items"], f"{path}[]")
    return found


# Where each enum of the CRD's spec goes, in a spec that is valid otherwise.
_DNS = {"type": "dns", "name": "rgw.example.com", "port": 8080}
_ENUM_SPECS = {
    "ports[].protocol": lambda v: {"ports": [{"name": "http", "port": 80, "protocol": v}]},
    # each source type's own example (its row): a new type needs nothing here
    "sources[].type": lambda v: {"sources": [dict(source_types()[v].example)]},
    "sources[].address": lambda v: {"sources": [{"type": "consul", "service": "x", "address": v}]},
    "sources[].consistency": lambda v: {
        "sources": [{"type": "consul", "service": "x", "consistency": v}]
    },
    "sources[].families[]": lambda v: {"sources": [{**_DNS, "families": [v]}]},
    "output": lambda v: {"output": v},
    "traffic_distribution": lambda v: {"traffic_distribution": v},
    "health_check.type": lambda v: {"health_check": {"type": v}},
}


def test_every_value_the_crd_allows_is_one_syncd_understands():
    """The CRD and syncd's parser speak one vocabulary: `families` once said IPv4 in the
    CRD and ipv4 in syncd, so it worked in no spelling in a resource."""
    crd = yaml.safe_load((REPO / "deploy/components/resources/crd.yaml").read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    enums = _enums(spec_schema)
    assert {path for path, _ in enums} == set(_ENUM_SPECS), "a new enum: add it here"
    for path, values in enums:
        for value in values:
            spec = {
                "ports": [{"name": "http", "port": 80}],
                "sources": [{"type": "static", "backends": ["192.0.2.1:80"]}],
                **_ENUM_SPECS[path](value),
            }
            parsed = parse_resource(_resource("x", spec), AddressPolicy())
            assert parsed.problems == (), (path, value, parsed.problems)


def test_the_crds_source_schema_is_the_source_types_own():
    """`python -m syncd.crd` writes it from the rows (syncd.sources.types): a source type
    added or changed without regenerating the CRD fails here."""
    from syncd.crd import main

    assert main(["--check"]) == 0
