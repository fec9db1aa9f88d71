"""Rendering is pure: same input, same objects; stable packing keeps churn to one slice."""

from __future__ import annotations

import copy
import ipaddress
import os
from dataclasses import replace

import pytest

from harness.helpers import CEPH_EXAMPLE, REPO
from syncd.cli import main
from syncd.config import load_config
from syncd.model import (
    Backend,
    EndpointPort,
    Output,
    ServicePort,
    Target,
)
from syncd.render import (
    pack_slices,
    placement_of,
    render_endpoint_slices,
    render_endpoints,
    render_target,
)
from syncd.sources.static import StaticSourceConfig

GOLDEN = REPO / "tests" / "golden" / "ceph-rgw.yaml"
HTTP = ServicePort("http", 80)


def _target(**changes) -> Target:
    base = Target("ns", "svc", (HTTP,), (StaticSourceConfig(),))
    return replace(base, **changes)


def _backend(address: str, port: int = 8080, ready: bool = True) -> Backend:
    return Backend(str(ipaddress.ip_address(address)), (EndpointPort("http", port),), ready)


def _many(count: int, port: int = 8080) -> list[Backend]:
    first = ipaddress.ip_address("198.51.100.0")
    return [_backend(str(first + i), port) for i in range(count)]


def _by_name(slices):
    return {s["metadata"]["name"]: s for s in slices}


def test_render_of_the_ceph_example_matches_the_golden_file(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["render", "--config", "config/ceph-rgw.yaml"]) == 0
    rendered = capsys.readouterr().out
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text(), "run with UPDATE_GOLDEN=1 after reviewing the diff"


def test_ceph_example_becomes_one_slice_per_backend_port():
    target = load_config(CEPH_EXAMPLE).targets[0]
    slices = render_endpoint_slices(target, target.sources[0].backends, "default")
    assert [(s["ports"][0]["port"], len(s["endpoints"])) for s in slices] == [(8080, 6), (8081, 6)]
    assert all(s["ports"][0]["name"] == "http" for s in slices)  # matches the Service port name


def test_250_backends_pack_into_slices_of_100_100_50():
    slices = render_endpoint_slices(_target(), _many(250), "o")
    assert [len(s["endpoints"]) for s in slices] == [100, 100, 50]


def test_removing_one_backend_rewrites_only_its_slice():
    backends = _many(250)
    before = _by_name(render_endpoint_slices(_target(), backends, "o"))
    removed = backends[:120] + backends[121:]
    after = _by_name(render_endpoint_slices(_target(), removed, "o", placement_of(before.values())))
    changed = [name for name in before if before[name] != after.get(name)]
    assert len(changed) == 1 and len(after[changed[0]]["endpoints"]) == 99


def test_adding_one_backend_rewrites_one_slice_and_keeps_names():
    backends = _many(250)
    before = _by_name(render_endpoint_slices(_target(), backends, "o"))
    added = [*backends, _backend("203.0.113.1")]
    after = _by_name(render_endpoint_slices(_target(), added, "o", placement_of(before.values())))
    assert set(after) == set(before)
    assert sum(before[name] != after[name] for name in before) == 1


def test_a_new_backend_joins_a_slice_that_changes_anyway():
    backends = _many(250)
    before = _by_name(render_endpoint_slices(_target(), backends, "o"))
    swapped = [*backends[1:], _backend("203.0.113.1")]  # one out of the first slice, one new
    after = _by_name(render_endpoint_slices(_target(), swapped, "o", placement_of(before.values())))
    assert sum(before[name] != after[name] for name in before) == 1


def test_marking_a_backend_not_ready_keeps_it_in_its_slice():
    backends = _many(5)
    backends[2] = replace(backends[2], ready=False)
    (obj,) = render_endpoint_slices(_target(), backends, "o")
    conditions = {e["addresses"][0]: e["conditions"]["ready"] for e in obj["endpoints"]}
    assert len(conditions) == 5 and conditions[backends[2].address] is False


def test_lowering_capacity_moves_only_the_overflow():
    backends = _many(150)
    before = render_endpoint_slices(_target(), backends, "o")
    smaller = _target(max_endpoints_per_slice=60)
    after = render_endpoint_slices(smaller, backends, "o", placement_of(before))
    assert all(len(s["endpoints"]) <= 60 for s in after)
    assert sum(len(s["endpoints"]) for s in after) == 150


def test_ipv4_and_ipv6_never_share_a_slice():
    backends = [_backend("192.0.2.1"), _backend("2001:db8::1"), _backend("2001:db8::2")]
    slices = render_endpoint_slices(_target(), backends, "o")
    assert [(s["addressType"], len(s["endpoints"])) for s in slices] == [("IPv4", 1), ("IPv6", 2)]
    assert [s["metadata"]["name"] for s in slices] == ["svc-v4-8080-0", "svc-v6-8080-0"]


def test_multi_port_backends_share_one_port_list_per_slice():
    ports = (ServicePort("http", 80), ServicePort("metrics", 9100))
    both = (EndpointPort("http", 8080), EndpointPort("metrics", 9100))
    backends = [
        Backend("192.0.2.1", both),
        Backend("192.0.2.2", both),
        Backend("192.0.2.3", (EndpointPort("http", 8080),)),
    ]
    slices = render_endpoint_slices(_target(ports=ports), backends, "o")
    assert [[p["name"] for p in s["ports"]] for s in slices] == [["http"], ["http", "metrics"]]


def test_slices_name_and_label_the_service_and_point_at_its_uid():
    (obj,) = render_endpoint_slices(_target(), _many(1), "team-a", service_uid="uid-1")
    labels = obj["metadata"]["labels"]
    assert labels == {
        "kubernetes.io/service-name": "svc",
        "endpointslice.kubernetes.io/managed-by": "syncd",
        "syncd.io/owner": "team-a",
    }
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Service", "name": "svc", "uid": "uid-1", "controller": True}
    ]


def test_without_a_known_service_uid_there_is_no_owner_reference():
    (obj,) = render_endpoint_slices(_target(), _many(1), "o")
    assert "ownerReferences" not in obj["metadata"]


def test_very_long_port_lists_still_give_valid_names():
    ports = tuple(ServicePort(f"p{i}", 1000 + i) for i in range(60))
    endpoint_ports = tuple(EndpointPort(f"p{i}", 20000 + i) for i in range(60))
    placed = pack_slices("svc", [Backend("192.0.2.1", endpoint_ports)], 100)
    assert len(placed[0].name) <= 253
    assert _target(ports=ports)  # the target itself is fine


def test_legacy_endpoints_group_subsets_by_port_and_list_not_ready_separately():
    backends = [
        _backend("192.0.2.1", 8080),
        _backend("192.0.2.2", 8080, ready=False),
        _backend("192.0.2.1", 8081),
    ]
    endpoints = render_endpoints(_target(output=Output.ENDPOINTS), backends, "o")
    assert endpoints["subsets"] == [
        {
            "addresses": [{"ip": "192.0.2.1"}],
            "notReadyAddresses": [{"ip": "192.0.2.2"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        },
        {
            "addresses": [{"ip": "192.0.2.1"}],
            "ports": [{"name": "http", "port": 8081, "protocol": "TCP"}],
        },
    ]
    assert "endpointslice.kubernetes.io/skip-mirror" not in endpoints["metadata"]["labels"]


@pytest.mark.parametrize(
    ("output", "kinds"),
    [
        (Output.ENDPOINTSLICES, ["Service", "EndpointSlice"]),
        (Output.ENDPOINTS, ["Service", "Endpoints"]),
        (Output.BOTH, ["Service", "Endpoints", "EndpointSlice"]),
    ],
)
def test_output_selects_the_objects(output, kinds):
    objects = render_target(_target(output=output), _many(1), "o")
    assert [o["kind"] for o in objects] == kinds
    if output is Output.BOTH:
        labels = objects[1]["metadata"]["labels"]
        assert labels["endpointslice.kubernetes.io/skip-mirror"] == "true"


def test_manage_service_false_renders_no_service():
    objects = render_target(_target(manage_service=False), _many(1), "o")
    assert [o["kind"] for o in objects] == ["EndpointSlice"]


def test_rendering_is_deterministic_whatever_the_input_order():
    backends = _many(30)
    assert render_target(_target(), backends, "o") == render_target(
        _target(), list(reversed(backends)), "o"
    )


def test_no_backends_at_all_gives_one_empty_placeholder_slice():
    (placeholder,) = render_endpoint_slices(_target(), [], "o")
    assert placeholder["metadata"]["name"] == "svc-empty"
    assert placeholder["endpoints"] == [] and placeholder["ports"] == []
    after = render_endpoint_slices(_target(), _many(1), "o", placement_of([placeholder]))
    assert [s["metadata"]["name"] for s in after] == ["svc-v4-8080-0"]


def test_remembered_slices_never_stand_in_for_changed_backends():
    """Slices are memoized by their members' identities: new backend objects, even ones
    that reuse the ids of freed ones, must render from their own content."""
    target = _target()
    first = render_endpoint_slices(target, _many(250), "o")
    placement = placement_of(first)
    for round_ in range(20):  # fresh objects each round: ids of freed ones get reused
        backends = [replace(b, ready=(i + round_) % 7 != 0) for i, b in enumerate(_many(250))]
        slices = render_endpoint_slices(target, backends, "o", placement)
        want = {b.address: b.ready for b in backends}
        got = {e["addresses"][0]: e["conditions"]["ready"] for s in slices for e in s["endpoints"]}
        assert got == want


def test_an_unchanged_slice_is_the_same_object_when_rendered_again():
    backends = _many(250)
    first = render_endpoint_slices(_target(), backends, "o")
    backends[0] = replace(backends[0], ready=False)
    second = render_endpoint_slices(_target(), backends, "o", placement_of(first))
    same = [a is b for a, b in zip(first, second, strict=True)]
    assert same == [False, True, True]


def test_a_remembered_slice_cannot_be_edited_by_whoever_shares_it():
    """The memo hands the same object to every caller: an edit in place fails where it
    is made instead of changing what the next reconcile gets."""
    shared = render_endpoint_slices(_target(), _many(250), "o")[1]
    with pytest.raises(TypeError, match="shared"):
        shared["endpoints"].append({"addresses": ["198.51.100.99"]})
    with pytest.raises(TypeError, match="shared"):
        shared["metadata"]["labels"]["x"] = "y"
    copied = copy.deepcopy(shared)  # a copy is the caller's own, plain and editable
    copied["metadata"]["labels"]["x"] = "y"
    assert type(copied) is dict and copied != shared


def test_backends_that_compare_equal_hash_equal():
    a = _backend("198.51.100.7")
    b = replace(replace(a, ready=False), ready=True)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert hash(replace(a, ready=False)) != hash(a) or replace(a, ready=False) != a


def test_a_target_with_ipv6_backends_asks_for_a_dual_stack_service():
    """A Service of one family only gets that family's ClusterIP, and kube-proxy programs
    only its endpoints: IPv6 backends behind an IPv4-only Service are never used."""
    from syncd.model import (
        Backend,
        EndpointPort,
        ServicePort,
        Target,
    )
    from syncd.render import render_target

    target = Target("ns", "db", (ServicePort("pg", 5432),), (StaticSourceConfig(),))
    port = (EndpointPort("pg", 5432),)
    v6 = render_target(target, [Backend("2001:db8::10", port)], "me")[0]
    mixed = render_target(target, [Backend("2001:db8::10", port), Backend("192.0.2.1", port)], "me")
    v4 = render_target(target, [Backend("192.0.2.1", port)], "me")[0]
    assert v6["spec"]["ipFamilyPolicy"] == "PreferDualStack" and "ipFamilies" not in v6["spec"]
    assert mixed[0]["spec"]["ipFamilyPolicy"] == "PreferDualStack"
    assert "ipFamilyPolicy" not in v4["spec"]  # as before: the cluster's default
