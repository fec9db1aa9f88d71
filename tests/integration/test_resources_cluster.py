"""ExternalServices with the cluster's own controllers (the real kube-controller-manager's
garbage collector and ClusterRole aggregation, on an API server of this module's own):
what syncd wrote for a resource goes with it even when syncd is not running, and the
built-in view role lets a namespace's viewers read them, and the edit role lets its
editors declare them once the admin chooses so (components/resources-for-editors)."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils

from harness.helpers import REPO, run_once, slices_of, target, wait_for, write_config
from harness.kube_apiserver import stop_process
from harness.syncd_process import start_syncd
from syncd.kube import Kube, KubeSettings

pytestmark = pytest.mark.apiserver

NAMESPACE = "team-a"


def test_without_the_crd_the_daemon_runs_the_files_targets_and_resources_join_later(
    private_apiserver, tmp_path
):
    """--resources where the CRD is not installed yet: the file's targets are applied (not
    held hostage), the log says what is missing, and once the CRD and a resource exist the
    resource is applied too; nothing is pruned meanwhile."""
    server = private_apiserver
    admin = Kube.connect(KubeSettings(kubeconfig=str(server.admin_kubeconfig)))
    api = server.admin_client()
    try:
        k8s.CoreV1Api(api).create_namespace({"metadata": {"name": "early"}})
    finally:
        api.close()
    config = write_config(
        tmp_path / "c.yaml", target("early", "from-file", ["192.0.2.95:80"]), owner_id="early"
    )
    log = tmp_path / "daemon.log"
    process = start_syncd(config, server.syncd_kubeconfig, log, "--resources")
    try:
        wait_for(lambda: slices_of(admin, "early", "from-file"), "the file's target", timeout=90)
        assert "cannot list ExternalServices yet" in log.read_text()
        server.install_resources_component()
        admin.create(
            {
                "apiVersion": "syncd.io/v1alpha1",
                "kind": "ExternalService",
                "metadata": {"name": "later", "namespace": "early"},
                "spec": {
                    "ports": [{"name": "http", "port": 80}],
                    "sources": [{"type": "static", "backends": ["192.0.2.96:80"]}],
                },
            }
        )
        wait_for(lambda: slices_of(admin, "early", "later"), "the resource", timeout=90)
        assert slices_of(admin, "early", "from-file")
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def cluster(private_apiserver, controller_manager):
    """The private API server with the resources component and the controller manager."""
    private_apiserver.install_resources_component()
    api = private_apiserver.admin_client()
    try:
        k8s.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
    finally:
        api.close()
    return private_apiserver


def test_deleting_a_resource_while_syncd_is_not_running_removes_what_it_wrote(cluster, tmp_path):
    admin = Kube.connect(KubeSettings(kubeconfig=str(cluster.admin_kubeconfig)))
    admin.create(
        {
            "apiVersion": "syncd.io/v1alpha1",
            "kind": "ExternalService",
            "metadata": {"name": "db", "namespace": NAMESPACE},
            "spec": {
                "ports": [{"name": "pg", "port": 5432}],
                "sources": [{"type": "static", "backends": ["192.0.2.90:5432"]}],
            },
        }
    )
    config = tmp_path / "c.yaml"
    config.write_text("version: 1\nowner_id: gc-test\n")
    run_once(config, cluster.syncd_kubeconfig, "--resources", "--namespaces", NAMESPACE, check=0)
    assert admin.get("Service", NAMESPACE, "db") is not None
    assert slices_of(admin, NAMESPACE, "db")

    admin.delete("ExternalService", NAMESPACE, "db")  # syncd is not running: the GC acts
    wait_for(lambda: admin.get("Service", NAMESPACE, "db") is None, "the Service", timeout=60)
    wait_for(lambda: not slices_of(admin, NAMESPACE, "db"), "its slices", timeout=60)


def _allowed(api: k8s.ApiClient, user: str, verb: str, resource: str) -> bool:
    review = k8s.AuthorizationV1Api(api).create_subject_access_review(
        {
            "spec": {
                "user": user,
                "resourceAttributes": {
                    "group": "syncd.io",
                    "resource": resource,
                    "verb": verb,
                    "namespace": NAMESPACE,
                },
            }
        }
    )
    return bool(review.status.allowed)


def test_namespace_editors_declare_resources_and_viewers_read_them(cluster):
    api = cluster.admin_client()
    try:
        rbac = k8s.RbacAuthorizationV1Api(api)
        for user, role in (("dev", "edit"), ("auditor", "view")):
            rbac.create_namespaced_role_binding(
                NAMESPACE,
                {
                    "metadata": {"name": f"{user}-{role}"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": role,
                    },
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                    ],
                },
            )
        # view gains the rules (the controller manager aggregates them); edit does not until
        # the admin chooses it (components/resources-for-editors): CVE-2021-25740
        wait_for(lambda: _allowed(api, "auditor", "list", "externalservices"), "view aggregated")
        assert not _allowed(api, "auditor", "create", "externalservices")
        assert not _allowed(api, "dev", "create", "externalservices")
        aggregate = REPO / "deploy/components/resources-for-editors/aggregate.yaml"
        k8s_utils.create_from_yaml(api, str(aggregate))
        wait_for(lambda: _allowed(api, "dev", "create", "externalservices"), "edit aggregated")
        assert _allowed(api, "dev", "delete", "externalservices")
        assert not _allowed(api, "dev", "patch", "externalservices/status")  # syncd's alone
        syncd = "system:serviceaccount:syncd:syncd"
        assert _allowed(api, syncd, "watch", "externalservices")
        assert _allowed(api, syncd, "patch", "externalservices/status")
        assert not _allowed(api, syncd, "create", "externalservices")
    finally:
        api.close()
