"""`syncd run --once` against a real kube-apiserver, as the syncd service account (RBAC on).

Write counts come from the API server's audit log, not from syncd itself.
"""

from __future__ import annotations

import ipaddress
import json

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils

from harness.helpers import (
    CEPH_EXAMPLE,
    CEPH_PAIRS,
    ceph_target,
    endpoint_pairs,
    readiness,
    slices_of,
    syncd,
    target,
    write_config,
)

pytestmark = pytest.mark.apiserver

SERVICE = "ocs-external-rgw-lb"


def _writes(apiserver, mark):
    """Writes of objects (Events, which report conflicts, are counted apart)."""
    return [
        (e.verb, e.resource, e.name)
        for e in apiserver.audit.writes_since(mark)
        if e.resource != "events"
    ]


def test_rendered_ceph_example_is_accepted_by_the_api_server_with_its_12_gateways(
    apiserver, admin_api
):
    rendered = syncd("render", "--config", CEPH_EXAMPLE, check=0).stdout
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc]
    core = k8s.CoreV1Api(admin_api)
    if not any(ns.metadata.name == "storage" for ns in core.list_namespace().items):
        core.create_namespace({"metadata": {"name": "storage"}})
    for document in documents:  # server-side dry run: full validation, nothing stored
        k8s_utils.create_from_dict(admin_api, document, dry_run="All")
    slices = [d for d in documents if d["kind"] == "EndpointSlice"]
    assert endpoint_pairs(slices) == CEPH_PAIRS
    assert sum(len(s["endpoints"]) for s in slices) == 12
    assert sorted(s["ports"][0]["port"] for s in slices) == [8080, 8081]


def test_first_run_creates_everything_and_a_second_run_writes_nothing(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    config = write_config(tmp_path / "c.yaml", ceph_target(namespace))
    mark = apiserver.audit.mark()
    first = run_syncd(config)
    assert sorted(_writes(apiserver, mark)) == [
        ("create", "endpointslices", f"{SERVICE}-v4-8080-0"),
        ("create", "endpointslices", f"{SERVICE}-v4-8081-0"),
        ("create", "services", SERVICE),
    ]
    assert f"created Service {namespace}/{SERVICE}" in first.stderr
    assert f"created EndpointSlice {namespace}/{SERVICE}-v4-8080-0 (6 endpoints)" in first.stderr

    service = admin.get("Service", namespace, SERVICE)
    assert "selector" not in service["spec"]
    slices = slices_of(admin, namespace, SERVICE)
    assert endpoint_pairs(slices) == CEPH_PAIRS
    for obj in slices:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == service["metadata"]["uid"]
        assert obj["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "syncd"

    mark = apiserver.audit.mark()
    second = run_syncd(config)
    assert _writes(apiserver, mark) == []
    assert f"{namespace}/{SERVICE}: no changes" in second.stderr
    assert "converged: 1 target, 0 writes" in second.stderr


def test_removing_one_gateway_and_failing_another_rewrites_only_their_slices(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    config = write_config(tmp_path / "c.yaml", ceph_target(namespace))
    run_syncd(config)
    before = {s["metadata"]["name"]: s for s in slices_of(admin, namespace, SERVICE)}

    changed = ceph_target(namespace)
    backends = changed["sources"][0]["backends"]
    backends.remove("192.168.7.53:8081")
    (at,) = [i for i, b in enumerate(backends) if "192.168.7.54" in str(b) and "8081" not in str(b)]
    backends[at] = {**backends[at], "ready": False}  # {address, port: 8080, hostname}
    write_config(config, changed)
    mark = apiserver.audit.mark()
    run_syncd(config)

    assert sorted(_writes(apiserver, mark)) == [
        ("update", "endpointslices", f"{SERVICE}-v4-8080-0"),
        ("update", "endpointslices", f"{SERVICE}-v4-8081-0"),
    ]
    after = slices_of(admin, namespace, SERVICE)
    assert {s["metadata"]["name"] for s in after} == set(before)
    state = readiness(after)
    assert ("192.168.7.53", 8081) not in state
    assert state[("192.168.7.54", 8080)] is False  # stays in its slice, marked not ready
    assert sum(state.values()) == 10


def test_one_backend_change_writes_exactly_one_slice(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    config = write_config(tmp_path / "c.yaml", ceph_target(namespace))
    run_syncd(config)
    changed = ceph_target(namespace)
    changed["sources"][0]["backends"].append("192.168.7.56:8081")
    write_config(config, changed)
    mark = apiserver.audit.mark()
    run_syncd(config)
    assert _writes(apiserver, mark) == [("update", "endpointslices", f"{SERVICE}-v4-8081-0")]


def _many(count: int) -> list[str]:
    first = ipaddress.ip_address("198.51.100.1")
    return [
        f"{first + i if i < 200 else ipaddress.ip_address('203.0.113.1') + i - 200}:8080"
        for i in range(count)
    ]


def test_250_backends_fill_three_slices_and_removing_one_rewrites_one(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    backends = _many(250)
    config = write_config(tmp_path / "c.yaml", target(namespace, "big", backends))
    run_syncd(config)
    slices = slices_of(admin, namespace, "big")
    assert sorted(len(s["endpoints"]) for s in slices) == [50, 100, 100]
    assert len(endpoint_pairs(slices)) == 250

    write_config(config, target(namespace, "big", backends[:120] + backends[121:]))
    mark = apiserver.audit.mark()
    run_syncd(config)
    writes = _writes(apiserver, mark)
    assert len(writes) == 1 and writes[0][:2] == ("update", "endpointslices")
    assert len(endpoint_pairs(slices_of(admin, namespace, "big"))) == 249


def test_ipv6_backends_get_their_own_slice(run_syncd, apiserver, admin, namespace, tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        target(
            namespace, "dual", ["192.0.2.10:8080", "[2001:db8::1]:8080", "[2001:0db8:0:0::2]:8080"]
        ),
    )
    run_syncd(config)
    slices = {s["addressType"]: s for s in slices_of(admin, namespace, "dual")}
    assert set(slices) == {"IPv4", "IPv6"}
    assert [e["addresses"][0] for e in slices["IPv6"]["endpoints"]] == [
        "2001:db8::1",
        "2001:db8::2",  # canonical form
    ]


def test_unowned_endpointslice_with_syncd_name_is_a_conflict_and_left_alone(
    run_syncd, apiserver, admin, admin_api, namespace, tmp_path
):
    foreign = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{SERVICE}-v4-8080-0",
            "namespace": namespace,
            "labels": {"endpointslice.kubernetes.io/managed-by": "someone-else"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["203.0.113.9"]}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }
    admin.create(foreign)
    before = admin.get("EndpointSlice", namespace, f"{SERVICE}-v4-8080-0")
    other = target(namespace, "other", ["192.0.2.1:80"])
    config = write_config(tmp_path / "c.yaml", ceph_target(namespace), other)

    mark = apiserver.audit.mark()
    result = run_syncd(config, check=1)
    writes = _writes(apiserver, mark)
    assert (
        f"{namespace}/{SERVICE}: CONFLICT: EndpointSlice {namespace}/{SERVICE}-v4-8080-0"
        in result.stderr
    )
    assert "someone-else" in result.stderr
    # Nothing written for the conflicting target; the other target is still applied.
    assert all(name != SERVICE and not name.startswith(SERVICE) for _, _, name in writes)
    assert ("create", "services", "other") in writes
    after = admin.get("EndpointSlice", namespace, f"{SERVICE}-v4-8080-0")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

    # The conflict is an Event on the Service, once: a second run does not add another.
    run_syncd(config, check=1)
    events = [e for e in admin.list("Event", namespace) if e["reason"] == "SyncConflict"]
    assert len(events) == 1 and "someone-else" in events[0]["message"]


def test_unowned_endpoints_is_a_conflict_when_endpoints_are_written(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "legacy", "namespace": namespace},
            "subsets": [{"addresses": [{"ip": "203.0.113.5"}], "ports": [{"port": 80}]}],
        }
    )
    config = write_config(
        tmp_path / "c.yaml", target(namespace, "legacy", ["192.0.2.1:80"], output="endpoints")
    )
    mark = apiserver.audit.mark()
    result = run_syncd(config, check=1)
    assert (
        f"CONFLICT: Endpoints {namespace}/legacy exists and is not managed by syncd"
        in result.stderr
    )
    assert _writes(apiserver, mark) == []
    assert admin.get("Endpoints", namespace, "legacy")["subsets"][0]["addresses"] == [
        {"ip": "203.0.113.5"}
    ]


def test_unowned_service_is_a_conflict_unless_manage_service_is_false(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "theirs", "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }
    )
    config = write_config(tmp_path / "c.yaml", target(namespace, "theirs", ["192.0.2.1:80"]))
    mark = apiserver.audit.mark()
    result = run_syncd(config, check=1)
    assert "CONFLICT: Service" in result.stderr and "manage_service: false" in result.stderr
    assert _writes(apiserver, mark) == []

    # Adopting it: the Service is used as it is; only the slices are syncd's.
    service = admin.get("Service", namespace, "theirs")
    write_config(config, target(namespace, "theirs", ["192.0.2.1:80"], manage_service=False))
    mark = apiserver.audit.mark()
    run_syncd(config)
    assert _writes(apiserver, mark) == [("create", "endpointslices", "theirs-v4-80-0")]
    (slice_,) = slices_of(admin, namespace, "theirs")
    assert slice_["metadata"]["ownerReferences"][0]["uid"] == service["metadata"]["uid"]
    after = admin.get("Service", namespace, "theirs")
    assert after["metadata"]["resourceVersion"] == service["metadata"]["resourceVersion"]


def test_service_with_a_selector_is_always_a_conflict(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "pods", "namespace": namespace},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
        }
    )
    config = write_config(
        tmp_path / "c.yaml", target(namespace, "pods", ["192.0.2.1:80"], manage_service=False)
    )
    mark = apiserver.audit.mark()
    result = run_syncd(config, check=1)
    assert "has a selector" in result.stderr
    assert _writes(apiserver, mark) == []


def test_removed_target_prunes_only_what_syncd_owns(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    keep = target(namespace, "keep", ["192.0.2.1:80"])
    gone = target(namespace, "gone", ["192.0.2.2:80", "[2001:db8::2]:80"], output="both")
    config = write_config(tmp_path / "c.yaml", keep, gone)
    run_syncd(config)
    foreign = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "gone-by-hand",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": "gone"},
        },
        "addressType": "IPv4",
        "endpoints": [],
        "ports": [],
    }
    admin.create(foreign)

    write_config(config, keep)
    mark = apiserver.audit.mark()
    result = run_syncd(config)
    assert sorted(_writes(apiserver, mark)) == [
        ("delete", "endpoints", "gone"),
        ("delete", "endpointslices", "gone-v4-80-0"),
        ("delete", "endpointslices", "gone-v6-80-0"),
        ("delete", "services", "gone"),
    ]
    assert f"{namespace}/gone: 4 changes applied; target removed from the config" in result.stderr
    assert admin.get("Service", namespace, "gone") is None
    assert [s["metadata"]["name"] for s in slices_of(admin, namespace, "gone")] == ["gone-by-hand"]
    assert len(slices_of(admin, namespace, "keep")) == 1


def test_dry_run_prints_the_plan_and_writes_nothing(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    config = write_config(tmp_path / "c.yaml", ceph_target(namespace))
    mark = apiserver.audit.mark()
    fresh = run_syncd(config, "--dry-run")
    assert _writes(apiserver, mark) == []
    assert f"would create Service {namespace}/{SERVICE}" in fresh.stdout
    assert "+ kind: EndpointSlice" in fresh.stdout
    assert "dry run: 3 changes planned, nothing written" in fresh.stdout

    run_syncd(config)
    changed = ceph_target(namespace)
    changed["sources"][0]["backends"].remove("192.168.7.52:8081")
    write_config(config, changed)
    mark = apiserver.audit.mark()
    plan = run_syncd(config, "--dry-run")
    assert _writes(apiserver, mark) == []
    assert f"would update EndpointSlice {namespace}/{SERVICE}-v4-8081-0" in plan.stdout
    assert "-  - address: 192.168.7.52" in plan.stdout
    assert len(endpoint_pairs(slices_of(admin, namespace, SERVICE))) == 12


def test_output_endpoints_writes_legacy_endpoints_only(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    config = write_config(tmp_path / "c.yaml", ceph_target(namespace, output="endpoints"))
    run_syncd(config)
    endpoints = admin.get("Endpoints", namespace, SERVICE)
    assert slices_of(admin, namespace, SERVICE) == []
    labels = endpoints["metadata"]["labels"]
    assert "endpointslice.kubernetes.io/skip-mirror" not in labels  # let the mirror work
    pairs = {
        (a["ip"], s["ports"][0]["port"])
        for s in endpoints["subsets"]
        for a in s.get("addresses", [])
    }
    assert pairs == CEPH_PAIRS
    mark = apiserver.audit.mark()
    run_syncd(config)
    assert _writes(apiserver, mark) == []


def test_output_both_marks_endpoints_skip_mirror_and_switching_back_deletes_them(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    both = ceph_target(namespace, output="both")
    both["sources"][0]["backends"][0] = {"address": "192.168.7.50", "port": 8080, "ready": False}
    config = write_config(tmp_path / "c.yaml", both)
    run_syncd(config)
    endpoints = admin.get("Endpoints", namespace, SERVICE)
    assert endpoints["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"] == "true"
    not_ready = [a["ip"] for s in endpoints["subsets"] for a in s.get("notReadyAddresses", [])]
    assert not_ready == ["192.168.7.50"]
    assert endpoint_pairs(slices_of(admin, namespace, SERVICE)) == CEPH_PAIRS

    write_config(config, ceph_target(namespace))
    mark = apiserver.audit.mark()
    run_syncd(config)
    writes = _writes(apiserver, mark)
    assert ("delete", "endpoints", SERVICE) in writes
    assert admin.get("Endpoints", namespace, SERVICE) is None


def test_two_syncd_instances_never_prune_each_other(run_syncd, admin, namespace, tmp_path):
    mine = write_config(tmp_path / "a.yaml", target(namespace, "team-a", ["192.0.2.1:80"]))
    theirs = write_config(tmp_path / "b.yaml", target(namespace, "team-b", ["192.0.2.2:80"]))
    run_syncd(mine, owner="team-a")
    run_syncd(theirs, owner="team-b")
    assert len(slices_of(admin, namespace, "team-a")) == 1  # b's run pruned nothing of a's

    # The same Service claimed by the other instance is a conflict, not a takeover.
    clash = write_config(tmp_path / "c.yaml", target(namespace, "team-a", ["192.0.2.3:80"]))
    result = run_syncd(clash, owner="team-b", check=1)
    assert "another syncd instance (owner 'team-a'" in result.stderr


def test_each_line_goes_to_one_stream_and_json_logs_are_one_object_per_line(
    run_syncd, admin, namespace, tmp_path
):
    """A conflict is reported once, on stderr with the logs (stdout stays empty: `run`
    prints no output, only diagnostics); with --log-format json every line is one JSON
    object, for a log collector."""
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "theirs", "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }
    )
    config = write_config(
        tmp_path / "c.yaml",
        target(namespace, "theirs", ["192.0.2.1:80"]),
        target(namespace, "mine", ["192.0.2.2:80"]),
    )
    result = run_syncd(config, "--log-level", "info", "--log-format", "json", check=1)
    assert result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    logs = [line for line in lines if "logger" in line]
    assert logs and all({"time", "level", "logger", "message"} <= set(e) for e in logs)
    out = [line for line in lines if "logger" not in line]  # the results
    assert all({"time", "level", "action", "message"} <= set(line) for line in out)
    conflict = next(line for line in out if line.get("outcome") == "conflict")
    assert conflict["target"] == f"{namespace}/theirs" and conflict["level"] == "warning"
    assert "CONFLICT: Service" in conflict["message"] and conflict["action"] == "conflict"
    created = [line for line in out if line.get("action") == "create"]
    assert created and all(line["target"] == f"{namespace}/mine" for line in created)
    assert all(line["source"].startswith("static") for line in created)
    assert out[-1]["message"].startswith("not converged: 1 of 2 targets failed")

    text = run_syncd(config, "--log-level", "info", check=1)
    assert text.stderr.count("CONFLICT") == 1 and text.stdout == ""
