"""The API-facing behaviours on every Kubernetes of the version matrix: the oldest
kube-apiserver that builds here (1.30), one in the middle (1.33) and the newest. Users run
older clusters than ours (OpenShift 4.14-4.18 is Kubernetes 1.27-1.31); the rest of the
suite runs on the newest only.

Each version gets an API server of its own (etcd + kube-apiserver, RBAC on, deploy/'s
ClusterRole bound to syncd's user) and the audit log counts syncd's writes.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from harness.helpers import (
    CEPH_PAIRS,
    REPO,
    ceph_target,
    endpoint_pairs,
    run_once,
    slices_of,
    syncd,
    target,
    wait_for,
    write_config,
)
from harness.kube_apiserver import KubeApiServer
from harness.syncd_process import start_syncd
from syncd.kube import Kube, KubeSettings
from tests.conftest import _started

pytestmark = pytest.mark.apiserver


def matrix() -> list[str]:
    """The versions the build script builds, newest first (read from it, so the two agree)."""
    script = (REPO / "scripts" / "build-test-servers.sh").read_text()
    newest = re.search(r'KUBERNETES_VERSION="\$\{KUBERNETES_VERSION:-(v[\d.]+)\}"', script)
    older = re.search(r'KUBERNETES_MATRIX="\$\{KUBERNETES_MATRIX:-([v\d. ]+)\}"', script)
    assert newest and older, "the build script no longer names the matrix"
    return [newest.group(1), *sorted(older.group(1).split(), reverse=True)]


VERSIONS = matrix()


@pytest.fixture(scope="module", params=VERSIONS)
def versioned(request, tmp_path_factory) -> Iterator[KubeApiServer]:
    version = request.param
    server = KubeApiServer(tmp_path_factory.mktemp(f"apiserver-{version}"), version=version)
    _started(server, f"kube-apiserver {version}")
    server.apply_deploy_rbac()
    yield server
    server.stop()


@pytest.fixture
def cluster(versioned) -> Iterator[tuple[KubeApiServer, Kube, str]]:
    """The version's API server, an admin client and a fresh namespace."""
    kube = Kube.connect(KubeSettings(kubeconfig=str(versioned.admin_kubeconfig)))
    namespace = f"v-{uuid.uuid4().hex[:10]}"
    api = versioned.admin_client()
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    api.close()
    yield versioned, kube, namespace
    kube.close()


def once(server: KubeApiServer, config: Path, owner: str, check: int | None = 0):
    return run_once(config, server.syncd_kubeconfig, "--owner-id", owner, check=check)


def minor(version: str) -> int:
    return int(version.split(".")[1])


def test_the_ceph_example_applies_then_a_rerun_writes_nothing(cluster, tmp_path):
    server, admin, namespace = cluster
    config = write_config(tmp_path / "c.yaml", ceph_target(namespace, output="both"))
    mark = server.audit.mark()
    once(server, config, namespace)
    assert server.audit.writes_since(mark), "the first run wrote nothing"
    slices = slices_of(admin, namespace, "ocs-external-rgw-lb")
    assert endpoint_pairs(slices) == CEPH_PAIRS
    endpoints = admin.get("Endpoints", namespace, "ocs-external-rgw-lb")
    assert endpoints is not None
    assert endpoints["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"] == "true"
    for _ in range(2):
        mark = server.audit.mark()
        result = once(server, config, namespace)
        assert server.audit.writes_since(mark) == [], result.stderr
        assert "0 writes" in result.stderr


def test_traffic_distribution_is_kept_or_reported_never_a_write_loop(cluster, tmp_path):
    """On 1.30 the API server drops spec.trafficDistribution (alpha, gate off): syncd must
    see that before writing, leave it out, say so once, and write nothing on later runs."""
    server, admin, namespace = cluster
    backends = [
        {"address": "198.51.100.10", "port": 8080, "zone": "zone-a"},
        {"address": "198.51.100.11", "port": 8080, "zone": "zone-b"},
    ]
    config = write_config(
        tmp_path / "c.yaml",
        target(namespace, "zoned", backends, traffic_distribution="PreferClose"),
    )
    writes = []
    outputs = []
    for _ in range(3):
        mark = server.audit.mark()
        outputs.append(once(server, config, namespace))
        objects = [w for w in server.audit.writes_since(mark) if w.resource != "events"]
        writes.append(len(objects))
    assert writes == [2, 0, 0], (writes, outputs[0].stdout, outputs[0].stderr)
    service = admin.get("Service", namespace, "zoned")
    assert service is not None
    (endpoint_slice,) = slices_of(admin, namespace, "zoned")
    hinted = [e for e in endpoint_slice["endpoints"] if e.get("hints")]
    if minor(server.version or VERSIONS[0]) >= 31:
        assert service["spec"].get("trafficDistribution") == "PreferClose"
        assert len(hinted) == 2
    else:
        assert "trafficDistribution" not in service["spec"]
        assert hinted == []
        assert "does not keep" in outputs[1].stderr, outputs[1].stderr
        events = [e for e in admin.list("Event", namespace) if e.get("reason") == "FieldIgnored"]
        assert len(events) == 1, events
    checked = syncd("check", "--config", config, "--kubeconfig", server.syncd_kubeconfig, check=0)
    assert ("does not keep" in checked.stderr) == (minor(server.version or VERSIONS[0]) < 31)


def test_the_daemon_writes_once_per_change_and_nothing_when_idle(cluster, tmp_path):
    server, admin, namespace = cluster
    backends_file = tmp_path / "backends.yaml"
    backends_file.write_text("- 198.51.100.20:8080\n- 198.51.100.21:8080\n")
    config = write_config(
        tmp_path / "c.yaml",
        {
            **target(namespace, "files", []),
            "sources": [{"type": "static", "file": str(backends_file)}],
        },
    )
    process = start_syncd(
        config, server.syncd_kubeconfig, tmp_path / "daemon.log", "--owner-id", namespace
    )
    try:
        wait_for(lambda: len(endpoint_pairs(slices_of(admin, namespace, "files"))) == 2, "2")
        mark = server.audit.mark()
        backends_file.write_text("- 198.51.100.20:8080\n- 198.51.100.22:8080\n")
        wait_for(
            lambda: ("198.51.100.22", 8080) in endpoint_pairs(slices_of(admin, namespace, "files")),
            "the change applied",
        )
        time.sleep(3)  # idle: a resync or a watch renewal must not write
        writes = server.audit.writes_since(mark)
        assert [(w.verb, w.resource) for w in writes] == [("update", "endpointslices")], writes
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_service_of_someone_else_is_a_conflict_left_untouched(cluster, tmp_path):
    server, admin, namespace = cluster
    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "taken", "namespace": namespace},
            "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]},
        }
    )
    config = write_config(tmp_path / "c.yaml", target(namespace, "taken", ["198.51.100.30:8080"]))
    mark = server.audit.mark()
    result = once(server, config, namespace, check=1)
    assert "CONFLICT" in result.stderr
    assert [w for w in server.audit.writes_since(mark) if w.resource != "events"] == []


def test_a_resource_pointing_at_a_cluster_ip_is_refused_on_every_version(cluster, tmp_path):
    """The Service network is the cluster's own on every version: from its ServiceCIDR
    objects where it has them (1.33+), else learned from the API server itself, else the
    config's service_cidr; a resource pointing at a ClusterIP is refused either way."""
    server, admin, namespace = cluster
    server.install_resources_component()
    api = server.admin_client()
    try:
        service = k8s.CoreV1Api(api).create_namespaced_service(
            namespace, {"metadata": {"name": "db"}, "spec": {"ports": [{"port": 5432}]}}
        )
    finally:
        api.close()
    cluster_ip = service.spec.cluster_ip
    admin.create(
        {
            "apiVersion": "syncd.io/v1alpha1",
            "kind": "ExternalService",
            "metadata": {"name": "sneaky", "namespace": namespace},
            "spec": {
                "ports": [{"name": "pg", "port": 5432}],
                "sources": [{"type": "static", "backends": [f"{cluster_ip}:5432"]}],
            },
        }
    )
    learned = tmp_path / "learned.yaml"
    learned.write_text("version: 1\n")
    served = minor(server.version or VERSIONS[0]) >= 33
    result = run_once(
        learned, server.syncd_kubeconfig, "--owner-id", namespace, "--resources",
        "--namespaces", namespace, check=1,
    )  # fmt: skip
    assert f"CLUSTER-ADDRESS: {cluster_ip} is in {server.service_cidr}" in result.stderr
    where = "ServiceCIDR kubernetes" if served else "the Service network)"
    assert where in result.stderr, result.stderr
    assert admin.get("Service", namespace, "sneaky") is None
    # the config's service_cidr is denied to every target: the resource is not even valid
    configured = tmp_path / "configured.yaml"
    configured.write_text(f"version: 1\naddress_policy:\n  service_cidr: {server.service_cidr}\n")
    run_once(
        configured, server.syncd_kubeconfig, "--owner-id", namespace, "--resources",
        "--namespaces", namespace, check=None,
    )  # fmt: skip
    status = (admin.get("ExternalService", namespace, "sneaky") or {}).get("status") or {}
    ready = next(c for c in status.get("conditions", ()) if c["type"] == "Ready")
    assert (
        ready["reason"] == "Invalid" and f"denied range {server.service_cidr}" in (ready["message"])
    )
    assert admin.get("Service", namespace, "sneaky") is None
