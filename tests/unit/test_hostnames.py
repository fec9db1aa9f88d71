"""Per-backend DNS names (endpoint hostnames) and headless Services, short of a cluster
DNS (tests/integration/test_cluster_dns.py asks a real CoreDNS)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from syncd.cache_trim import trimmed
from syncd.config import load_config_text
from syncd.errors import ConfigError
from syncd.hostnames import settle_hostnames
from syncd.kinds import registry_hostname
from syncd.live import OFFLINE, LiveState, backends_of_endpoints, backends_of_slices
from syncd.model import (
    AddressPolicy,
    Backend,
    EndpointPort,
    Output,
    ServicePort,
    Snapshot,
    Target,
    port_set,
)
from syncd.pipeline import family_warning, headless_warning, run
from syncd.plan import Action, plan_changes
from syncd.policy import PolicyState
from syncd.render import render_target
from syncd.sources.consul import backends_from_health
from syncd.sources.consul_config import ConsulSourceConfig
from syncd.sources.static import StaticSourceConfig

P8080 = port_set(EndpointPort("http", 8080))
P8081 = port_set(EndpointPort("http", 8081))
TARGET = Target("ns", "rgw", (ServicePort("http", 80),), (StaticSourceConfig(),))


def _decided(target, backends, live=OFFLINE):
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
    return step


def _names(objects) -> dict[tuple[str, int], str | None]:
    return {
        (e["addresses"][0], o["ports"][0]["port"]): e.get("hostname")
        for o in objects
        if o["kind"] == "EndpointSlice"
        for e in o["endpoints"]
    }


# -- one name per host


def test_a_host_named_on_one_port_carries_its_name_on_every_port():
    named = Backend("192.168.7.50", P8080, hostname="rgw-50")
    step = _decided(TARGET, [named, Backend("192.168.7.50", P8081)])
    desired = [c.desired for c in step.plan.changes]
    assert _names(desired) == {("192.168.7.50", 8080): "rgw-50", ("192.168.7.50", 8081): "rgw-50"}
    assert step.evaluation.warnings == ()


def test_a_name_claimed_by_two_addresses_stays_with_the_lowest_and_warns():
    settled = settle_hostnames(
        frozenset(
            {
                Backend("192.168.7.60", P8080, hostname="rgw"),
                Backend("192.168.7.9", P8080, hostname="rgw"),
            }
        )
    )
    names = {b.address: b.hostname for b in settled.backends}
    assert names == {"192.168.7.9": "rgw", "192.168.7.60": None}  # by address, not by text
    assert settled.warnings == (
        "'rgw' names 192.168.7.9 and 192.168.7.60; a name answers one address: it stays "
        "with 192.168.7.9, the others are left without a name",
    )


def test_an_address_named_twice_keeps_the_first_name_and_warns():
    settled = settle_hostnames(
        frozenset(
            {
                Backend("192.168.7.50", P8080, hostname="rgw-b"),
                Backend("192.168.7.50", P8081, hostname="rgw-a"),
            }
        )
    )
    assert {b.hostname for b in settled.backends} == {"rgw-a"}
    assert settled.warnings == (
        "192.168.7.50 is named 'rgw-a' and 'rgw-b'; an address has one name: 'rgw-a' is used",
    )


def test_backends_without_names_pass_through_untouched():
    backends = frozenset({Backend("192.168.7.50", P8080)})
    assert settle_hostnames(backends).backends is backends


def test_registry_names_are_lowercased_dns_labels_or_nothing():
    assert registry_hostname("RGW-50") == "rgw-50"
    assert registry_hostname("rgw_50") is None
    assert registry_hostname("rgw-50.example.com") is None
    assert registry_hostname("x" * 64) is None


# -- the static list, checked


def _config(backends: str, **target: str) -> str:
    extra = "".join(f"    {key}: {value}\n" for key, value in target.items())
    return f"""\
version: 1
targets:
  - namespace: ns
    service: rgw
    ports: [{{name: http, port: 80}}]
{extra}    sources:
      - type: static
        backends: {backends}
"""


def _problems(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "c.yaml")
    return "\n".join(caught.value.problems)


def test_a_static_backend_takes_a_hostname():
    config = load_config_text(
        _config("[{address: 192.168.7.50, port: 8080, hostname: rgw-50}]"), "c.yaml"
    )
    assert config.targets[0].sources[0].backends[0].hostname == "rgw-50"


def test_check_refuses_a_hostname_that_is_not_a_dns_label_and_says_where():
    problems = _problems(_config("[{address: 192.168.7.50, port: 8080, hostname: RGW_50}]"))
    assert "c.yaml:8: target ns/rgw: sources[0].backends[0].hostname: 'RGW_50' is not a " in (
        problems
    )
    assert "lowercase letters, digits and '-'" in problems
    dotted = _problems(_config("[{address: 192.168.7.50, port: 8080, hostname: rgw-50.lab}]"))
    assert "one label, e.g. 'rgw-50'" in dotted


def test_check_refuses_one_name_on_two_addresses_and_two_names_on_one():
    problems = _problems(
        _config(
            "[{address: 192.168.7.50, port: 8080, hostname: rgw},"
            " {address: 192.168.7.51, port: 8080, hostname: rgw},"
            " {address: 192.168.7.50, port: 8081, hostname: other}]"
        )
    )
    assert "backends[1].hostname: 'rgw' already names 192.168.7.50 ([0])" in problems
    assert "backends[2].hostname: 192.168.7.50 is already named 'rgw' ([0])" in problems


def test_headless_needs_a_service_syncd_manages():
    config = load_config_text(_config('["192.168.7.50:8080"]', headless="true"), "c.yaml")
    assert config.targets[0].headless
    problems = _problems(_config('["192.168.7.50:8080"]', headless="true", manage_service="false"))
    assert "headless: syncd does not change a Service it does not manage" in problems


# -- rendered, compared, read back


def test_a_headless_service_is_created_without_a_cluster_ip_and_without_a_family_policy():
    v6 = Backend("2001:db8::50", P8080, hostname="rgw-50")
    (service, *_rest) = render_target(replace(TARGET, headless=True), [v6], "me")
    assert service["spec"]["clusterIP"] == "None"
    assert "ipFamilyPolicy" not in service["spec"]
    (plain, *_rest) = render_target(TARGET, [v6], "me")
    assert "clusterIP" not in plain["spec"]


def test_legacy_endpoints_carry_the_names_too():
    target = replace(TARGET, output=Output.ENDPOINTS)
    backends = [Backend("192.168.7.50", P8080, hostname="rgw-50"), Backend("192.168.7.51", P8080)]
    (_, endpoints) = render_target(target, backends, "me")
    assert endpoints["subsets"][0]["addresses"] == [
        {"ip": "192.168.7.50", "hostname": "rgw-50"},
        {"ip": "192.168.7.51"},
    ]
    assert backends_of_endpoints(endpoints) == frozenset(backends)


def test_a_renamed_backend_is_one_update_of_its_slice_and_reads_back_as_written():
    before = [Backend("192.168.7.50", P8080, hostname="rgw-50")]
    after = [replace(before[0], hostname="rgw-x")]
    target = replace(TARGET, manage_service=False)
    live = [_as_stored(o) for o in render_target(target, before, "me")]
    assert backends_of_slices(live) == frozenset(before)
    changes = plan_changes(render_target(target, after, "me"), live)
    assert [(c.action, c.kind) for c in changes] == [(Action.UPDATE, "EndpointSlice")]
    assert "-    hostname: rgw-50\n+    hostname: rgw-x" in changes[0].diff()
    assert plan_changes(render_target(target, before, "me"), live) == []


def _as_stored(obj):
    """As the cluster cache keeps a listed object."""
    return trimmed(obj["kind"], obj["apiVersion"], {**obj, "metadata": {**obj["metadata"]}})


# -- what syncd says about a Service that cannot change shape


def _service(cluster_ip: str, owner: str = "me"):
    return {
        "kind": "Service",
        "metadata": {
            "name": "rgw",
            "namespace": "ns",
            "labels": {"app.kubernetes.io/managed-by": "syncd", "syncd.io/owner": owner},
        },
        "spec": {
            "clusterIP": cluster_ip,
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        },
    }


def test_a_service_that_cannot_change_its_cluster_ip_is_told_once_in_either_direction():
    headless = replace(TARGET, headless=True)
    said = headless_warning(headless, LiveState.of(_service("10.96.0.10")), "me")
    assert said == (
        "Service ns/rgw has a ClusterIP and headless: true asks for none; a "
        "Service's clusterIP cannot change in place: delete it (kubectl delete service -n "
        "ns rgw) and syncd creates it again as configured, with its endpoints"
    )
    back = headless_warning(TARGET, LiveState.of(_service("None")), "me")
    assert back is not None and "is headless (clusterIP: None) and headless is off" in back
    assert headless_warning(headless, LiveState.of(_service("None")), "me") is None
    assert headless_warning(headless, LiveState.of(_service("10.96.0.10", "other")), "me") is None
    step = _decided(headless, [Backend("192.168.7.50", P8080)], LiveState.of(_service("10.9.0.1")))
    assert any("cannot change in place" in w for w in step.evaluation.warnings)
    assert all(c.kind != "Service" for c in step.plan.changes)  # nothing tries to


def test_a_headless_service_has_no_family_to_miss():
    v6 = [Backend("2001:db8::50", P8080)]
    assert family_warning(TARGET, LiveState.of(_service("10.96.0.10")), v6) is not None
    assert family_warning(TARGET, LiveState.of(_service("None")), v6) is None


# -- registries


def _entry(node: str, service_id: str, address: str, meta=None):
    return {
        "Node": {"Node": node, "Address": address, "Meta": {}},
        "Service": {"ID": service_id, "Address": address, "Port": 8080, "Meta": meta or {}},
        "Checks": [],
    }


@pytest.mark.parametrize(
    ("hostname_from", "wanted"),
    [("node", "rgw-50"), ("service_id", "s3-a"), ("meta:dns", "gw-1"), (None, None)],
)
def test_consul_names_come_from_where_the_source_says(hostname_from, wanted):
    source = ConsulSourceConfig(service="rgw", port_name="http", hostname_from=hostname_from)
    entry = _entry("RGW-50", "s3-a", "192.168.7.50", {"dns": "gw-1"})
    (backend,), warnings = backends_from_health([entry], source, TARGET)
    assert backend.hostname == wanted
    assert warnings == []


def test_a_consul_name_that_cannot_be_one_is_dropped_and_the_endpoint_kept():
    source = ConsulSourceConfig(service="rgw", port_name="http", hostname_from="node")
    (backend,), warnings = backends_from_health(
        [_entry("rgw-50.lab.example", "x", "192.168.7.50")], source, TARGET
    )
    assert backend.hostname is None and backend.address == "192.168.7.50"
    assert warnings == [
        "rgw-50.lab.example/x: node 'rgw-50.lab.example' is not a hostname (lowercase "
        "letters, digits and '-', at most 63, starting and ending alphanumeric); kept "
        "without a name"
    ]


def test_source_hostname_options_are_checked():
    def source(text: str) -> str:
        return f"""\
version: 1
targets:
  - namespace: ns
    service: rgw
    ports: [{{name: http, port: 80}}]
    sources:
      - {text}
"""

    consul = load_config_text(source("{type: consul, service: rgw, hostname_from: node}"), "c")
    assert consul.targets[0].sources[0].hostname_from == "node"
    srv = load_config_text(
        source("{type: dns, srv: _rgw._tcp.example.test, hostname_from: srv_target}"), "c"
    )
    assert srv.targets[0].sources[0].hostname_from == "srv_target"
    assert "'address' is not one of: node, service_id, meta:<key>" in _problems(
        source("{type: consul, service: rgw, hostname_from: address}")
    )
    assert "only for 'srv': an A/AAAA answer has no name per address" in _problems(
        source("{type: dns, name: rgw.example.test, port: 8080, hostname_from: srv_target}")
    )
    http_sd = load_config_text(
        source("{type: http_sd, url: 'http://127.0.0.1/sd', hostname_label: host}"), "c"
    )
    assert http_sd.targets[0].sources[0].hostname_label == "host"
