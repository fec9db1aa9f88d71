"""/healthz and /readyz, from one HTTP server with /metrics: a wedged worker turns /healthz
red (kube-apiserver is frozen with SIGSTOP while a write is due), and it recovers."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request

import pytest
import yaml

from tests.harness.kube_apiserver import free_port
from tests.helpers import slices_of, wait_for, write_config

pytestmark = pytest.mark.apiserver


def _get(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:  # not listening yet
        return 0, str(exc.reason)


def test_a_wedged_worker_turns_healthz_red_until_it_is_free_again(
    daemon, apiserver, admin, namespace, tmp_path
):
    backends = tmp_path / "b.yaml"
    backends.write_text(yaml.safe_dump(["198.51.100.1:8080"]))
    config = write_config(
        tmp_path / "c.yaml",
        {
            "namespace": namespace,
            "service": "wedge",
            "ports": [{"name": "http", "port": 80}],
            "sources": [{"type": "static", "file": str(backends)}],
        },
    )
    address = f"127.0.0.1:{free_port()}"
    daemon(config, "--metrics-address", address, "--stuck-after", "2")
    wait_for(lambda: _get(address, "/readyz")[0] == 200, "ready: first pass done")
    assert _get(address, "/healthz") == (200, "ok\n")
    assert "syncd_reconciles_total" in _get(address, "/metrics")[1]
    wait_for(lambda: slices_of(admin, namespace, "wedge"), "the slice")

    api = apiserver.processes[-1]
    api.send_signal(signal.SIGSTOP)  # requests hang: the worker applying a change is stuck
    try:
        backends.write_text(yaml.safe_dump(["198.51.100.1:8080", "198.51.100.2:8080"]))
        _status, body = wait_for(
            lambda: (r := _get(address, "/healthz"))[0] == 500 and r, "/healthz red", timeout=15
        )
        assert f"busy with {namespace}/wedge" in body and "stuck_after 2s" in body
    finally:
        api.send_signal(signal.SIGCONT)
    wait_for(lambda: _get(address, "/healthz")[0] == 200, "/healthz green again", timeout=60)
    assert _get(address, "/nothing")[0] == 404


def test_a_standby_is_ready_as_a_standby(daemon, namespace, tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        {
            "namespace": namespace,
            "service": "standby",
            "ports": [{"name": "http", "port": 80}],
            "sources": [{"type": "static", "backends": ["198.51.100.1:8080"]}],
        },
    )
    lease = ("--leader-elect", "--lease-namespace", "syncd")
    leader_address, standby_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    daemon(config, *lease, "--metrics-address", leader_address)
    wait_for(lambda: _get(leader_address, "/readyz") == (200, "leader\n"), "the leader ready")
    daemon(config, *lease, "--metrics-address", standby_address)
    _status, body = wait_for(
        lambda: (r := _get(standby_address, "/readyz"))[0] == 200 and r, "the standby ready"
    )
    assert body.startswith("standby (the lease is held by ")
    assert "syncd_leader 0.0" in _get(standby_address, "/metrics")[1]
    assert "syncd_leader 1.0" in _get(leader_address, "/metrics")[1]
