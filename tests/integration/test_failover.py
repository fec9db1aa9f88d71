"""Failover tiers, active health checks and guards, end to end against real servers.

Listeners are real (HTTP servers on test hosts in a network namespace); tiers are static
lists, a real Consul (service and prepared query) and a real BIND.
"""

from __future__ import annotations

import time

import pytest

from harness.helpers import (
    endpoint_pairs,
    readiness,
    slices_of,
    target_with,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.apiserver

A, B, C, D, E = (f"198.51.100.{n}" for n in (10, 11, 12, 13, 14))
FAST_PROBES = {"type": "http", "interval": 0.3, "timeout": 0.25, "rise": 1, "fall": 1}


def write(path, namespace, service, sources, **extra):
    return write_config(path, target_with(namespace, service, *sources, **extra))


def static(*addresses, port=8080):
    return {"type": "static", "backends": [f"{a}:{port}" for a in addresses]}


def test_primary_down_fails_over_then_fails_back_only_after_failback_after(
    daemon, test_hosts, admin, namespace, tmp_path
):
    port = 8101
    for address in (A, B, C):
        test_hosts.serve(address, port)
    config = write(
        tmp_path / "c.yaml",
        namespace,
        "rgw",
        [static(A, B, port=port), static(C, port=port)],
        health_check=FAST_PROBES,
        failover={"failback_after": 3},
    )
    process = daemon(config)
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, "rgw")) == {(A, port), (B, port)},
        "tier 0",
    )

    test_hosts.stop(A, port)
    test_hosts.stop(B, port)
    started = time.monotonic()
    wait_for(
        lambda: readiness(slices_of(admin, namespace, "rgw")) == {(C, port): True},
        "failover to tier 1",
        timeout=10,
    )
    assert time.monotonic() - started < 5  # a few probe cycles, not failback_after (30 s)
    service = admin.get("Service", namespace, "rgw")
    assert service["metadata"]["annotations"]["syncd.io/active-tier"] == "1"
    wait_for(  # recorded right after the slices are written
        lambda: "Failover" in [e["reason"] for e in admin.list("Event", namespace)],
        "a Failover event",
        timeout=10,
    )

    test_hosts.serve(A, port)
    test_hosts.serve(B, port)
    time.sleep(1.5)  # tier 0 qualifies again, but not for failback_after (3 s) yet
    assert endpoint_pairs(slices_of(admin, namespace, "rgw")) == {(C, port)}
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, "rgw")) == {(A, port), (B, port)},
        "failback",
        timeout=5,
    )
    wait_for(  # reported once the writes are done, a moment after the slices change
        lambda: all(
            line in process.log_path.read_text()
            for line in ("failover from tier 0 to tier 1", "failback from tier 1 to tier 0")
        ),
        "both switches in the log",
        timeout=10,
    )


def test_an_unhealthy_backend_stays_in_its_slice_as_not_ready(
    daemon, test_hosts, admin, namespace, tmp_path
):
    port = 8102
    test_hosts.serve(A, port)
    test_hosts.serve(B, port)
    daemon(
        write(
            tmp_path / "c.yaml",
            namespace,
            "probe",
            [static(A, B, port=port)],
            health_check=FAST_PROBES,
        )
    )
    wait_for(
        lambda: (
            readiness(slices_of(admin, namespace, "probe")) == {(A, port): True, (B, port): True}
        ),
        "both ready",
    )
    test_hosts.stop(B, port)
    wait_for(
        lambda: (
            readiness(slices_of(admin, namespace, "probe")) == {(A, port): True, (B, port): False}
        ),
        "B not ready",
        timeout=10,
    )
    test_hosts.serve(B, port)
    wait_for(
        lambda: (
            readiness(slices_of(admin, namespace, "probe")) == {(A, port): True, (B, port): True}
        ),
        "B back",
        timeout=10,
    )


def test_a_broken_probe_path_triggers_the_panic_threshold(
    daemon, test_hosts, admin, namespace, tmp_path
):
    port = 8103  # nothing listens: every probe fails, the registry says all healthy
    process = daemon(
        write(
            tmp_path / "c.yaml",
            namespace,
            "panic",
            [static(D, E, port=port)],
            health_check=FAST_PROBES,
        )
    )
    wait_for(lambda: slices_of(admin, namespace, "panic"), "slices")
    time.sleep(1.5)  # several probe rounds
    assert readiness(slices_of(admin, namespace, "panic")) == {(D, port): True, (E, port): True}
    assert "PANIC: probes fail 2 of 2 backends" in process.log_path.read_text()


def test_every_tier_down_keeps_the_last_state(
    daemon, consul, bind, admin, apiserver, namespace, tmp_path
):
    service = f"tiers-{namespace}"
    consul.register(f"{service}-1", service, "203.0.113.1", 8080)
    bind.update(("add", f"tier.{namespace}", 2, "A", "203.0.113.2"))
    dns = {
        "type": "dns",
        "name": f"tier.{namespace}.example.test",
        "port": 8080,
        "nameservers": [bind.nameserver],
        "min_ttl": 1,
        "timeout": 1,
    }
    config = write_config(
        tmp_path / "c.yaml",
        target_with(namespace, "tiers", {"type": "consul", "service": service}, dns),
        consul={"address": consul.address},
    )
    process = daemon(config)
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, "tiers")) == {("203.0.113.1", 8080)},
        "tier 0",
    )
    bind.update(("delete", f"tier.{namespace}"))  # the fallback goes first: no switch
    time.sleep(3)  # its TTL (2 s) runs out and syncd sees it gone
    consul.set_status(f"{service}-1", "critical")
    wait_for(
        lambda: "PROTECTED: no tier has 1 ready backends" in process.log_path.read_text(),
        "protection report (every source answered: not stale)",
        timeout=5,
    )
    assert "STALE" not in process.log_path.read_text()
    mark = apiserver.audit.mark()
    time.sleep(1)
    assert apiserver.audit.writes_since(mark) == []
    assert endpoint_pairs(slices_of(admin, namespace, "tiers")) == {("203.0.113.1", 8080)}


def test_a_75_percent_removal_is_held_until_confirmed(daemon, bind, admin, namespace, tmp_path):
    name = f"guard.{namespace}"
    bind.update(*[("add", name, 1, "A", f"203.0.113.{n}") for n in range(1, 5)])
    dns = {
        "type": "dns",
        "name": f"{name}.example.test",
        "port": 8080,
        "nameservers": [bind.nameserver],
        "min_ttl": 0.5,
        "timeout": 1,
    }
    guards = {"max_removal_fraction": 0.5, "confirm_after": 3}
    config = write_config(tmp_path / "c.yaml", target_with(namespace, "guard", dns, guards=guards))
    process = daemon(config)
    wait_for(lambda: len(endpoint_pairs(slices_of(admin, namespace, "guard"))) == 4, "4")

    # One atomic update removes three of the four records (75%).
    bind.update(*[("delete", name, "A", f"203.0.113.{n}") for n in range(2, 5)])
    wait_for(lambda: "would remove 3 of 4 backends" in process.log_path.read_text(), "hold")
    held_at = time.monotonic()
    time.sleep(1.5)
    assert len(endpoint_pairs(slices_of(admin, namespace, "guard"))) == 4  # still held
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, "guard")) == {("203.0.113.1", 8080)},
        "confirmed removal",
        timeout=5,
    )
    assert time.monotonic() - held_at >= 2.5


def test_denied_registry_addresses_are_dropped(run_syncd, consul, admin, namespace, tmp_path):
    service = f"deny-{namespace}"
    consul.register(f"{service}-ok", service, "203.0.113.7", 8080)
    consul.register(f"{service}-metadata", service, "169.254.169.254", 80)
    consul.register(f"{service}-this-net", service, "0.1.2.3", 8080)
    consul.register(f"{service}-svc-cidr", service, "10.96.0.10", 8080)
    consul.register(f"{service}-elsewhere", service, "198.51.100.200", 8080)
    config = write_config(
        tmp_path / "c.yaml",
        target_with(
            namespace,
            "deny",
            {"type": "consul", "service": service},
            allowed_cidrs=["203.0.113.0/24", "10.0.0.0/8"],
        ),
        consul={"address": consul.address},
        address_policy={"service_cidr": "10.96.0.0/12"},
    )
    result = run_syncd(config)
    assert endpoint_pairs(slices_of(admin, namespace, "deny")) == {("203.0.113.7", 8080)}
    assert "'169.254.169.254' is a link-local address" in result.stderr
    assert "0.1.2.3 in the denied range 0.0.0.0/8" in result.stderr
    assert "10.96.0.10 in the denied range 10.96.0.0/12" in result.stderr
    assert "198.51.100.200 outside the target's allowed_cidrs" in result.stderr


def test_a_prepared_query_is_a_tier_and_once_prints_the_failover(
    run_syncd, consul, admin, namespace, tmp_path
):
    primary, secondary = f"dc1-{namespace}", f"dc2-{namespace}"
    consul.register(f"{primary}-1", primary, "203.0.113.21", 8080, status="critical")
    consul.register(f"{secondary}-1", secondary, "203.0.113.22", 8080)
    consul.request(
        "POST", "/v1/query", {"Name": f"q-{namespace}", "Service": {"Service": secondary}}
    )
    tiers = (
        {"type": "consul", "service": primary},
        {"type": "consul_query", "query": f"q-{namespace}"},
    )
    config = write_config(
        tmp_path / "c.yaml",
        target_with(namespace, "pq", *tiers),
        consul={"address": consul.address},
    )
    run_syncd(config)
    assert endpoint_pairs(slices_of(admin, namespace, "pq")) == {("203.0.113.22", 8080)}
    service = admin.get("Service", namespace, "pq")
    assert service["metadata"]["annotations"]["syncd.io/active-tier"] == "1"
    assert "served by dc1" in service["metadata"]["annotations"]["syncd.io/active-source"]

    consul.set_status(f"{primary}-1", "passing")
    result = run_syncd(config)
    assert "failback from tier 1 to tier 0" in result.stderr
    assert endpoint_pairs(slices_of(admin, namespace, "pq")) == {("203.0.113.21", 8080)}
