"""IPv6 backends and the Service's families on real API servers: on a dual-stack cluster
the Service syncd creates for IPv6 backends gets an IPv6 ClusterIP (kube-proxy programs a
Service's endpoints of its own families only); on an IPv4-only cluster it is still created
(IPv4 only) and `run` and `check --kubeconfig` say the IPv6 endpoints go unused."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client as k8s

from harness.helpers import run_once, slices_of, syncd, target, write_config
from harness.kube_apiserver import KubeApiServer
from syncd.kube import Kube, KubeSettings
from tests.conftest import _started

pytestmark = pytest.mark.apiserver

BACKENDS = ["[2001:db8::10]:8080", "192.0.2.10:8080"]


@pytest.fixture(scope="module")
def dual_stack(tmp_path_factory):
    server = KubeApiServer(
        tmp_path_factory.mktemp("dual-stack"), service_cidr="10.96.0.0/16,fd00:10:96::/112"
    )
    _started(server, "dual-stack kube-apiserver")
    server.apply_deploy_rbac()
    yield server
    server.stop()


def _namespace(server: KubeApiServer) -> str:
    name = f"f-{uuid.uuid4().hex[:8]}"
    api = server.admin_client()
    try:
        k8s.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    finally:
        api.close()
    return name


def test_on_a_dual_stack_cluster_ipv6_backends_get_an_ipv6_cluster_ip(dual_stack, tmp_path):
    namespace = _namespace(dual_stack)
    config = write_config(tmp_path / "c.yaml", target(namespace, "db", BACKENDS))
    run_once(config, dual_stack.syncd_kubeconfig, "--owner-id", namespace, check=0)
    admin = Kube.connect(KubeSettings(kubeconfig=str(dual_stack.admin_kubeconfig)))
    service = admin.get("Service", namespace, "db")
    assert service["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    assert {s["addressType"] for s in slices_of(admin, namespace, "db")} == {"IPv4", "IPv6"}
    rerun = run_once(config, dual_stack.syncd_kubeconfig, "--owner-id", namespace, check=0)
    assert "0 writes" in rerun.stderr and "programs none" not in rerun.stderr


def test_on_an_ipv4_cluster_the_unused_ipv6_endpoints_are_said(apiserver, namespace, tmp_path):
    config = write_config(tmp_path / "c.yaml", target(namespace, "db", BACKENDS))
    first = run_once(config, apiserver.syncd_kubeconfig, "--owner-id", namespace, check=0)
    assert "converged" in first.stderr
    again = run_once(config, apiserver.syncd_kubeconfig, "--owner-id", namespace, check=0)
    assert "has ClusterIPs of IPv4 only: kube-proxy programs none of its 1 IPv6 endpoints" in (
        again.stderr
    )
    checked = syncd(
        "check", "--config", config, "--kubeconfig", apiserver.syncd_kubeconfig, check=0
    )
    assert "IPv6 backends, and this cluster's Service network has no IPv6 range" in (checked.stderr)
