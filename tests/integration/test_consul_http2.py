"""Consul over HTTPS speaks HTTP/2: every service its own blocking query, as streams over a
few connections, against a real TLS agent (certificates from `consul tls`)."""

from __future__ import annotations

import socket
import subprocess

import pytest

from harness.certs import make_certs
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


def test_300_services_are_each_watched_over_two_connections(
    daemon, consul_tls, admin, namespace, tmp_path
):
    """300 blocking queries fit in two connections of 250 streams. The sweep is made
    too slow to matter (a round would take an hour): a registration, a move and a
    removal that no check shows can only arrive through each service's own watch."""
    services = [f"h2-{n}-{namespace}" for n in range(300)]
    for service in services:
        consul_tls.register(f"{service}-1", service, "192.0.2.1", 8080)
    metrics = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "c.yaml",
        *(target_with(namespace, s, {"type": "consul", "service": s}) for s in services),
        consul={**consul_tls.config_section(), "max_connections": 5, "sweep_rate": 0.1},
    )
    process = daemon(config, "--metrics-address", metrics)
    for service in (services[0], services[-1]):
        wait_for(
            lambda s=service: (
                endpoint_pairs(slices_of(admin, namespace, s)) == {("192.0.2.1", 8080)}
            ),
            service,
            timeout=60,
        )
    wait_for(
        lambda: sample(scrape(metrics), "syncd_consul_services", mode="watch") == 300,
        "every service watched",
        timeout=60,
    )
    text = scrape(metrics)
    assert sample(text, "syncd_consul_services", mode="feed") == 0
    assert sample(text, "syncd_consul_connections") == 2
    assert sample(text, "syncd_consul_streams", state="open") >= 300
    port = int(consul_tls.address.rsplit(":", 1)[1])
    assert connections_to(process.pid, port) == 2

    last = services[-1]
    consul_tls.register(f"{last}-2", last, "192.0.2.2", 8080)  # passing from the start
    wait_for(
        lambda: ("192.0.2.2", 8080) in endpoint_pairs(slices_of(admin, namespace, last)),
        "a registration",
        timeout=30,
    )
    consul_tls.register(f"{last}-2", last, "192.0.2.3", 8080)  # the same instance moves
    wait_for(
        lambda: (
            endpoint_pairs(slices_of(admin, namespace, last))
            == {("192.0.2.1", 8080), ("192.0.2.3", 8080)}
        ),
        "a move",
        timeout=30,
    )
    consul_tls.deregister(f"{last}-2")
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, last)) == {("192.0.2.1", 8080)},
        "a removal",
        timeout=30,
    )
    assert connections_to(process.pid, port) == 2
    assert "consul: 300 services watched (HTTP/2" in process.log_path.read_text()


def test_http2_can_be_turned_off(daemon, consul_tls, admin, namespace, tmp_path):
    """`http2: false`: HTTP/1.1 over TLS, one connection per blocking query (the budget
    then decides how many services are watched)."""
    services = [f"h1-{n}-{namespace}" for n in range(3)]
    for service in services:
        consul_tls.register(f"{service}-1", service, "192.0.2.1", 8080)
    metrics = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "c.yaml",
        *(target_with(namespace, s, {"type": "consul", "service": s}) for s in services),
        consul={**consul_tls.config_section(), "max_connections": 6, "http2": False},
    )
    daemon(config, "--metrics-address", metrics)
    for service in services:
        wait_for(lambda s=service: endpoint_pairs(slices_of(admin, namespace, s)), service)
    text = scrape(metrics)
    assert sample(text, "syncd_consul_services", mode="watch") == 1  # 6 - reader - 4 feeds
    assert sample(text, "syncd_consul_services", mode="feed") == 2


def test_a_big_service_is_followed_by_the_feeds_over_streams_too(
    daemon, consul_tls, admin, namespace, tmp_path
):
    """Past 256 instances a change is a patch, not a re-read: the feeds follow it, their
    blocking queries streams of the same connection; a flip and a registration arrive."""
    service = f"big-{namespace}"
    node = f"node-{namespace}"
    consul_tls.register_external(
        [(f"{service}-{n}", service, f"198.18.{n // 250}.{n % 250 + 1}", 8080) for n in range(300)],
        node=node,
    )
    metrics = f"127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path / "c.yaml",
        target_with(namespace, service, {"type": "consul", "service": service}),
        consul={**consul_tls.config_section(), "max_connections": 5},
    )
    process = daemon(config, "--metrics-address", metrics)

    def pairs():
        return endpoint_pairs(slices_of(admin, namespace, service))

    wait_for(lambda: len(pairs()) == 300, "300 instances", timeout=60)
    wait_for(
        lambda: sample(scrape(metrics), "syncd_consul_services", mode="feed") == 1,
        "followed by the feeds",
        timeout=60,
    )
    consul_tls.set_external_status(f"{service}-7", "critical", node=node)
    wait_for(
        lambda: readiness(slices_of(admin, namespace, service)).get(("198.18.0.8", 8080)) is False,
        "a flip",
        timeout=30,
    )
    consul_tls.register_external([(f"{service}-new", service, "198.18.9.9", 8080)], node=node)
    wait_for(lambda: ("198.18.9.9", 8080) in pairs(), "a registration", timeout=30)
    assert connections_to(process.pid, int(consul_tls.address.rsplit(":", 1)[1])) == 1


def test_an_agent_behind_tls_without_http2_is_used_over_http1(
    daemon, consul, admin, namespace, tmp_path
):
    """A TLS proxy that offers no HTTP/2 (socat in front of a plain agent): syncd says
    so once and follows the services over HTTP/1.1, watches and all."""
    certs = make_certs(tmp_path / "certs", "consul.test")
    port = free_port()
    upstream = consul.address.rsplit(":", 1)[1]
    proxy = subprocess.Popen(
        [
            "socat",
            f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,"
            f"cert={certs / 'server.pem'},key={certs / 'server.key'}",
            f"TCP:127.0.0.1:{upstream}",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _listening(port), "the TLS proxy")
        services = [f"tls1-{n}-{namespace}" for n in range(3)]
        for service in services:
            consul.register(f"{service}-1", service, "192.0.2.1", 8080)
        metrics = f"127.0.0.1:{free_port()}"
        config = write_config(
            tmp_path / "c.yaml",
            *(target_with(namespace, s, {"type": "consul", "service": s}) for s in services),
            consul={
                "address": f"https://127.0.0.1:{port}",
                "ca_file": str(certs / "ca.pem"),
                "tls_server_name": "consul.test",
            },
        )
        process = daemon(config, "--metrics-address", metrics)
        for service in services:
            wait_for(lambda s=service: endpoint_pairs(slices_of(admin, namespace, s)), service)
        consul.register(f"{services[0]}-2", services[0], "192.0.2.2", 8080)
        wait_for(
            lambda: ("192.0.2.2", 8080) in endpoint_pairs(slices_of(admin, namespace, services[0])),
            "a registration, watched over HTTP/1.1",
            timeout=30,
        )
        log = process.log_path.read_text()
        assert log.count("does not speak HTTP/2") == 1, log[-3000:]
        assert sample(scrape(metrics), "syncd_consul_services", mode="watch") == 3
    finally:
        proxy.terminate()
        proxy.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
