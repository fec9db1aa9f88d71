"""The cluster's own networks on a real API server: ExternalServices pointing at a pod, a
node or a ClusterIP are refused (status, Event, nothing written) while an outside address
is applied; the admin's config lets one namespace through; a Node added later withdraws a
resource that now points into it; and OpenShift's refusal of such a write (emulated with a
ValidatingAdmissionPolicy doing what its RestrictedEndpointsAdmission does) is reported as
such, and lifted by the RBAC piece deploy/ ships for it.

Nodes are cluster-wide, so this module has an API server of its own."""

from __future__ import annotations

import uuid

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils

from harness.helpers import REPO, run_once, sample, scrape, slices_of, target, wait_for
from harness.kube_apiserver import free_port, stop_process
from harness.syncd_process import start_syncd
from syncd.errors import KubeError
from syncd.kube import Kube, KubeSettings

pytestmark = pytest.mark.apiserver

POD_IP, NODE_IP, OUTSIDE = "10.244.1.5", "172.18.0.2", "192.0.2.20"


def _node(name: str, pod_cidr: str, address: str | None = None) -> dict:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
    }
    if address:
        node["status"] = {"addresses": [{"type": "InternalIP", "address": address}]}
    return node


def _nodes(server, change) -> None:
    api = server.admin_client()
    try:
        change(k8s.CoreV1Api(api))
    finally:
        api.close()


@pytest.fixture(scope="module")
def cluster(private_apiserver):
    """A Node (pod network 10.244.1.0/24, InternalIP 172.18.0.2), a Service with a
    ClusterIP in a namespace of its own, and the resources component."""
    server = private_apiserver
    server.install_resources_component()
    admin = Kube.connect(KubeSettings(kubeconfig=str(server.admin_kubeconfig)))
    api = server.admin_client()
    try:
        core = k8s.CoreV1Api(api)
        core.create_node(_node("node-1", "10.244.1.0/24"))
        core.patch_node_status("node-1", _node("node-1", "10.244.1.0/24", NODE_IP))
        core.create_namespace({"metadata": {"name": "team-b"}})
        service = core.create_namespaced_service(
            "team-b", {"metadata": {"name": "db"}, "spec": {"ports": [{"port": 5432}]}}
        )
    finally:
        api.close()
    yield server, admin, service.spec.cluster_ip
    admin.close()


@pytest.fixture
def team(cluster):
    """A fresh namespace for one test's resources."""
    server, _, _ = cluster
    name = f"team-{uuid.uuid4().hex[:8]}"
    api = server.admin_client()
    try:
        k8s.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    finally:
        api.close()
    return name


def _resource(namespace: str, name: str, backend: str) -> dict:
    return {
        "apiVersion": "syncd.io/v1alpha1",
        "kind": "ExternalService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "ports": [{"name": "http", "port": 80}],
            "sources": [{"type": "static", "backends": [f"{backend}:8080"]}],
        },
    }


def _ready(admin: Kube, namespace: str, name: str) -> dict:
    obj = admin.get("ExternalService", namespace, name) or {}
    conditions = (obj.get("status") or {}).get("conditions") or ()
    return next((c for c in conditions if c["type"] == "Ready"), {})


def _events(admin: Kube, namespace: str, name: str) -> list[dict]:
    return [
        e
        for e in admin.list("Event", namespace)
        if e["involvedObject"].get("kind") == "ExternalService"
        and e["involvedObject"].get("name") == name
    ]


def _config(tmp_path, text: str = "version: 1\nowner_id: networks\n"):
    path = tmp_path / "syncd.yaml"
    path.write_text(text)
    return path


def test_resources_pointing_into_the_cluster_are_refused_and_an_outside_one_applied(
    cluster, team, tmp_path
):
    server, admin, cluster_ip = cluster
    for name, backend in (
        ("pod", POD_IP),
        ("node", NODE_IP),
        ("clusterip", cluster_ip),
        ("outside", OUTSIDE),
    ):
        admin.create(_resource(team, name, backend))
    result = run_once(
        _config(tmp_path), server.syncd_kubeconfig, "--resources", "--namespaces", team, check=1
    )
    assert "CLUSTER-ADDRESS" in result.stderr
    assert slices_of(admin, team, "outside")
    assert _ready(admin, team, "outside")["status"] == "True"
    for name, says in (
        ("pod", f"{POD_IP} is in 10.244.1.0/24 (the pod network of Node node-1)"),
        ("node", f"{NODE_IP} is in {NODE_IP}/32 (an address of Node node-1)"),
        ("clusterip", f"{cluster_ip} is in 10.96.0.0/16 (the Service network, ServiceCIDR"),
    ):
        ready = _ready(admin, team, name)
        assert ready["status"] == "False" and ready["reason"] == "ClusterAddress", ready
        assert says in ready["message"]
        assert admin.get("Service", team, name) is None  # nothing written for it
        assert not slices_of(admin, team, name)
        (event,) = _events(admin, team, name)
        assert event["reason"] == "ClusterAddressRefused" and says in event["message"]


def test_only_the_admins_config_lets_a_namespace_point_into_the_cluster(cluster, team, tmp_path):
    server, admin, _ = cluster
    admin.create(_resource(team, "pods", POD_IP))
    allowed = _config(
        tmp_path,
        "version: 1\nowner_id: networks\n"
        f"address_policy:\n  cluster_network_namespaces: [{team}]\n",
    )
    run_once(allowed, server.syncd_kubeconfig, "--resources", "--namespaces", team, check=0)
    assert slices_of(admin, team, "pods")
    assert _ready(admin, team, "pods")["status"] == "True"


def test_a_node_added_later_withdraws_a_resource_that_now_points_into_it(cluster, team, tmp_path):
    """The network changed, not the spec: the resource's endpoints go, it says why, the
    gauge says so; the Node gone, it is applied again."""
    server, admin, _ = cluster
    admin.create(_resource(team, "vm", "10.250.7.5"))
    metrics = f"127.0.0.1:{free_port()}"
    log = tmp_path / "daemon.log"
    process = start_syncd(
        _config(tmp_path),
        server.syncd_kubeconfig,
        log,
        "--resources",
        "--namespaces",
        team,
        "--metrics-address",
        metrics,
    )
    try:
        wait_for(lambda: slices_of(admin, team, "vm"), "the resource applied", timeout=60)
        _nodes(server, lambda core: core.create_node(_node("node-7", "10.250.7.0/24")))
        wait_for(lambda: not slices_of(admin, team, "vm"), "its endpoints withdrawn", timeout=60)
        assert admin.get("Service", team, "vm") is not None  # the name still resolves
        ready = wait_for(
            lambda: (r := _ready(admin, team, "vm")).get("reason") == "ClusterAddress" and r,
            "its status",
            timeout=30,
        )
        assert (
            "10.250.7.5 is in 10.250.7.0/24 (the pod network of Node node-7)" in (ready["message"])
        )
        gauge = sample(scrape(metrics), "syncd_target_cluster_address", target=f"{team}/vm")
        assert gauge == 1
        _nodes(server, lambda core: core.delete_node("node-7"))
        wait_for(lambda: slices_of(admin, team, "vm"), "applied again", timeout=60)
    finally:
        stop_process(process)
    assert "Traceback" not in log.read_text()


RESTRICTED_POLICY = """
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: restricted-endpoints}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: ["discovery.k8s.io"]
        apiVersions: ["v1"]
        operations: ["CREATE", "UPDATE"]
        resources: ["endpointslices"]
  variables:
    - name: restricted
      expression: >-
        object.endpoints.orValue([]).map(e, e.addresses[0])
        .filter(a, cidr('10.244.0.0/16').containsIP(a))
  validations:
    - expression: >-
        size(variables.restricted) == 0 ||
        authorizer.group('discovery.k8s.io').resource('endpointslices')
        .subresource('restricted').check('create').allowed()
      messageExpression: "'endpoint address ' + variables.restricted[0] + ' is not allowed'"
      reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: restricted-endpoints}
spec:
  policyName: restricted-endpoints
  validationActions: [Deny]
"""


def test_openshifts_refusal_of_a_cluster_address_is_reported_as_such_and_lifted_by_its_rbac(
    cluster, team, tmp_path
):
    """A file target (the admin's: syncd itself only warns) pointing into 10.244.0.0/16,
    where an admission policy does what OpenShift's RestrictedEndpointsAdmission does."""
    server, admin, _ = cluster
    api = server.admin_client()
    try:
        k8s_utils.create_from_yaml(api, yaml_objects=list(yaml.safe_load_all(RESTRICTED_POLICY)))
    except k8s_utils.FailToCreateError as exc:
        assert "AlreadyExists" in str(exc)
    config = tmp_path / "file.yaml"
    config.write_text(
        yaml.safe_dump({"version": 1, "targets": [target(team, "pods", ["10.244.9.9:8080"])]})
    )
    syncd_kube = Kube.connect(KubeSettings(kubeconfig=str(server.syncd_kubeconfig)))
    probe = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"generateName": "probe-", "namespace": team},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.9.8"]}],
    }

    def in_force() -> bool:  # a policy takes a moment to be enforced once created
        try:
            syncd_kube.create(probe, dry_run=True)
        except KubeError as exc:
            return exc.status == 403
        return False

    wait_for(in_force, "the policy in force", timeout=60, interval=0.5)
    result = run_once(config, server.syncd_kubeconfig, check=1)
    assert "CLUSTER-ADDRESS" in result.stderr, result.stderr
    assert "endpoint address 10.244.9.9 is not allowed" in result.stderr
    assert "RestrictedEndpointsAdmission" in result.stderr
    assert not slices_of(admin, team, "pods")
    rbac = REPO / "deploy" / "components" / "openshift-restricted-endpoints" / "rbac.yaml"
    try:
        k8s_utils.create_from_yaml(api, yaml_objects=list(yaml.safe_load_all(rbac.read_text())))
    finally:
        api.close()
    wait_for(
        lambda: run_once(config, server.syncd_kubeconfig, check=None).returncode == 0,
        "the write allowed with endpointslices/restricted",
        timeout=30,
        interval=1,
    )
    assert slices_of(admin, team, "pods")
