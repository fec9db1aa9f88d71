"""The /metrics, /healthz and /readyz server, on real sockets: dual-stack by default,
bounded threads whatever the number of idle connections, answering throughout."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.request

import pytest

from syncd.http_server import serve_metrics


class _Healthy:
    """What the daemon would answer."""

    def health(self) -> list[str]:
        return []

    def readiness(self) -> tuple[bool, str]:
        return True, "ok"

    def target_statuses(self):
        return ()


HEALTHY = _Healthy()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_port_without_a_host_serves_ipv4_and_ipv6():
    _host, port = serve_metrics(":0", HEALTHY)
    assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    assert _get(f"http://[::1]:{port}/healthz") == (200, "ok\n")
    status, text = _get(f"http://[::1]:{port}/metrics")
    assert status == 200 and "syncd_" in text


def test_a_thousand_idle_connections_cost_no_threads_and_healthz_still_answers():
    _host, port = serve_metrics("127.0.0.1:0", HEALTHY)
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


def test_clients_sending_a_byte_at_a_time_cannot_starve_the_kubelets_probe():
    """Four workers; eight clients each trickling a request a byte every half second (a
    deadline per read would keep them forever): /healthz answers at once all along, and
    each trickler is closed when its request deadline runs out."""
    _host, port = serve_metrics("127.0.0.1:0", HEALTHY)
    tricklers = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    stop = threading.Event()

    def trickle(client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                client.send(bytes([byte]))
                if stop.wait(0.5):
                    return

    threads = [threading.Thread(target=trickle, args=(c,), daemon=True) for c in tricklers]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
            stop.wait(1)
        closed = 0
        for client in tricklers:  # closed by the server: their deadline (5 s) ran out
            client.settimeout(10)
            try:
                closed += client.recv(1) == b""
            except ConnectionResetError:  # closed with its request unread: a reset
                closed += 1
        assert closed == len(tricklers)
    finally:
        stop.set()
        for client in tricklers:
            client.close()


def test_head_and_other_methods():
    _host, port = serve_metrics("127.0.0.1:0", HEALTHY)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and response.read() == b""
    post = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=10)
    assert refused.value.code == 405
