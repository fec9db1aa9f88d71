"""/healthz and /readyz, from one HTTP server with /metrics: a wedged worker turns /healthz
red (kube-apiserver is frozen with SIGSTOP while a write is due), and it recovers."""

from __future__ import annotations

import json
import platform
import re
import signal
import time
import urllib.error
import urllib.request

import pytest
import yaml
from kubernetes import utils as k8s_utils

from harness.helpers import slices_of, wait_for, write_config
from harness.kube_apiserver import REPO, free_port
from syncd import __version__

DASHBOARDS = [
    REPO / "deploy" / "components" / "monitoring" / "dashboard.json",
    REPO / "charts" / "syncd" / "files" / "dashboard.json",
]

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


def test_a_replica_that_cannot_read_its_lease_is_not_ready_until_it_can(
    daemon, admin_api, namespace, tmp_path
):
    """Leases in a namespace where syncd has no RBAC: /readyz says 503 and why (two such
    replicas must not show 2/2 Ready while nothing syncs); once RBAC is granted, ready within
    a retry period, and the old reason is gone."""
    lease_namespace = f"{namespace}-lease"
    k8s_utils.create_from_dict(
        admin_api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": lease_namespace}}
    )
    config = write_config(
        tmp_path / "c.yaml",
        {
            "namespace": namespace,
            "service": "fenced",
            "ports": [{"name": "http", "port": 80}],
            "sources": [{"type": "static", "backends": ["198.51.100.1:8080"]}],
        },
    )
    address = f"127.0.0.1:{free_port()}"
    lease = ("--leader-elect", "--lease-namespace", lease_namespace)
    daemon(config, *lease, "--metrics-address", address)
    _status, body = wait_for(
        lambda: (r := _get(address, "/readyz"))[0] == 503 and "lease" in r[1] and r,
        "not ready, saying why",
    )
    assert "cannot lead: cannot read the lease" in body and "403" in body, body
    rbac = yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text())
    for doc in rbac:
        if doc["metadata"].get("name") == "syncd-leader-election":
            doc["metadata"]["namespace"] = lease_namespace
            k8s_utils.create_from_dict(admin_api, doc)
    # not ready until the Lease is written (read but not yet created is not enough)
    wait_for(lambda: _get(address, "/readyz") == (200, "leader\n"), "leading once RBAC allows it")


def _scrape_a_daemon_in_sync(daemon, admin, namespace: str, tmp_path) -> str:
    """/metrics of a running daemon once its one target is in sync."""
    config = write_config(
        tmp_path / "c.yaml",
        {
            "namespace": namespace,
            "service": "graphed",
            "ports": [{"name": "http", "port": 80}],
            "sources": [{"type": "static", "backends": ["198.51.100.1:8080"]}],
        },
    )
    address = f"127.0.0.1:{free_port()}"
    daemon(config, "--metrics-address", address)
    wait_for(lambda: slices_of(admin, namespace, "graphed"), "the slice")
    _status, text = wait_for(
        lambda: (
            (r := _get(address, "/metrics"))[0] == 200
            and "syncd_target_last_success_timestamp_seconds" in r[1]
            and r
        ),
        "the metrics",
    )
    return text


def test_the_metrics_people_graph_and_size_by_are_served(daemon, admin, namespace, tmp_path):
    """syncd_build_info, the standard process_* and python_* series, and per target the
    time it was last in sync, from a running daemon."""
    before = time.time()
    text = _scrape_a_daemon_in_sync(daemon, admin, namespace, tmp_path)
    series = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    build = f'syncd_build_info{{python="{platform.python_version()}",version="{__version__}"}}'
    assert float(series[build]) == 1
    assert float(series["process_resident_memory_bytes"]) > 10 * 2**20
    assert any(key.startswith("python_info{") for key in series)
    target = f'{{target="{namespace}/graphed"}}'
    success = float(series[f"syncd_target_last_success_timestamp_seconds{target}"])
    assert before - 60 < success <= time.time()


def _served(text: str) -> dict[str, set[str]]:
    """Every series name a scrape can hold -> the labels its samples carry. A family with
    no sample yet (a labelled metric nothing has touched) still has its # TYPE line."""
    served: dict[str, set[str]] = {}
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        for name in [family, *(family + s for s in suffixes.get(kind, []))]:
            served.setdefault(name, set())
    for name, labels in re.findall(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? ", text, re.M):
        served.setdefault(name, set()).update(re.findall(r'(\w+)="', labels))
    return served


def test_every_metric_the_dashboard_queries_is_served_by_a_running_daemon(
    daemon, admin, namespace, tmp_path
):
    """The dashboard in deploy/ (and the chart's copy) asks only for series a running
    daemon serves, grouped only by labels those series carry."""
    served = _served(_scrape_a_daemon_in_sync(daemon, admin, namespace, tmp_path))
    for dashboard in DASHBOARDS:
        for panel in json.loads(dashboard.read_text())["panels"]:
            for query in panel["targets"]:
                expr = query["expr"]
                names = set(re.findall(r"\b((?:syncd|process|python)_[a-z_]+)\b", expr))
                assert names, (panel["title"], expr)
                for name in names:
                    assert name in served, f"{dashboard.name}, {panel['title']}: {name} not served"
                grouped = {
                    label.strip()
                    for group in re.findall(r"by \(([^)]*)\)", expr)
                    for label in group.split(",")
                }
                carried = set().union(*(served[name] for name in names))
                if all(served[name] for name in names):  # labels known from samples
                    assert grouped <= carried, f"{panel['title']}: {grouped - carried}"
