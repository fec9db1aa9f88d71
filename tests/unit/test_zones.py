"""Zones: where backends run, and the hints that keep clients in their zone."""

from __future__ import annotations

from dataclasses import replace

import pytest

from syncd.config import load_config_text
from syncd.errors import ConfigError
from syncd.live import OFFLINE, LiveState
from syncd.model import (
    AddressPolicy,
    Backend,
    EndpointPort,
    ServicePort,
    Snapshot,
    Target,
)
from syncd.pipeline import run
from syncd.policy import PolicyState
from syncd.sources.consul import backends_from_health
from syncd.sources.consul_config import ConsulSourceConfig
from syncd.sources.static import StaticSourceConfig

PORT = (EndpointPort("http", 8080),)
TARGET = Target(
    "ns",
    "rgw",
    (ServicePort("http", 80),),
    (StaticSourceConfig(),),
    traffic_distribution="PreferClose",
)
A = Backend("198.51.100.50", PORT, zone="zone-a")
B = Backend("198.51.100.52", PORT, zone="zone-b")
B_DOWN = replace(B, ready=False)


def _objects(target, backends, live=OFFLINE):
    step = run(
        target,
        [Snapshot(frozenset(backends), "s")],
        PolicyState(),
        live,
        now=0.0,
        address_policy=AddressPolicy(),
        owner_id="me",
    )
    assert step.plan is not None
    return [c.desired for c in step.plan.changes], step.plan.warnings


def _endpoints(objects):
    return {
        e["addresses"][0]: e
        for o in objects
        if o["kind"] == "EndpointSlice"
        for e in o["endpoints"]
    }


def test_each_endpoint_carries_its_zone_and_a_hint_for_it_when_the_service_asks():
    objects, warnings = _objects(TARGET, [A, B_DOWN])
    service = objects[0]
    assert service["spec"]["trafficDistribution"] == "PreferClose"
    endpoints = _endpoints(objects)
    assert endpoints[A.address]["zone"] == "zone-a"
    assert endpoints[A.address]["hints"] == {"forZones": [{"name": "zone-a"}]}
    assert endpoints[B.address]["hints"] == {"forZones": [{"name": "zone-b"}]}
    assert warnings == ()


def test_no_hints_unless_every_ready_backend_has_a_zone():
    objects, warnings = _objects(TARGET, [A, Backend("198.51.100.60", PORT)])
    assert all("hints" not in e for e in _endpoints(objects).values())
    assert _endpoints(objects)[A.address]["zone"] == "zone-a"  # zones are still written
    assert "1 ready backends have no zone (e.g. 198.51.100.60)" in warnings[0]


def test_no_hints_when_the_service_does_not_ask():
    objects, _ = _objects(replace(TARGET, traffic_distribution=None), [A, B])
    assert "trafficDistribution" not in objects[0]["spec"]
    assert all("hints" not in e for e in _endpoints(objects).values())


def test_a_service_syncd_does_not_manage_is_followed():
    theirs = replace(TARGET, manage_service=False, traffic_distribution=None)
    service = {
        "kind": "Service",
        "metadata": {"name": "rgw", "namespace": "ns", "uid": "u1"},
        "spec": {"ports": [{"name": "http", "port": 80}], "trafficDistribution": "PreferSameZone"},
    }
    objects, _ = _objects(theirs, [A, B], LiveState.of(service=service))
    assert _endpoints(objects)[B.address]["hints"] == {"forZones": [{"name": "zone-b"}]}


def test_consul_zones_come_from_service_meta_then_node_meta():
    def entry(address, service_meta=None, node_meta=None):
        return {
            "Node": {"Node": "n", "Address": address, "Meta": node_meta or {}},
            "Service": {
                "ID": address,
                "Address": address,
                "Port": 8080,
                "Meta": service_meta or {},
            },
            "Checks": [],
        }

    source = ConsulSourceConfig(service="rgw", port_name="http", zone_meta="zone")
    backends, warnings = backends_from_health(
        [
            entry("198.51.100.50", {"zone": "zone-a"}, {"zone": "ignored"}),
            entry("198.51.100.51", node_meta={"zone": "zone-b"}),
            entry("198.51.100.52", {"zone": "not a zone!"}),
        ],
        source,
        TARGET,
    )
    zones = {b.address: b.zone for b in backends}
    assert zones == {"198.51.100.50": "zone-a", "198.51.100.51": "zone-b", "198.51.100.52": None}
    assert "meta zone='not a zone!' is not a zone name; zone left out" in warnings[0]


def test_zones_in_the_config_are_checked():
    def config(distribution: str, zone: str) -> str:
        return f"""\
version: 1
targets:
  - namespace: ns
    service: rgw
    ports: [{{name: http, port: 80}}]
    traffic_distribution: {distribution}
    sources:
      - type: static
        backends: [{{address: 198.51.100.50, port: 8080, zone: {zone}}}]
"""

    loaded = load_config_text(config("PreferClose", "a"), "c")
    assert loaded.targets[0].sources[0].backends[0].zone == "a"
    with pytest.raises(ConfigError) as caught:
        load_config_text(config("Nearby", "'a b'"), "c")
    problems = "\n".join(caught.value.problems)
    assert "traffic_distribution: 'Nearby' is not one of: PreferClose, PreferSameZone" in problems
    assert "zone: 'a b' is not a zone name" in problems
