"""Active probes against real listeners on loopback: TCP, HTTP, HTTPS, rise and fall."""

from __future__ import annotations

import http.server
import ssl
import threading

import pytest

from harness.certs import make_certs
from harness.kube_apiserver import free_port
from syncd.health import Prober, probe_once
from syncd.model import HealthCheckConfig


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
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

    def start(tls: bool = False):
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Handler)
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
    return ("127.0.0.1", httpd.server_address[1])


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
