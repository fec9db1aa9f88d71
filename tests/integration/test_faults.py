"""Faults the network makes, between the daemon and its real servers, through Toxiproxy.

Each test: converged; a fault injected; a Consul registration during it; healed; converged
again. Throughout, the world's watcher (harness/faults.py) checks that no slice holds an
endpoint Consul never listed, that no Service is emptied, that the daemon lives and that
/readyz answers. Timings are the benchmark's (bench/faults.py); the waits here are generous.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import dns.flags
import dns.message
import dns.query
import pytest
import yaml
from kubernetes import client as k8s

from harness.faults import FaultWorld, fault_world
from harness.helpers import (
    endpoint_pairs,
    sample,
    scrape,
    slices_of,
    target_with,
    wait_for,
    write_config,
)
from harness.kube_apiserver import KubeApiServer, free_port, stop_process
from harness.syncd_process import start_syncd
from syncd.kube import WATCH_NO_PROGRESS, Kube, KubeSettings
from tests.conftest import _started

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


@pytest.fixture(params=["http", "https"])
def consul_world(request, apiserver, toxiproxy, admin, namespace, tmp_path):
    """The world over plain HTTP, and over HTTPS where syncd speaks HTTP/2 (its own TLS,
    streams and request deadlines on the pool's loop: consul_h2)."""
    agent = request.getfixturevalue("consul" if request.param == "http" else "consul_tls")
    with fault_world(apiserver, agent, toxiproxy, admin, namespace, tmp_path) as started:
        yield started
    log = started.log.read_text()
    assert "Traceback" not in log
    if request.param == "https":
        assert "speaks HTTP/2" in log, "the world was meant to reach Consul over HTTP/2"


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
        proxy.stall,
        proxy.heal,
        STALL,
        detected=lambda: world.api_failures("timeout") > timeouts,
    )
    _clean(world, result)
    assert result.detected is not None, "a write hung through a 40 s stall (no deadline)"


def test_api_connections_reset_for_a_while(world):
    proxy = world.api_proxy
    result = world.run_fault("api reset", proxy.reset, proxy.heal, RESET)
    _clean(world, result)


def test_two_seconds_of_api_latency_each_way(world):
    proxy = world.api_proxy
    result = world.run_fault("api latency", lambda: proxy.delay(2.0), proxy.heal, DELAY)
    _clean(world, result)


def test_a_consul_stall_marks_the_targets_stale_keeps_them_and_catches_up_without_a_storm(
    consul_world,
):
    world = consul_world
    proxy = world.consul_proxy
    result = world.run_fault(
        "consul stall", proxy.stall, proxy.heal, STALL, detected=lambda: world.stale_targets() > 0
    )
    _clean(world, result)
    assert result.detected is not None, "no target was marked stale during a 40 s stall"
    reasons = {e.get("reason") for e in world.admin.list("Event", world.namespace, "")}
    assert "SourcesUnavailable" in reasons, reasons
    assert result.consul_requests <= 4 * len(world.services), result


def test_consul_connections_reset_for_a_while(consul_world):
    world = consul_world
    proxy = world.consul_proxy
    result = world.run_fault(
        "consul reset", proxy.reset, proxy.heal, RESET, detected=lambda: world.stale_targets() > 0
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
    writes = [
        e for e in server.audit.writes_since(mark) if e.resource == "endpointslices"
    ]  # a write a starting server refuses (403 until its authorizer is ready) is retried
    assert len([e for e in writes if e.code < 300]) == 1, writes
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


@pytest.fixture(scope="module")
def uncached_apiserver(tmp_path_factory):
    """A kube-apiserver of this module's own that serves watches from etcd (its watch
    cache off), so an etcd compaction expires a watch's resourceVersion as it would a
    long-disconnected client's: 410 Gone."""
    server = _started(
        KubeApiServer(
            tmp_path_factory.mktemp("uncached-apiserver"), extra_args=("--watch-cache=false",)
        ),
        "kube-apiserver",
    )
    server.apply_deploy_rbac()
    yield server
    server.stop()


def test_a_watch_expired_by_compaction_lists_again_and_writes_nothing(
    uncached_apiserver, consul, toxiproxy, tmp_path
):
    server = uncached_apiserver
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    admin = Kube.connect(KubeSettings(kubeconfig=str(server.admin_kubeconfig)))
    core = k8s.CoreV1Api(server.admin_client())
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        with fault_world(server, consul, toxiproxy, admin, namespace, tmp_path) as world:
            mark = server.audit.mark()
            world.api_proxy.set_enabled(False)  # the watches end; new ones are refused
            for n in range(20):  # history moves on while syncd is away ...
                core.create_namespaced_config_map(namespace, {"metadata": {"name": f"c{n}"}})
            server.compact_etcd()  # ... and is compacted: its resourceVersions expire
            world.api_proxy.set_enabled(True)
            wait_for(
                lambda: "listing again" in world.log.read_text(), "a 410 and a relist", timeout=60
            )
            world.wait_converged(60)
            time.sleep(3)  # anything it would write
            assert server.audit.writes_since(mark) == []
            assert not world.violations, world.violations
        assert "410" in world.log.read_text()
    finally:
        admin.close()
        core.api_client.close()


# -- DNS: the real BIND, frozen, failing its zone, and answering more than UDP carries


def _dns_daemon(daemon, bind, namespace, tmp_path, name: str):
    source = {
        "type": "dns",
        "nameservers": [bind.nameserver],
        "name": name,
        "port": 8080,
        "timeout": 1,
        "min_ttl": 1,
        "max_ttl": 2,
    }
    config = write_config(tmp_path / "dns.yaml", target_with(namespace, "gw", source))
    metrics = f"127.0.0.1:{free_port()}"
    daemon(config, "--metrics-address", metrics)
    return metrics


def _gw(admin, namespace) -> set[tuple[str, int]]:
    return endpoint_pairs(slices_of(admin, namespace, "gw"))


def _stale(metrics: str) -> float:
    return sample(scrape(metrics), "syncd_target_stale")


def test_a_frozen_dns_server_makes_the_target_stale_and_it_catches_up(
    daemon, bind_private, admin, namespace, tmp_path
):
    """named stopped with SIGSTOP: every lookup times out, nothing answers or refuses."""
    name = f"gw.{namespace}.example.test."
    bind_private.update(("add", name, 1, "A", "192.0.2.31"), ("add", name, 1, "A", "192.0.2.32"))
    metrics = _dns_daemon(daemon, bind_private, namespace, tmp_path, name)
    both = {("192.0.2.31", 8080), ("192.0.2.32", 8080)}
    wait_for(lambda: _gw(admin, namespace) == both, "both addresses", timeout=60)
    os.kill(bind_private.process.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _stale(metrics) == 1, "the target stale", timeout=30)
        assert _gw(admin, namespace) == both  # kept, not emptied
    finally:
        os.kill(bind_private.process.pid, signal.SIGCONT)
    bind_private.update(("add", name, 1, "A", "192.0.2.33"))
    wait_for(lambda: ("192.0.2.33", 8080) in _gw(admin, namespace), "the change", timeout=60)
    wait_for(lambda: _stale(metrics) == 0, "not stale any more", timeout=30)


def test_a_zone_answering_servfail_keeps_what_is_applied(
    daemon, bind_private, admin, namespace, tmp_path
):
    """named restarted with a zone it cannot load: SERVFAIL for every name in it."""
    name = f"gw.{namespace}.example.test."
    records = f"gw.{namespace} 1 IN A 192.0.2.41\n"
    bind_private.restart_with_zone(records)
    metrics = _dns_daemon(daemon, bind_private, namespace, tmp_path, name)
    wait_for(lambda: _gw(admin, namespace) == {("192.0.2.41", 8080)}, "applied", timeout=60)
    bind_private.restart_with_zone(records, valid=False)
    wait_for(lambda: _stale(metrics) == 1, "the target stale", timeout=30)
    assert _gw(admin, namespace) == {("192.0.2.41", 8080)}
    bind_private.restart_with_zone(records + f"gw.{namespace} 1 IN A 192.0.2.42\n")
    wait_for(lambda: len(_gw(admin, namespace)) == 2, "the healed zone's answer", timeout=60)
    wait_for(lambda: _stale(metrics) == 0, "not stale any more", timeout=30)


def test_an_answer_too_big_for_udp_is_read_over_tcp(run_syncd, bind, admin, namespace, tmp_path):
    """90 addresses (BIND keeps at most 100 records of a type): about 1.5 KB, more than
    BIND sends over UDP (1,232 bytes with EDNS): the answer comes truncated, and the
    lookup is made again over TCP."""
    name = f"many.{namespace}.example.test."
    addresses = [f"192.0.2.{n}" for n in range(1, 91)]
    bind.update(*(("add", name, 60, "A", address) for address in addresses))
    response = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=bind.port)
    assert response.flags & dns.flags.TC  # the premise: UDP alone would not do
    source = {"type": "dns", "nameservers": [bind.nameserver], "name": name, "port": 8080}
    run_syncd(write_config(tmp_path / "c.yaml", target_with(namespace, "many", source)))
    assert endpoint_pairs(slices_of(admin, namespace, "many")) == {
        (address, 8080) for address in addresses
    }


def test_a_watch_on_a_stalled_connection_is_given_up_after_its_no_progress_deadline(
    apiserver, consul, toxiproxy, admin, namespace, tmp_path
):
    """No write to time out, only watches on a connection that went silent: they must
    not wait for the server's own end of the watch (minutes). After WATCH_NO_PROGRESS
    without a byte (not even the bookmark the server sends every minute) each is asked
    again, which fails on the stalled path: the cache says it cannot watch (/readyz 503)
    while the stall lasts."""
    world = FaultWorld(apiserver, consul, toxiproxy, admin, namespace, tmp_path)
    try:
        world.start("--request-timeout", "5")
        world.api_proxy.stall()
        stalled = time.monotonic()
        wait_for(
            lambda: world.ready_status() == 503,
            "/readyz saying the cluster cannot be watched",
            timeout=WATCH_NO_PROGRESS + 30,
        )
        assert time.monotonic() - stalled > 30  # the deadline, not an error, noticed it
        world.api_proxy.heal()
        wait_for(lambda: world.ready_status() == 200, "ready again", timeout=60)
        world.register(world.services[0])
        world.wait_converged(60)
        assert not world.violations, world.violations
    finally:
        world.stop()
    assert "Traceback" not in world.log.read_text()
