"""Consul beyond the connection budget: services followed by the change feeds, on real servers.

The agent keeps its default limits (200 connections per client IP); syncd's budget is made
small here so that a handful of services already needs the feeds.
"""

from __future__ import annotations

import time

import pytest

from harness.helpers import (
    connections_to,
    endpoint_pairs,
    readiness,
    sample,
    scrape,
    slices_of,
    target_with,
    wait_for,
    write_config,
)
from harness.kube_apiserver import free_port

pytestmark = pytest.mark.apiserver


def consul_targets(namespace: str, services: list[str]) -> list[dict]:
    return [
        target_with(namespace, service, {"type": "consul", "service": service})
        for service in services
    ]


def test_a_feed_followed_service_follows_flips_registrations_moves_and_removals(
    daemon, consul, admin, namespace, tmp_path
):
    # max_connections 6: one shared reader, four feeds, one watch; the last two services
    # have no watch of their own.
    services = [f"feed{n}-{namespace}" for n in range(3)]
    for service in services:
        consul.register(f"{service}-1", service, "192.0.2.1", 8080)
        consul.register(f"{service}-2", service, "192.0.2.2", 8080)
    metrics = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "c.yaml",
        *consul_targets(namespace, services),
        consul={"address": consul.address, "max_connections": 6},
    )
    process = daemon(config, "--metrics-address", metrics)
    service = services[-1]
    for each in services:
        wait_for(lambda s=each: len(endpoint_pairs(slices_of(admin, namespace, s))) == 2, each)
    text = scrape(metrics)
    assert sample(text, "syncd_consul_services", mode="feed") == 2
    assert sample(text, "syncd_consul_services", mode="watch") == 1
    assert connections_to(process.pid, int(consul.address.rsplit(":", 1)[1])) <= 6

    def ready_of(address: str):
        return readiness(slices_of(admin, namespace, service)).get((address, 8080))

    for status, ready in (("critical", False), ("passing", True), ("warning", True)):
        consul.set_status(f"{service}-2", status)
        wait_for(lambda r=ready: ready_of("192.0.2.2") is r, f"ready={ready}", timeout=10.0)

    consul.register(f"{service}-3", service, "192.0.2.3", 8080)  # passing from the start
    wait_for(lambda: ready_of("192.0.2.3") is True, "a new instance", timeout=10.0)
    consul.register(f"{service}-3", service, "192.0.2.4", 8080)  # the same instance moves
    wait_for(
        lambda: ready_of("192.0.2.4") is True and ready_of("192.0.2.3") is None,
        "a moved instance",
        timeout=10.0,
    )
    consul.deregister(f"{service}-1")
    wait_for(lambda: ready_of("192.0.2.1") is None, "a removed instance", timeout=10.0)
    consul.set_status(f"{service}-2", "critical")
    consul.deregister(f"{service}-2")  # critical, then gone: never made ready again
    wait_for(lambda: ready_of("192.0.2.2") is None, "a critical instance removed", timeout=10.0)
    assert sample(scrape(metrics), "syncd_consul_reads_total", reason="confirm") >= 1
    assert connections_to(process.pid, int(consul.address.rsplit(":", 1)[1])) <= 6


def test_identical_sources_of_several_targets_share_one_query(
    daemon, consul, admin, namespace, tmp_path
):
    service = f"shared-{namespace}"
    consul.register(f"{service}-1", service, "192.0.2.1", 8080)
    consul.register(f"{service}-2", service, "192.0.2.2", 8080)
    metrics = f"127.0.0.1:{free_port()}"
    targets = [
        target_with(namespace, f"copy{n}", {"type": "consul", "service": service}) for n in range(3)
    ]
    config = write_config(tmp_path / "c.yaml", *targets, consul={"address": consul.address})
    daemon(config, "--metrics-address", metrics)
    for n in range(3):
        wait_for(lambda n=n: endpoint_pairs(slices_of(admin, namespace, f"copy{n}")), f"copy{n}")
    assert sample(scrape(metrics), "syncd_consul_services", mode="watch") == 1
    consul.set_status(f"{service}-1", "critical")
    for n in range(3):
        wait_for(
            lambda n=n: (
                readiness(slices_of(admin, namespace, f"copy{n}"))
                == {("192.0.2.1", 8080): False, ("192.0.2.2", 8080): True}
            ),
            f"copy{n} follows",
            timeout=10.0,
        )


def test_a_big_service_is_patched_from_the_feed_one_slice_write_per_flip(
    daemon, consul, admin, apiserver, namespace, tmp_path
):
    service = f"big-{namespace}"
    for n in range(300):  # > BIG_SERVICE: its watch hands it to the feeds
        consul.register(f"{service}-{n}", service, f"198.18.{n // 250}.{n % 250 + 1}", 8080)
    metrics = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "c.yaml",
        *consul_targets(namespace, [service]),
        consul={"address": consul.address},
    )
    daemon(config, "--metrics-address", metrics)
    wait_for(
        lambda: len(endpoint_pairs(slices_of(admin, namespace, service))) == 300,
        "300 endpoints",
        timeout=30,
    )
    wait_for(
        lambda: sample(scrape(metrics), "syncd_consul_services", mode="feed") == 1,
        "the big service on the feeds",
    )
    time.sleep(1)  # let the feeds settle before counting
    reads_before = sample(scrape(metrics), "syncd_consul_reads_total")
    for status, ready in (("critical", False), ("passing", True)):
        mark = apiserver.audit.mark()
        consul.set_status(f"{service}-7", status)
        wait_for(
            lambda r=ready: (
                readiness(slices_of(admin, namespace, service)).get(("198.18.0.8", 8080)) is r
            ),
            f"ready={ready}",
            timeout=10.0,
        )
        time.sleep(0.5)
        writes = [w for w in apiserver.audit.writes_since(mark) if w.resource != "events"]
        assert len(writes) == 1, writes  # one slice of three
    # A critical turn is applied from the feed itself; a recovery costs one small confirm.
    reads = sample(scrape(metrics), "syncd_consul_reads_total") - reads_before
    assert reads == 1, reads


def external_instances(services: list[str], per_service: int) -> list[tuple[str, str, str, int]]:
    """(id, service, address, port) for every instance; addresses unique, in 198.18.0.0/15."""
    instances = []
    for number, service in enumerate(services):
        for k in range(per_service):
            n = number * per_service + k
            instances.append((f"{service}-{k}", service, f"198.18.{n // 250}.{n % 250 + 1}", 8080))
    return instances


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def test_400_targets_converge_within_the_default_connection_limit(
    daemon, consul, admin, namespace, tmp_path
):
    """One blocking query per target used to stop at 200 (Consul's default limit)."""
    services = [f"s{n}-{namespace}" for n in range(400)]
    consul.register_external(external_instances(services, 3), node=f"ext-{namespace}")
    metrics = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "c.yaml",
        *consul_targets(namespace, services),
        consul={"address": consul.address},
    )
    process = daemon(config, "--metrics-address", metrics, "--kube-qps", "0")
    port = int(consul.address.rsplit(":", 1)[1])
    most = 0

    def converged() -> bool:
        nonlocal most
        most = max(most, connections_to(process.pid, port))
        text = scrape(metrics)
        return sample(text, "syncd_target_backends", ready="true") == 1200

    wait_for(converged, "400 targets with 3 ready backends each", timeout=120, interval=0.5)
    assert len(admin.list("EndpointSlice", namespace)) == 400
    text = scrape(metrics)
    assert sample(text, "syncd_consul_services", mode="watch") == 24  # 32 - 4 readers - 4 feeds
    assert sample(text, "syncd_consul_services", mode="feed") == 376
    assert sample(text, "syncd_source_requests_total", result="throttled") == 0
    assert most <= 32 and connections_to(process.pid, port) <= 32
    # Consul 32, the probe pool 32, the scheduler 9, workers 4, caches, metrics: not per target
    assert thread_count(process.pid) < 100

    last = services[-1]  # followed by the feeds
    consul.set_external_status(f"{last}-1", "critical", node=f"ext-{namespace}")
    wait_for(
        lambda: (
            sum(not ready for ready in readiness(slices_of(admin, namespace, last)).values()) == 1
        ),
        "the flip on a feed-followed service",
        timeout=10.0,
    )


def test_throttled_by_consul_backs_off_reports_stale_and_recovers(
    daemon, consul_tight, admin, namespace, tmp_path
):
    """Consul allows 8 connections; syncd's budget (32) is set too high: it backs off,
    says which targets are stale, and converges once its budget fits (a reload)."""
    services = [f"t{n}" for n in range(30)]
    consul_tight.register_external(external_instances(services, 2))
    metrics = f"127.0.0.1:{free_port()}"
    path = tmp_path / "c.yaml"
    targets = consul_targets(namespace, services)
    write_config(path, *targets, consul={"address": consul_tight.address})
    process = daemon(path, "--metrics-address", metrics, "--kube-qps", "0")
    wait_for(
        lambda: sample(scrape(metrics), "syncd_source_requests_total", result="throttled") > 0,
        "429 answers from Consul",
        timeout=20,
    )
    first = sample(scrape(metrics), "syncd_source_requests_total", result="throttled")
    time.sleep(10)
    text = scrape(metrics)  # /metrics answers throughout
    rate = (sample(text, "syncd_source_requests_total", result="throttled") - first) / 10
    assert rate < 40, f"{rate:.0f} refused requests per second: a hot loop"
    log = process.log_path.read_text()
    assert "429" in log and "stale" in log

    write_config(path, *targets, consul={"address": consul_tight.address, "max_connections": 6})
    wait_for(
        lambda: (
            sample(scrape(metrics), "syncd_target_backends", ready="true") == 60
            and sample(scrape(metrics), "syncd_target_stale") == 0
        ),
        "every target synced and none stale",
        timeout=60,
        interval=0.5,
    )
    port = int(consul_tight.address.rsplit(":", 1)[1])
    assert connections_to(process.pid, port) <= 6


def feed_followed_web(consul, namespace: str, tmp_path, daemon, admin, **target_extra):
    """Service web: one instance on the agent's node, two on an external node without
    addresses of their own (they use the node's); one target, max_connections 5 (one
    reader, four feeds: no watch at all)."""
    web = f"web-{namespace}"
    node = f"ext-{namespace}"
    consul.register(f"{web}-agent", web, "192.0.2.10", 8080)
    consul.request(
        "PUT",
        "/v1/txn",
        [
            {"Node": {"Verb": "set", "Node": {"Node": node, "Address": "192.0.2.20"}}},
            *(
                {
                    "Service": {
                        "Verb": "set",
                        "Node": node,
                        "Service": {"ID": f"{web}-{n}", "Service": web, "Port": 9000 + n},
                    }
                }
                for n in (1, 2)
            ),
        ],
    )
    config = write_config(
        tmp_path / "c.yaml",
        target_with(namespace, "web", {"type": "consul", "service": web}, **target_extra),
        consul={"address": consul.address, "max_connections": 5},
    )
    metrics = f"127.0.0.1:{free_port()}"
    process = daemon(config, "--metrics-address", metrics)
    wait_for(
        lambda: (
            readiness(slices_of(admin, namespace, "web"))
            == {("192.0.2.10", 8080): True, ("192.0.2.20", 9001): True, ("192.0.2.20", 9002): True}
        ),
        "first sync",
    )
    assert sample(scrape(metrics), "syncd_consul_services", mode="feed") == 1
    return web, node, process, metrics


def test_node_maintenance_reaches_a_feed_followed_service(
    daemon, consul_dev, admin, namespace, tmp_path
):
    feed_followed_web(consul_dev, namespace, tmp_path, daemon, admin)
    consul_dev.request("PUT", "/v1/agent/maintenance?enable=true&reason=drain")
    wait_for(
        lambda: readiness(slices_of(admin, namespace, "web"))[("192.0.2.10", 8080)] is False,
        "maintenance on the agent's node applied",
    )
    consul_dev.request("PUT", "/v1/agent/maintenance?enable=false")
    wait_for(
        lambda: readiness(slices_of(admin, namespace, "web"))[("192.0.2.10", 8080)] is True,
        "maintenance off applied",
    )


def test_a_node_address_change_and_deregistration_reach_a_feed_followed_service(
    daemon, consul_dev, admin, namespace, tmp_path
):
    # The deregistration removes 2 of 3 backends: the removal guard holds it until seen
    # again confirm_after (1 s here) later, then applies it.
    _web, node, _process, _metrics = feed_followed_web(
        consul_dev, namespace, tmp_path, daemon, admin, guards={"confirm_after": 1}
    )
    consul_dev.request(
        "PUT", "/v1/catalog/register", {"Node": node, "Address": "192.0.2.21"}
    )  # its instances move with it
    wait_for(
        lambda: (
            endpoint_pairs(slices_of(admin, namespace, "web"))
            == {("192.0.2.10", 8080), ("192.0.2.21", 9001), ("192.0.2.21", 9002)}
        ),
        "the node's new address applied",
    )
    consul_dev.request("PUT", "/v1/catalog/deregister", {"Node": node})
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, "web")) == {("192.0.2.10", 8080)},
        "the node's instances gone with it",
    )


def test_a_new_critical_node_check_reaches_a_feed_followed_service(
    daemon, consul_dev, admin, namespace, tmp_path
):
    _web, node, _process, _metrics = feed_followed_web(
        consul_dev, namespace, tmp_path, daemon, admin
    )
    check = {"Node": node, "CheckID": "disk", "Name": "disk", "Status": "critical"}
    consul_dev.request("PUT", "/v1/txn", [{"Check": {"Verb": "set", "Check": check}}])
    wait_for(
        lambda: (
            readiness(slices_of(admin, namespace, "web"))
            == {
                ("192.0.2.10", 8080): True,
                ("192.0.2.20", 9001): False,
                ("192.0.2.20", 9002): False,
            }
        ),
        "the node check applied to both instances on the node",
    )


def test_a_check_passing_after_a_move_never_readies_the_old_port(
    daemon, consul_dev, admin, apiserver, namespace, tmp_path
):
    """A critical, B passing; A moves to another port (no feed names it); A passes; B
    fails; A fails: the slice must never show A ready on its old port, and drain
    protection holds A on its new port, with the metric and an Event saying so."""
    web, node, _process, metrics = feed_followed_web(consul_dev, namespace, tmp_path, daemon, admin)
    consul_dev.deregister(f"{web}-agent")
    wait_for(lambda: len(readiness(slices_of(admin, namespace, "web"))) == 2, "two left")

    def set_status(n: int, status: str) -> None:
        check = {
            "Node": node,
            "CheckID": f"check-{n}",
            "Name": "c",
            "Status": status,
            "ServiceID": f"{web}-{n}",
        }
        consul_dev.request("PUT", "/v1/txn", [{"Check": {"Verb": "set", "Check": check}}])

    set_status(1, "critical")
    set_status(2, "passing")
    wait_for(
        lambda: (
            readiness(slices_of(admin, namespace, "web"))
            == {("192.0.2.20", 9001): False, ("192.0.2.20", 9002): True}
        ),
        "A critical, B passing",
    )
    seen: list[dict] = []
    service = {"ID": f"{web}-1", "Service": web, "Port": 9101}
    consul_dev.request(
        "PUT", "/v1/txn", [{"Service": {"Verb": "set", "Node": node, "Service": service}}]
    )  # A moves; then at once:
    set_status(1, "passing")
    seen.append(readiness(slices_of(admin, namespace, "web")))
    set_status(2, "critical")
    seen.append(readiness(slices_of(admin, namespace, "web")))
    set_status(1, "critical")
    for _ in range(40):
        seen.append(readiness(slices_of(admin, namespace, "web")))
        time.sleep(0.05)
    assert all(shown.get(("192.0.2.20", 9001)) is not True for shown in seen), seen
    # Both critical now: drain protection holds what was applied last (which one depends
    # on how the reads interleaved), says so, and never shows A ready on its old port.
    wait_for(
        lambda: (
            sample(scrape(metrics), "syncd_target_drain_protected", target=f"{namespace}/web") == 1
        ),
        "drain protection reported",
    )
    wait_for(
        lambda: [
            e
            for e in admin.list("Event", namespace)
            if e.get("reason") == "DrainProtected"
            and (e.get("involvedObject") or {}).get("name") == "web"
        ],
        "a DrainProtected Event",
    )
    final = readiness(slices_of(admin, namespace, "web"))
    assert final.get(("192.0.2.20", 9001)) is not True, final
    assert sum(final.values()) >= 1, final
