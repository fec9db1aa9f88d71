"""Faults the network makes, between the daemon and its real servers, through Toxiproxy.

Each test: converged; a fault injected; a Consul registration during it; healed; converged
again. Throughout, the world's watcher (harness/faults.py) checks that no slice holds an
endpoint Consul never listed, that no Service is emptied, that the daemon lives and that
/readyz answers. Timings are the benchmark's (bench/faults.py); the waits here are generous.
"""

from __future__ import annotations

import time

import pytest
import yaml

from harness.faults import FaultWorld, fault_world
from harness.helpers import endpoint_pairs, slices_of, wait_for, write_config
from harness.kube_apiserver import stop_process
from harness.syncd_process import start_syncd

pytestmark = pytest.mark.apiserver

STALL = 40.0  # seconds, as the outside test did
RESET = 20.0
DELAY = 30.0
LEADER_ELECT = ("--leader-elect", "--lease-namespace", "syncd")


@pytest.fixture
def world(apiserver, consul, toxiproxy, admin, namespace, tmp_path):
    with fault_world(apiserver, consul, toxiproxy, admin, namespace, tmp_path) as started:
        yield started
    assert "Traceback" not in started.log.read_text()


def _clean(world: FaultWorld, result) -> None:
    print(result)  # shown with -s or on failure
    assert not result.violations, result.violations
    assert world.converged()


def test_an_api_stall_that_never_closes_is_detected_and_converges_after_healing(world):
    """Bytes blackholed both ways, no RST, no close: watches and writes must not hang on
    the dead connections past their deadlines."""
    proxy = world.api_proxy
    timeouts = world.api_failures("timeout")
    result = world.run_fault(
        "api stall",
        proxy,
        proxy.stall,
        STALL,
        detected=lambda: world.api_failures("timeout") > timeouts,
    )
    _clean(world, result)
    assert result.detected is not None, "a write hung through a 40 s stall (no deadline)"


def test_api_connections_reset_for_a_while(world):
    proxy = world.api_proxy
    result = world.run_fault("api reset", proxy, proxy.reset, RESET)
    _clean(world, result)


def test_two_seconds_of_api_latency_each_way(world):
    proxy = world.api_proxy
    result = world.run_fault("api latency", proxy, lambda: proxy.delay(2.0), DELAY)
    _clean(world, result)


def test_a_consul_stall_marks_the_targets_stale_keeps_them_and_catches_up_without_a_storm(
    world,
):
    proxy = world.consul_proxy
    result = world.run_fault(
        "consul stall", proxy, proxy.stall, STALL, detected=lambda: world.stale_targets() > 0
    )
    _clean(world, result)
    assert result.detected is not None, "no target was marked stale during a 40 s stall"
    assert result.consul_requests <= 4 * len(world.services), result


def test_consul_connections_reset_for_a_while(world):
    proxy = world.consul_proxy
    result = world.run_fault(
        "consul reset", proxy, proxy.reset, RESET, detected=lambda: world.stale_targets() > 0
    )
    _clean(world, result)
    assert result.detected is not None, "no target was marked stale while Consul reset"
    assert result.consul_requests <= 4 * len(world.services), result


def test_the_api_server_restarted_while_a_change_is_queued(world):
    """The process stopped (connections refused), a registration meanwhile, started
    again on the same port: the queued change is applied, nothing else is written."""
    server = world.apiserver
    mark = server.audit.mark()
    server.stop_apiserver()
    try:
        world.register(world.services[0])
        time.sleep(10)  # the daemon tries, fails, backs off (the API is down)
    finally:
        server.start_apiserver()
    world.wait_converged(60)
    time.sleep(3)  # anything more it would write
    writes = [e for e in server.audit.writes_since(mark) if e.resource == "endpointslices"]
    assert len(writes) == 1, writes
    assert not world.violations, world.violations


def _static_target(namespace: str, backends) -> dict:
    return {
        "namespace": namespace,
        "service": "ha",
        "ports": [{"name": "http", "port": 80}],
        "sources": [{"type": "static", "file": str(backends)}],
        "guards": {"max_removal_fraction": 1},
    }


def test_a_leader_whose_api_connection_stalls_stops_writing_and_the_standby_takes_over(
    apiserver, admin, namespace, toxiproxy, tmp_path
):
    """Fencing: the holder cannot renew through a stalled connection, so it stops
    writing (renew deadline 10 s) before the Lease may be taken (15 s); the standby takes
    over; after healing the old leader stands by and writes nothing."""
    backends = tmp_path / "b.yaml"
    backends.write_text(yaml.safe_dump(["198.51.100.1:8080"]))
    config = write_config(tmp_path / "c.yaml", _static_target(namespace, backends))
    proxy = toxiproxy.proxy(f"127.0.0.1:{apiserver.port}")
    common = ("--owner-id", namespace, "--log-level", "info", *LEADER_ELECT)
    leader_log, standby_log = tmp_path / "leader.log", tmp_path / "standby.log"
    leader = start_syncd(config, apiserver.syncd_kubeconfig_via(proxy.listen), leader_log, *common)
    standby = None
    try:
        wait_for(lambda: "became the leader" in leader_log.read_text(), "a leader", timeout=60)
        standby = start_syncd(config, apiserver.syncd_kubeconfig, standby_log, *common)
        wait_for(lambda: "standing by until" in standby_log.read_text(), "a standby", timeout=60)
        wait_for(lambda: slices_of(admin, namespace, "ha"), "the slice", timeout=60)
        old = _identity(leader_log)
        mark = apiserver.audit.mark()
        with proxy.fault("stall"):
            backends.write_text(yaml.safe_dump(["198.51.100.7:8080"]))
            wait_for(
                lambda: (
                    endpoint_pairs(slices_of(admin, namespace, "ha")) == {("198.51.100.7", 8080)}
                ),
                "the standby taking over",
                timeout=STALL,
            )
            time.sleep(max(0.0, STALL - 30))
        backends.write_text(yaml.safe_dump(["198.51.100.6:8080"]))  # seen by both, healed
        wait_for(
            lambda: endpoint_pairs(slices_of(admin, namespace, "ha")) == {("198.51.100.6", 8080)},
            "the new leader applying it",
            timeout=60,
        )
        time.sleep(5)
        writers = {  # a Lease renewal refused with 409 is the old leader learning it lost
            e.user_agent
            for e in apiserver.audit.writes_since(mark)
            if e.resource != "leases" or e.code < 300
        }
        assert not any(old in agent for agent in writers), writers
        assert "lost the lease" in leader_log.read_text()
        assert leader.poll() is None and standby.poll() is None
    finally:
        stop_process(leader)
        stop_process(standby)
    assert "Traceback" not in leader_log.read_text() + standby_log.read_text()


def _identity(log) -> str:
    for line in log.read_text().splitlines():
        if "leader election on lease" in line:
            return line.rsplit(" as ", 1)[1]
    raise AssertionError("no replica identity in the log")
