"""`syncd run` as a daemon against a real Consul agent and a real kube-apiserver."""

from __future__ import annotations

import signal
import time

import pytest

from harness.helpers import (
    endpoint_pairs,
    only_stale_events,
    readiness,
    slices_of,
    target_with,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.apiserver


def consul_config(path, agent, namespace, service, guards=None, **source):
    source = {"type": "consul", "service": service, **source}
    extra = {"guards": guards} if guards else {}
    return write_config(
        path, target_with(namespace, service, source, **extra), consul={"address": agent.address}
    )


def test_check_flips_reach_the_slice_within_a_second(daemon, consul, admin, namespace, tmp_path):
    service = f"flip-{namespace}"
    consul.register(f"{service}-1", service, "192.0.2.1", 8080)
    consul.register(f"{service}-2", service, "192.0.2.2", 8080)
    daemon(consul_config(tmp_path / "c.yaml", consul, namespace, service))
    wait_for(lambda: len(endpoint_pairs(slices_of(admin, namespace, service))) == 2, "2 slices")

    for status, ready in (("critical", False), ("passing", True)):
        consul.set_status(f"{service}-2", status)
        wait_for(
            lambda r=ready: (
                readiness(slices_of(admin, namespace, service)).get(("192.0.2.2", 8080)) is r
            ),
            f"192.0.2.2 ready={ready}",
            timeout=10.0,  # milliseconds normally; correctness here, timings in bench/
        )

    consul.register(f"{service}-3", service, "192.0.2.3", 8080)
    wait_for(
        lambda: ("192.0.2.3", 8080) in endpoint_pairs(slices_of(admin, namespace, service)),
        "a new instance",
        timeout=10.0,
    )
    consul.deregister(f"{service}-1")
    wait_for(
        lambda: ("192.0.2.1", 8080) not in endpoint_pairs(slices_of(admin, namespace, service)),
        "a removed instance",
        timeout=10.0,
    )


def test_consul_outage_loses_nothing_and_converges_after_restart(
    daemon, consul_persistent, admin, apiserver, namespace, tmp_path
):
    agent = consul_persistent
    service = f"outage-{namespace}"
    for n in range(1, 4):
        agent.register(f"{service}-{n}", service, f"192.0.2.{n}", 8080)
    process = daemon(consul_config(tmp_path / "c.yaml", agent, namespace, service))
    wait_for(lambda: len(endpoint_pairs(slices_of(admin, namespace, service))) == 3, "3 ready")
    before = slices_of(admin, namespace, service)

    agent.stop()
    mark = apiserver.audit.mark()
    time.sleep(4)  # several failed queries and retries
    assert only_stale_events(apiserver.audit.writes_since(mark))  # no object written
    assert slices_of(admin, namespace, service) == before  # nothing lost meanwhile
    assert "keeping the last state" in process.log_path.read_text()

    agent.start()  # its TTL checks come back critical: drain protection keeps all 3 ready
    wait_for(lambda: "drain protection" in process.log_path.read_text(), "protection")
    agent.set_status(f"{service}-1", "passing")
    agent.set_status(f"{service}-2", "passing")
    agent.set_status(f"{service}-3", "critical")
    wait_for(
        lambda: readiness(slices_of(admin, namespace, service)).get(("192.0.2.3", 8080)) is False,
        "the change made after the restart",
        timeout=15,
    )
    assert len(endpoint_pairs(slices_of(admin, namespace, service))) == 3


def test_a_slice_deleted_or_edited_by_hand_is_put_back(daemon, consul, admin, namespace, tmp_path):
    service = f"repair-{namespace}"
    consul.register(f"{service}-1", service, "192.0.2.1", 8080)
    daemon(consul_config(tmp_path / "c.yaml", consul, namespace, service))
    (original,) = wait_for(lambda: slices_of(admin, namespace, service), "the slice")
    name = original["metadata"]["name"]

    admin.delete("EndpointSlice", namespace, name)
    restored = wait_for(
        lambda: admin.get("EndpointSlice", namespace, name), "restored slice", timeout=1.0
    )
    assert endpoint_pairs([restored]) == {("192.0.2.1", 8080)}

    edited = dict(restored, endpoints=[{"addresses": ["203.0.113.66"]}])
    admin.replace(edited)
    wait_for(
        lambda: (
            endpoint_pairs([admin.get("EndpointSlice", namespace, name)]) == {("192.0.2.1", 8080)}
        ),
        "edit undone",
        timeout=10.0,
    )


def test_sighup_applies_a_valid_new_config_and_rejects_a_bad_one(
    daemon, consul, admin, namespace, tmp_path
):
    first, second = f"one-{namespace}", f"two-{namespace}"
    consul.register(f"{first}-1", first, "192.0.2.1", 8080)
    consul.register(f"{second}-1", second, "192.0.2.2", 8080)
    config = consul_config(tmp_path / "c.yaml", consul, namespace, first)
    process = daemon(config)
    wait_for(lambda: slices_of(admin, namespace, first), "first target")

    config.write_text(config.read_text().replace("port: 80", "port: 0"))  # invalid
    process.send_signal(signal.SIGHUP)
    wait_for(lambda: "new config rejected" in process.log_path.read_text(), "rejection")
    assert "ports[0].port: port 0 is out of range" in process.log_path.read_text()
    assert slices_of(admin, namespace, first)

    consul_config(config, consul, namespace, second)  # first removed, second added
    process.send_signal(signal.SIGHUP)
    wait_for(lambda: slices_of(admin, namespace, second), "second target")
    wait_for(lambda: not slices_of(admin, namespace, first), "first target pruned")
    assert process.poll() is None


def test_an_index_that_goes_backwards_is_followed_from_zero(
    daemon, consul_dev, admin, namespace, tmp_path
):
    agent = consul_dev
    service = f"reset-{namespace}"
    for n in range(1, 30):  # push the Raft index well above where a fresh agent starts
        agent.register(f"{service}-{n}", service, f"192.0.2.{n}", 8080)
    process = daemon(consul_config(tmp_path / "c.yaml", agent, namespace, service))
    wait_for(lambda: len(endpoint_pairs(slices_of(admin, namespace, service))) == 29, "29")

    agent.restart()  # in memory: the catalog and its index start over
    agent.register(f"{service}-new", service, "198.51.100.7", 8080)
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, service)) == {("198.51.100.7", 8080)},
        "the state after the reset",
        timeout=15,
    )
    # Without starting over after the failure, the watcher would hold a query with the old,
    # higher index for the whole wait (5 minutes) and miss this.
    assert process.poll() is None


def test_editing_the_config_file_alone_reloads_it(daemon, consul, admin, namespace, tmp_path):
    service = f"edit-{namespace}"
    consul.register(f"{service}-1", service, "192.0.2.1", 8080, tags=("a",))
    consul.register(f"{service}-2", service, "192.0.2.2", 8080, tags=("b",))
    # Swapping every backend would be held by the removal guard; let it through here.
    lenient = {"max_removal_fraction": 1}
    config = consul_config(
        tmp_path / "c.yaml", consul, namespace, service, guards=lenient, tags=["a"]
    )
    daemon(config)
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, service)) == {("192.0.2.1", 8080)},
        "tag a",
    )
    consul_config(config, consul, namespace, service, guards=lenient, tags=["b"])
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, service)) == {("192.0.2.2", 8080)},
        "tag b after the edit",
        timeout=5,
    )
