"""Active probes against real listeners on loopback: TCP, HTTP, HTTPS, rise and fall."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
from typing import ClassVar

import pytest

from harness.certs import make_certs
from harness.kube_apiserver import free_port
from syncd.health import Prober, host_header, probe_once
from syncd.model import HealthCheckConfig


class _Handler(http.server.BaseHTTPRequestHandler):
    hosts: ClassVar[list[str]] = []  # the Host headers seen

    def do_GET(self):
        _Handler.hosts.append(self.headers.get("Host"))
        status = 200 if self.path == "/healthz" else 503
        if self.headers.get("Host") == "teapot.test":
            status = 418
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Start HTTP or HTTPS servers on 127.0.0.1; all stopped at the end."""
    started = []

    def start(tls: bool = False, address: str = "127.0.0.1"):
        server_class = http.server.ThreadingHTTPServer
        if ":" in address:
            server_class = type("V6Server", (server_class,), {"address_family": socket.AF_INET6})
        httpd = server_class((address, free_port()), _Handler)
        if tls:
            certs = make_certs(tmp_path / f"certs{len(started)}", "rgw.test")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certs / "server.pem", certs / "server.key")
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
            httpd.ca = certs / "ca.pem"
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return httpd

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def _key(httpd):
    return (httpd.server_address[0], httpd.server_address[1])


def test_tcp_probe_passes_on_a_listener_and_fails_without(server):
    assert probe_once(_key(server()), HealthCheckConfig(type="tcp"))
    assert not probe_once(("127.0.0.1", free_port()), HealthCheckConfig(type="tcp", timeout=1))


def test_http_probe_checks_path_status_and_host(server):
    key = _key(server())
    assert probe_once(key, HealthCheckConfig(type="http", path="/healthz"))
    assert not probe_once(key, HealthCheckConfig(type="http", path="/"))  # 503
    teapot = HealthCheckConfig(
        type="http", path="/healthz", host="teapot.test", expected_status=((418, 418),)
    )
    assert probe_once(key, teapot)


def test_https_probe_verifies_against_the_ca_and_server_name(server):
    httpd = server(tls=True)
    key = _key(httpd)
    good = HealthCheckConfig(
        type="https", path="/healthz", ca_file=httpd.ca, tls_server_name="rgw.test"
    )
    assert probe_once(key, good)
    assert not probe_once(
        key, HealthCheckConfig(type="https", path="/healthz", ca_file=httpd.ca)
    )  # name is 127.0.0.1
    assert not probe_once(
        key, HealthCheckConfig(type="https", path="/healthz", tls_server_name="rgw.test")
    )  # unknown CA
    assert probe_once(
        key, HealthCheckConfig(type="https", path="/healthz", insecure_skip_verify=True)
    )


def test_rise_and_fall_thresholds_keep_one_failure_from_flapping(server):
    up, down = _key(server()), ("127.0.0.1", free_port())
    prober = Prober(HealthCheckConfig(type="tcp", timeout=0.5, interval=1, rise=2, fall=3), "test")
    for _ in range(2):
        prober.run_round([up, down])
    assert prober.health() == {up: True, down: True}  # two failures: not yet
    assert prober.run_round([up, down])  # the third flips it
    assert prober.health()[down] is False
    assert not prober.run_round([up, down])
    assert prober.health()[down] is False


def test_an_ipv6_backend_is_probed_with_its_address_in_brackets(server):
    """http.client splits a bare IPv6 literal at its last colon: 2001:db8::ab was "port
    ab" and every probe of it failed."""
    httpd = server(address="::1")
    key = ("::1", httpd.server_address[1])
    _Handler.hosts.clear()
    assert probe_once(key, HealthCheckConfig(type="http", path="/healthz"))
    assert _Handler.hosts == [f"[::1]:{key[1]}"]
    assert host_header(("2001:db8::ab", 80), HealthCheckConfig(type="http")) == "[2001:db8::ab]"
    assert host_header(("2001:db8::10", 443), HealthCheckConfig(type="https")) == "[2001:db8::10]"
    assert host_header(("192.0.2.1", 8080), HealthCheckConfig(host="rgw")) == "rgw"


def test_a_failed_probe_says_why(server):
    refused = probe_once(("127.0.0.1", free_port()), HealthCheckConfig(type="tcp", timeout=1))
    assert (refused.kind, refused.reason) == ("refused", "connection refused")
    key = _key(server())
    status = probe_once(key, HealthCheckConfig(type="http", path="/"))
    assert (status.kind, status.reason) == ("status", "status 503 (expected 200-399)")
    tls = server(tls=True)
    unknown_ca = probe_once(
        _key(tls), HealthCheckConfig(type="https", path="/healthz", tls_server_name="rgw.test")
    )
    assert unknown_ca.kind == "tls" and "TLS verification failed" in unknown_ca.reason
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts, never answers
    try:
        timeout = probe_once(
            silent.getsockname(), HealthCheckConfig(type="http", timeout=0.3, interval=1)
        )
    finally:
        silent.close()
    assert (timeout.kind, timeout.reason) == ("timeout", "timed out after 0.3s")


def test_the_prober_keeps_why_a_backend_is_unhealthy(server):
    down = ("127.0.0.1", free_port())
    prober = Prober(HealthCheckConfig(type="tcp", timeout=0.5, interval=1, rise=1, fall=1), "t")
    prober.run_round([down])
    assert prober.failing() == {down: "connection refused"}
