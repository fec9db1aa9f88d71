"""kube-proxy carries real traffic to what syncd writes (the data path, end to end).

Real kube-proxy (nftables mode) in node namespaces, real HTTP backends in a namespace of
their own, clients routed through the nodes; syncd runs as the daemon against the test
API server. A request to the Service's ClusterIP is answered by one backend, which says
which one it is ("address:port").
"""

from __future__ import annotations

import time

import pytest
import yaml

from harness.dataplane import DataPlane, cluster_ip
from harness.helpers import target_with, write_config

pytestmark = pytest.mark.apiserver

GATEWAYS = [f"198.51.100.{n}" for n in range(50, 56)]  # the Ceph case's six hosts
PAIRS = {f"{host}:{port}" for host in GATEWAYS for port in (8080, 8081)}


def _backends(path, *entries):
    path.write_text(yaml.safe_dump(list(entries)))
    return path


def _until(plane, node, ip, want, what, timeout=20.0, count=60):
    """Send requests until `want(answers)` holds for one batch; returns that batch."""
    deadline = time.monotonic() + timeout
    while True:
        answers = plane.spread(node, ip, 80, count)
        if want(answers):
            return answers
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last answers {dict(answers)}")
        time.sleep(0.2)


@pytest.fixture
def plane(apiserver, tmp_path):
    planes = []

    def build(*zones):
        created = DataPlane(apiserver, tmp_path / f"plane-{len(planes)}", zones).create()
        planes.append(created)
        return created

    yield build
    for created in planes:
        created.remove()


def test_the_seed_case_reaches_all_12_gateway_ports_and_follows_changes(
    plane, daemon, admin, namespace, tmp_path
):
    dp = plane(None)
    for host in GATEWAYS:
        for port in (8080, 8081):
            dp.serve(host, port)
    gateways = [f"{host}:{port}" for host in GATEWAYS for port in (8080, 8081)]
    backends = _backends(tmp_path / "gateways.yaml", *gateways)
    config = write_config(
        tmp_path / "c.yaml",
        target_with(namespace, "ocs-external-rgw-lb", {"type": "static", "file": str(backends)}),
    )
    daemon(config)
    wait = time.monotonic() + 20
    while admin.get("Service", namespace, "ocs-external-rgw-lb") is None:
        assert time.monotonic() < wait
        time.sleep(0.1)
    ip = cluster_ip(admin, namespace, "ocs-external-rgw-lb")

    # Service port 80, backends on 8080 and 8081 (two slices): all twelve get traffic.
    answers = _until(dp, 0, ip, lambda a: set(a) == PAIRS, "all 12 pairs", count=240)
    assert sum(answers.values()) == 240

    # One gateway port removed, one not ready: neither gets another request.
    changed = [g for g in gateways if g not in ("198.51.100.53:8081", "198.51.100.54:8080")]
    entries = [*changed, {"address": "198.51.100.54", "port": 8080, "ready": False}]
    _backends(backends, *entries)
    expected = PAIRS - {"198.51.100.53:8081", "198.51.100.54:8080"}
    _until(dp, 0, ip, lambda a: set(a) == expected, "the change at the data path", count=200)
    answers = dp.spread(0, ip, 80, 300)
    assert set(answers) == expected  # 300 more: the removed and the not-ready get none


def test_a_tier_failover_moves_client_traffic(plane, daemon, admin, namespace, tmp_path):
    dp = plane(None)
    primary, fallback = ["198.51.100.56", "198.51.100.57"], "198.51.100.58"
    for address in (*primary, fallback):
        dp.serve(address, 8080)
    tier0 = _backends(tmp_path / "primary.yaml", *(f"{a}:8080" for a in primary))
    config = write_config(
        tmp_path / "c.yaml",
        target_with(
            namespace,
            "failover",
            {"type": "static", "file": str(tier0)},
            {"type": "static", "backends": [f"{fallback}:8080"]},
            failover={"failback_after": 1},
        ),
    )
    daemon(config)
    wait = time.monotonic() + 20
    while admin.get("Service", namespace, "failover") is None:
        assert time.monotonic() < wait
        time.sleep(0.1)
    ip = cluster_ip(admin, namespace, "failover")
    both = {f"{a}:8080" for a in primary}
    _until(dp, 0, ip, lambda a: set(a) == both, "tier 0 serving")

    _backends(tier0, *({"address": a, "port": 8080, "ready": False} for a in primary))
    _until(dp, 0, ip, lambda a: set(a) == {f"{fallback}:8080"}, "traffic on tier 1")

    _backends(tier0, *(f"{a}:8080" for a in primary))  # back: failback after 1 s
    _until(dp, 0, ip, lambda a: set(a) == both, "traffic back on tier 0")


def test_clients_stay_in_their_zone_and_spill_over_when_it_has_no_ready_backend(
    plane, daemon, admin, namespace, tmp_path
):
    dp = plane("zone-a", "zone-b")
    zone_a, zone_b = ["198.51.100.40", "198.51.100.41"], ["198.51.100.42", "198.51.100.43"]
    for address in (*zone_a, *zone_b):
        dp.serve(address, 8080)

    def entries(ready_a: bool):
        return [
            *({"address": a, "port": 8080, "zone": "zone-a", "ready": ready_a} for a in zone_a),
            *({"address": a, "port": 8080, "zone": "zone-b"} for a in zone_b),
        ]

    backends = _backends(tmp_path / "zoned.yaml", *entries(True))
    config = write_config(
        tmp_path / "c.yaml",
        target_with(
            namespace,
            "zoned",
            {"type": "static", "file": str(backends)},
            traffic_distribution="PreferClose",
        ),
    )
    daemon(config)
    wait = time.monotonic() + 20
    while admin.get("Service", namespace, "zoned") is None:
        assert time.monotonic() < wait
        time.sleep(0.1)
    ip = cluster_ip(admin, namespace, "zoned")
    in_a, in_b = {f"{a}:8080" for a in zone_a}, {f"{a}:8080" for a in zone_b}
    _until(dp, 0, ip, lambda a: set(a) == in_a, "zone-a clients on zone-a backends")
    _until(dp, 1, ip, lambda a: set(a) == in_b, "zone-b clients on zone-b backends")
    assert set(dp.spread(0, ip, 80, 100)) == in_a  # and only there
    assert set(dp.spread(1, ip, 80, 100)) == in_b

    _backends(backends, *entries(False))  # zone-a's backends fail
    _until(dp, 0, ip, lambda a: set(a) == in_b, "zone-a clients spilling over to zone-b")
    assert set(dp.spread(1, ip, 80, 100)) == in_b
