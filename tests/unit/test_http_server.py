"""The /metrics, /healthz and /readyz server, on real sockets: dual-stack by default,
bounded threads whatever the number of idle connections, answering throughout."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.request

import pytest

from syncd import observability
from syncd.observability import serve_metrics


@pytest.fixture(autouse=True)
def _healthy(monkeypatch):
    """What the daemon would answer (another test may have left its own hooks here)."""
    monkeypatch.setattr(observability, "health", list)
    monkeypatch.setattr(observability, "readiness", lambda: (True, "ok"))


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_port_without_a_host_serves_ipv4_and_ipv6():
    _host, port = serve_metrics(":0")
    assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    assert _get(f"http://[::1]:{port}/healthz") == (200, "ok\n")
    status, text = _get(f"http://[::1]:{port}/metrics")
    assert status == 200 and "syncd_" in text


def test_a_thousand_idle_connections_cost_no_threads_and_healthz_still_answers():
    _host, port = serve_metrics("127.0.0.1:0")
    before = threading.active_count()
    idle = []
    try:
        for _ in range(1000):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            idle.append(client)  # connected, never sends a request
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        assert threading.active_count() <= before + 4  # the workers, however many clients
    finally:
        for client in idle:
            with contextlib.suppress(OSError):
                client.close()
    assert _get(f"http://127.0.0.1:{port}/readyz")[0] in (200, 503)
