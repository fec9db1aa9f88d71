"""Consul beyond the connection budget: services followed by the change feeds, on real servers.

The agent keeps its default limits (200 connections per client IP); syncd's budget is made
small here so that a handful of services already needs the feeds.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from tests.harness.kube_apiserver import free_port
from tests.helpers import (
    connections_to,
    endpoint_pairs,
    readiness,
    slices_of,
    target_with,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.apiserver


def consul_targets(namespace: str, services: list[str]) -> list[dict]:
    return [
        target_with(namespace, service, {"type": "consul", "service": service})
        for service in services
    ]


def scrape(address: str) -> str:
    """syncd's /metrics; "" while it is not serving yet."""
    try:
        return urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    except OSError:
        return ""


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` that carry all these labels."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric == name and all(
            w in label_text.split(",") or w + "}" in label_text.split(",") for w in wanted
        ):
            total += float(value)
    return total


def test_a_feed_followed_service_follows_flips_registrations_moves_and_removals(
    daemon, consul, admin, namespace, tmp_path
):
    # max_connections 5: one shared reader, three feeds, one watch; the last two services
    # have no watch of their own.
    services = [f"feed{n}-{namespace}" for n in range(3)]
    for service in services:
        consul.register(f"{service}-1", service, "192.0.2.1", 8080)
        consul.register(f"{service}-2", service, "192.0.2.2", 8080)
    metrics = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "c.yaml",
        *consul_targets(namespace, services),
        consul={"address": consul.address, "max_connections": 5},
    )
    process = daemon(config, "--metrics-address", metrics)
    service = services[-1]
    for each in services:
        wait_for(lambda s=each: len(endpoint_pairs(slices_of(admin, namespace, s))) == 2, each)
    text = scrape(metrics)
    assert sample(text, "syncd_consul_services", mode="feed") == 2
    assert sample(text, "syncd_consul_services", mode="watch") == 1
    assert connections_to(process.pid, int(consul.address.rsplit(":", 1)[1])) <= 5

    def ready_of(address: str):
        return readiness(slices_of(admin, namespace, service)).get((address, 8080))

    for status, ready in (("critical", False), ("passing", True), ("warning", True)):
        consul.set_status(f"{service}-2", status)
        wait_for(lambda r=ready: ready_of("192.0.2.2") is r, f"ready={ready}", timeout=2.0)

    consul.register(f"{service}-3", service, "192.0.2.3", 8080)  # passing from the start
    wait_for(lambda: ready_of("192.0.2.3") is True, "a new instance", timeout=3.0)
    consul.register(f"{service}-3", service, "192.0.2.4", 8080)  # the same instance moves
    wait_for(
        lambda: ready_of("192.0.2.4") is True and ready_of("192.0.2.3") is None,
        "a moved instance",
        timeout=3.0,
    )
    consul.deregister(f"{service}-1")
    wait_for(lambda: ready_of("192.0.2.1") is None, "a removed instance", timeout=3.0)
    consul.set_status(f"{service}-2", "critical")
    consul.deregister(f"{service}-2")  # critical, then gone: never made ready again
    wait_for(lambda: ready_of("192.0.2.2") is None, "a critical instance removed", timeout=3.0)
    assert sample(scrape(metrics), "syncd_consul_reads_total", reason="confirm") >= 1
    assert connections_to(process.pid, int(consul.address.rsplit(":", 1)[1])) <= 5


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
            timeout=2.0,
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
            timeout=2.0,
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
    assert sample(text, "syncd_consul_services", mode="watch") == 25  # 32 - 4 readers - 3 feeds
    assert sample(text, "syncd_consul_services", mode="feed") == 375
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
        timeout=2.0,
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
