"""Consul /v1/health/service entries -> backends (pure): health, addresses, untrusted data."""

from __future__ import annotations

import pytest

from syncd.model import ServicePort, Target
from syncd.sources.consul import backends_from_health, instance_ready, query_params
from syncd.sources.consul_config import ConsulAddress, ConsulConsistency, ConsulSourceConfig
from syncd.sources.static import StaticSourceConfig

TARGET = Target("ns", "svc", (ServicePort("http", 80),), (StaticSourceConfig(),))
SOURCE = ConsulSourceConfig(service="rgw", port_name="http")


def entry(
    address="192.0.2.1",
    port=8080,
    checks=("passing",),
    node_address="198.51.100.9",
    service_tagged=None,
    node_tagged=None,
    instance="i1",
):
    return {
        "Node": {"Node": "n1", "Address": node_address, "TaggedAddresses": node_tagged or {}},
        "Service": {
            "ID": instance,
            "Address": address,
            "Port": port,
            "TaggedAddresses": service_tagged or {},
        },
        "Checks": [{"Status": status} for status in checks],
    }


@pytest.mark.parametrize(
    ("statuses", "warning_is_ready", "ready"),
    [
        (["passing", "passing"], True, True),
        ([], True, True),
        (["passing", "warning"], True, True),
        (["passing", "warning"], False, False),
        (["passing", "critical"], True, False),
        (["maintenance"], True, False),
    ],
)
def test_health_mapping(statuses, warning_is_ready, ready):
    assert instance_ready(statuses, warning_is_ready) is ready


def test_service_address_falls_back_to_the_node_address():
    (backend,), _ = backends_from_health([entry(address="")], SOURCE, TARGET)
    assert backend.address == "198.51.100.9"


def test_tagged_addresses_prefer_the_service_then_the_node():
    source = ConsulSourceConfig(service="rgw", port_name="http", address=ConsulAddress.WAN_IPV4)
    tagged = {"wan_ipv4": {"Address": "203.0.113.7", "Port": 9443}}
    (backend,), _ = backends_from_health([entry(service_tagged=tagged)], source, TARGET)
    assert (backend.address, backend.ports[0].port) == ("203.0.113.7", 9443)
    (backend,), _ = backends_from_health(
        [entry(node_tagged={"wan_ipv4": "203.0.113.8"})], source, TARGET
    )
    assert (backend.address, backend.ports[0].port) == ("203.0.113.8", 8080)
    none, warnings = backends_from_health([entry()], source, TARGET)
    assert not none and "no wan_ipv4 address" in warnings[0]


def test_untrusted_entries_are_dropped_with_a_reason():
    entries = [
        entry("169.254.169.254", instance="meta"),
        entry("not-an-ip", instance="bad"),
        entry(port=0, instance="zero"),
        entry(port=70000, instance="big"),
        entry("192.0.2.5", instance="good"),
    ]
    backends, warnings = backends_from_health(entries, SOURCE, TARGET)
    assert [b.address for b in backends] == ["192.0.2.5"]
    assert len(warnings) == 4
    assert any("n1/meta" in w and "link-local" in w for w in warnings)
    assert "n1/big: port 70000 is out of range 1-65535; dropped" in warnings


def test_an_instance_registered_with_port_0_says_so():
    """Consul leaves `Port` out when it is 0: the log must not say 'port None'."""
    no_port = entry(instance="zero")
    del no_port["Service"]["Port"]
    _backends, warnings = backends_from_health([no_port], SOURCE, TARGET)
    assert warnings == ["n1/zero: 192.0.2.1 is registered without a port (port 0); dropped"]


def test_duplicates_merge_and_one_healthy_registration_wins():
    entries = [entry(checks=("critical",), instance="a"), entry(instance="b")]
    (backend,), warnings = backends_from_health(entries, SOURCE, TARGET)
    assert backend.ready and "merged" in warnings[0]


def test_ipv6_addresses_are_canonical():
    (backend,), _ = backends_from_health([entry("2001:DB8::0:1")], SOURCE, TARGET)
    assert backend.address == "2001:db8::1"


def test_query_parameters_carry_every_filter():
    source = ConsulSourceConfig(
        service="rgw",
        port_name="http",
        tags=("a", "b"),
        datacenter="dc2",
        node_meta=(("rack", "r1"),),
        filter='Service.Meta.zone == "a"',
        namespace="team",
        partition="p1",
        consistency=ConsulConsistency.STALE,
    )
    params = query_params(source, index=42, wait=300)
    assert params == [
        ("index", 42),
        ("wait", "300s"),
        ("tag", "a"),
        ("tag", "b"),
        ("node-meta", "rack:r1"),
        ("dc", "dc2"),
        ("filter", 'Service.Meta.zone == "a"'),
        ("ns", "team"),
        ("partition", "p1"),
        ("stale", ""),
    ]
    assert query_params(SOURCE, index=0, wait=300) == []  # first read never blocks


def test_what_an_instance_keeps_of_its_entry_maps_every_address_mode_zone_and_health():
    """The daemon keeps each entry as a small tuple of what it reads: every address mode,
    the zone and the health must come out as from the entry Consul sent."""
    from dataclasses import replace as with_

    from syncd.sources.consul import map_entry, slim_entry

    full = entry(
        address="",
        checks=("passing", "warning"),
        service_tagged={"lan_ipv4": {"Address": "192.0.2.7", "Port": 9000}},
        node_tagged={"lan": "192.0.2.8", "wan": "192.0.2.9"},
    )
    full["Node"].update(Meta={"zone": "z1"}, Datacenter="dc1", CreateIndex=5)
    full["Service"].update(Meta={}, Proxy={"Mode": ""}, Weights={"Passing": 1}, Tags=["a"])
    full["Checks"] = [
        {**check, "Output": "x" * 1000, "Notes": "", "CheckID": f"c{n}", "ModifyIndex": n}
        for n, check in enumerate(full["Checks"])
    ]
    assert len(repr(slim_entry(full))) < len(repr(full)) / 2
    expected = {
        ConsulAddress.SERVICE: ("198.51.100.9", 8080),  # no service address: the node's
        ConsulAddress.LAN_IPV4: ("192.0.2.7", 9000),  # the service's tagged address
        ConsulAddress.LAN: ("192.0.2.8", 8080),  # the node's tagged address
        ConsulAddress.WAN: ("192.0.2.9", 8080),
        ConsulAddress.WAN_IPV4: None,
        ConsulAddress.LAN_IPV6: None,
        ConsulAddress.WAN_IPV6: None,
    }
    for mode in ConsulAddress:
        kept = slim_entry(full, address=mode, zone_meta=SOURCE.zone_meta)
        for warning_is_ready in (True, False):
            mapped = map_entry(kept, with_(SOURCE, address=mode, warning_is_ready=warning_is_ready))
            assert mapped.identity == expected[mode], mode
            if mapped.identity is not None:
                assert (mapped.ready, mapped.zone) == (warning_is_ready, "z1")


def test_an_answer_read_for_a_query_is_kept_entry_by_entry_as_it_is_parsed():
    """A reader decodes a /v1/health/service answer straight into Instances (a service of
    thousands of instances is never held whole as dicts); errors stay errors."""
    import json

    import consul

    from syncd.sources.consul import Instance, slim_entry
    from syncd.sources.consul_api import _parse_reply

    class Response:
        def __init__(self, code, body):
            self.code, self.body, self.headers = code, body, {"X-Consul-Index": "7"}

    raw = [entry(instance="i1"), entry(address="192.0.2.2", instance="i2")]
    raw[0]["Service"]["Meta"] = {"Checks": "", "Service": "x", "Node": "y"}  # not an entry
    raw[1]["Service"]["Proxy"] = {"Config": {"Node": {}, "Service": {}, "Checks": [1]}}
    reply = _parse_reply(Response(200, json.dumps(raw)), None, slim_entry)
    assert reply.index == 7
    assert all(isinstance(kept, Instance) for kept in reply.body)
    assert reply.body == [slim_entry(e) for e in raw]
    for code, error in ((403, consul.ACLPermissionDenied), (500, consul.ConsulException)):
        with pytest.raises(error):
            _parse_reply(Response(code, "no"), None, slim_entry)
    with pytest.raises(consul.ConsulException, match="decode"):
        _parse_reply(Response(200, "[{"), None, slim_entry)
