"""deploy/ as users apply it: rendered by kustomize, every object accepted by the API server
(server-side dry run) in a namespace enforcing the "restricted" Pod Security Standard, the
monitoring objects validated against the Prometheus Operator's own CRDs, and syncd run
under the namespaced component's RBAC as well as the cluster-wide one."""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from harness.helpers import (
    dry_run_apply,
    kustomize_build,
    pod_templates,
    run_once,
    slices_of,
    target,
    wait_for,
    write_config,
)
from harness.kube_apiserver import REPO

pytestmark = pytest.mark.apiserver

DEPLOY = REPO / "deploy"
COMPONENTS = ("monitoring", "cronjob", "namespaced", "endpoints", "consul")
# Every subset of the components, listed in both orders a user may list them in. The
# namespaced Roles include Endpoints writes in their namespaces already: "endpoints" (a
# cluster-wide grant) is not combined with "namespaced".
VARIANTS = {
    "+".join(order) or "base": [f"components/{name}" for name in order]
    for size in range(len(COMPONENTS) + 1)
    for subset in itertools.combinations(COMPONENTS, size)
    if not {"namespaced", "endpoints"} <= set(subset)
    for order in {subset, subset[::-1]}
}
# ExternalService resources beside the others (not every subset again: it adds a CRD, its
# roles and a settings ConfigMap, and touches nothing the others do)
VARIANTS |= {
    "+".join(order): [f"components/{name}" for name in order]
    for order in (
        ("resources",),
        ("namespaced", "resources"),
        ("resources", "cronjob"),
        ("resources-for-editors", "resources"),
        ("resources", "openshift-restricted-endpoints"),
    )
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_is_accepted_and_every_pod_passes_pod_security_restricted(
    variant, apiserver, admin_api, monitoring_crds, tmp_path
):
    documents = kustomize_build(tmp_path, VARIANTS[variant])
    kinds = sorted({d["kind"] for d in documents})
    core = k8s.CoreV1Api(admin_api)
    for namespace in {d["metadata"].get("namespace") for d in documents} - {None}:
        try:
            core.read_namespace(namespace)
        except k8s.ApiException:
            core.create_namespace({"metadata": {"name": namespace}})
    namespace_doc = next(d for d in documents if d["kind"] == "Namespace")
    assert namespace_doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    dry_run_apply(admin_api, documents)  # `kubectl apply --dry-run=server`
    # The restricted standard is enforced on Pods: each template, as a Pod, in syncd's
    # namespace (which enforces it) must be admitted.
    for template in pod_templates(documents):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "check-"},
            **template,
        }
        pod["metadata"] = {"generateName": "syncd-check-", "labels": template["metadata"]["labels"]}
        core.create_namespaced_pod("syncd", pod, dry_run="All")
    chosen = set(variant.split("+")) - {"base"}
    workload = "CronJob" if "cronjob" in chosen else "Deployment"
    expected = {workload, "ServiceAccount", "ConfigMap"}
    expected |= {"ServiceMonitor", "PrometheusRule"} if "monitoring" in chosen else set()
    dashboards = [d for d in documents if d["metadata"]["name"] == "syncd-dashboard"]
    assert len(dashboards) == ("monitoring" in chosen)
    for dashboard in dashboards:
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(dashboard["data"]["syncd.json"])["uid"] == "syncd"
    expected |= {"Role"} if "namespaced" in chosen else {"ClusterRole"}
    assert expected <= set(kinds), kinds
    if "cronjob" in chosen:
        assert "Deployment" not in kinds and "PodDisruptionBudget" not in kinds
    writes_endpoints = [
        rule
        for d in documents
        if d["kind"] == "ClusterRole"
        for rule in d["rules"]
        if "endpoints" in rule["resources"] and "create" in rule["verbs"]
    ]
    assert bool(writes_endpoints) == ("endpoints" in chosen)
    cluster_roles = {d["metadata"]["name"] for d in documents if d["kind"] == "ClusterRole"}
    assert "syncd-cluster-networks" in cluster_roles  # namespaced too: read-only Nodes
    if "resources" in chosen:
        assert "CustomResourceDefinition" in kinds
        assert {"syncd-externalservices", "syncd-externalservices-edit"} <= cluster_roles
        aggregated = {
            d["metadata"]["name"]
            for d in documents
            if d["kind"] == "ClusterRole"
            and d["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-edit")
        }
        wanted = {"syncd-externalservices-edit-aggregated"}
        assert aggregated == (wanted if "resources-for-editors" in chosen else set())
        (settings,) = [d for d in documents if d["metadata"]["name"] == "syncd-resources"]
        assert settings["data"]["SYNCD_RESOURCES"] == "true"
    restricted = [
        rule
        for d in documents
        if d["kind"] == "ClusterRole"
        for rule in d["rules"]
        if any(r.endswith("/restricted") for r in rule["resources"])
    ]
    assert bool(restricted) == ("openshift-restricted-endpoints" in chosen)
    if "namespaced" in chosen:
        assert "syncd" not in cluster_roles
        (settings,) = [d for d in documents if d["metadata"]["name"] == "syncd-settings"]
        assert settings["data"]["SYNCD_NAMESPACES"] == "storage"
    if "consul" in chosen:
        (consul,) = [d for d in documents if d["metadata"]["name"] == "syncd-consul"]
        assert consul["data"]["CONSUL_HTTP_TOKEN_FILE"] == "/etc/consul/token"
    assert any(d["kind"] == "NetworkPolicy" for d in documents)
    (workload_doc,) = [d for d in documents if d["kind"] == workload]
    container = pod_templates([workload_doc])[0]["spec"]["containers"][0]
    assert {"configMapRef": {"name": "syncd-settings", "optional": True}} in container["envFrom"]


def test_the_cronjob_component_in_an_overlay_of_your_own_gets_your_image(tmp_path):
    """docs/deploy.md: any overlay works. The base's `images:` does not reach objects a
    component adds in your overlay: the CronJob takes the Deployment's image instead."""
    import shutil

    shutil.copytree(DEPLOY, tmp_path / "deploy")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../deploy]\ncomponents: [../deploy/components/cronjob]\n"
    )
    (cronjob,) = [d for d in kustomize_build(overlay) if d["kind"] == "CronJob"]
    (container,) = pod_templates([cronjob])[0]["spec"]["containers"]
    assert container["image"] == "registry.example.com/syncd:0.2.0"


def test_the_deployment_asks_for_no_fixed_uid_and_two_replicas_with_probes(tmp_path):
    (deployment,) = [d for d in kustomize_build(tmp_path, []) if d["kind"] == "Deployment"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (
        "runAsUser" not in pod["securityContext"]
        and "runAsUser" not in container["securityContext"]
    )
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"livenessProbe", "readinessProbe", "startupProbe"} <= set(container)
    assert "--leader-elect" in container["args"]
    assert container["image"] == "registry.example.com/syncd:0.2.0"  # from images:


def _namespaced_service_account(api, namespace: str) -> str:
    """A service account bound only by the namespaced component's Role, in `namespace`,
    with a token from the TokenRequest API; returns the token."""
    name = f"ns-{namespace}"
    core, rbac = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account("syncd", {"metadata": {"name": name}})
    role, binding = yaml.safe_load_all((DEPLOY / "components/namespaced/role.yaml").read_text())
    role["metadata"]["namespace"] = namespace
    binding["metadata"]["namespace"] = namespace
    binding["subjects"] = [{"kind": "ServiceAccount", "name": name, "namespace": "syncd"}]
    rbac.create_namespaced_role(namespace, role)
    rbac.create_namespaced_role_binding(namespace, binding)
    request = core.create_namespaced_service_account_token(
        name, "syncd", {"spec": {"expirationSeconds": 3600}}
    )
    return request.status.token


def test_syncd_runs_under_the_namespaced_rbac_inside_its_namespaces_only(
    apiserver, admin_api, admin, namespace, tmp_path
):
    token = _namespaced_service_account(admin_api, namespace)
    kubeconfig = tmp_path / "kubeconfig"
    ca = base64.b64encode((apiserver.workdir / "certs" / "apiserver.crt").read_bytes()).decode()
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": apiserver.url, "certificate-authority-data": ca},
                    }
                ],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    config = write_config(tmp_path / "c.yaml", target(namespace, "scoped", ["198.51.100.1:8080"]))

    mark = apiserver.audit.mark()
    result = run_once(config, kubeconfig, "--namespaces", namespace, check=0)
    assert "converged: 1 target, 2 writes" in result.stderr
    assert slices_of(admin, namespace, "scoped")
    user = f"system:serviceaccount:syncd:ns-{namespace}"
    # outside it, only the cluster's own networks, read (ClusterRole syncd-cluster-networks;
    # this account lacks it: a 403, and the file's targets go on)
    networks = {("list", "nodes"), ("list", "servicecidrs"), ("get", "")}
    outside = [
        e
        for e in apiserver.audit.since(mark, user=user)
        if e.resource and e.namespace != namespace and (e.verb, e.resource) not in networks
    ]
    assert outside == [], f"read or wrote outside its namespace: {outside}"

    # The CronJob of cronjob + namespaced (either order): its arguments, and the namespaces
    # from the syncd-settings ConfigMap its container reads (edited as a user would).
    for order in (["cronjob", "namespaced"], ["namespaced", "cronjob"]):
        documents = kustomize_build(tmp_path, [f"components/{name}" for name in order])
        (cronjob,) = [d for d in documents if d["kind"] == "CronJob"]
        container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        args = [a for a in container["args"] if not a.startswith("--config=")]
        (settings,) = [d for d in documents if d["metadata"]["name"] == "syncd-settings"]
        env = {**os.environ, **settings["data"], "SYNCD_NAMESPACES": namespace}
        command = [sys.executable, "-m", "syncd", *args, f"--config={config}"]
        job = subprocess.run(
            [*command, f"--kubeconfig={kubeconfig}"],
            capture_output=True, text=True, cwd=REPO, env=env, check=False, timeout=120,
        )  # fmt: skip
        assert job.returncode == 0, job.stdout + job.stderr

    # Without --namespaces it would list the whole cluster, which its Role does not allow.
    denied = run_once(config, kubeconfig, check=1)
    assert "403" in denied.stderr and "Traceback" not in denied.stderr

    # A target outside its namespaces is refused before anything is sent.
    other = f"{namespace}-other"
    elsewhere = write_config(tmp_path / "e.yaml", target(other, "x", ["198.51.100.2:80"]))
    refused = run_once(elsewhere, kubeconfig, "--namespaces", namespace, check=2)
    assert "targets outside --namespaces" in refused.stderr and f"{other}/x" in refused.stderr


def _overlay_config(tmp_path: Path, name: str, namespace: str, service: str) -> Path:
    """A second install's overlay of deploy/: its own namespace, owner id and target; the
    config.yaml its ConfigMap carries, as the pod would read it."""
    overlay = tmp_path / name
    overlay.mkdir()
    config = {
        "version": 1,
        "owner_id": name,
        "targets": [target(namespace, service, ["198.51.100.40:8080"])],
    }
    (overlay / "config.yaml").write_text(yaml.safe_dump(config))
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": f"syncd-{name}",
                "resources": [os.path.relpath(DEPLOY, overlay)],
                "configMapGenerator": [
                    {
                        "name": "syncd-config",
                        "namespace": "syncd",
                        "behavior": "replace",
                        "files": ["config.yaml"],
                    }
                ],
            }
        )
    )
    (configmap,) = [
        d
        for d in kustomize_build(overlay)
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("syncd-config")
    ]
    rendered = tmp_path / f"{name}.yaml"
    rendered.write_text(configmap["data"]["config.yaml"])
    return rendered


def test_two_installs_of_deploy_in_one_cluster_never_prune_each_other(
    apiserver, admin, namespace, tmp_path
):
    # owner ids of this test's own: the cluster is shared with the other tests
    first = _overlay_config(tmp_path, f"{namespace}-a", namespace, "first")
    second = _overlay_config(tmp_path, f"{namespace}-b", namespace, "second")
    for config in (first, second, first, second):
        result = run_once(config, apiserver.syncd_kubeconfig, check=0)
        assert "deleted" not in result.stderr, result.stderr
    assert slices_of(admin, namespace, "first") and slices_of(admin, namespace, "second")


def test_the_readme_order_once_then_deploy_takes_over_without_conflict(
    apiserver, admin, namespace, tmp_path
):
    """`run --once` of config/ceph-rgw.yaml, then the Deployment's deploy/config.yaml: the
    same identity (owner_id ceph-rgw in both), so the second finds its own objects."""
    sources = (REPO / "config" / "ceph-rgw.yaml", DEPLOY / "config.yaml")
    identities = {yaml.safe_load(source.read_text())["owner_id"] for source in sources}
    assert identities == {"ceph-rgw"}, identities  # one identity: the Deployment takes over
    for source in sources:
        data = yaml.safe_load(source.read_text())
        data["targets"][0]["namespace"] = namespace
        data["owner_id"] = namespace  # still one identity, and this test's own in a shared cluster
        config = tmp_path / source.parent.name / "config.yaml"  # the name deploy/ gives it
        config.parent.mkdir(exist_ok=True)
        config.write_text(yaml.safe_dump(data))
        result = run_once(config, apiserver.syncd_kubeconfig, check=0)
        assert "CONFLICT" not in result.stderr and "warning: owner id" not in result.stderr
    assert "converged: 1 target, 0 writes" in result.stderr


def _granted() -> set[tuple[str, str]]:
    """(resource, verb) pairs deploy/ grants syncd in cluster-wide mode with Endpoints."""
    documents = [
        *yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()),
        *yaml.safe_load_all((DEPLOY / "components/endpoints/rbac.yaml").read_text()),
    ]
    return {
        (resource, verb)
        for d in documents
        if d["kind"] in ("ClusterRole", "Role")
        for rule in d["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_every_verb_deploy_grants_is_one_syncd_uses(
    apiserver, admin_api, admin, namespace, daemon, tmp_path
):
    """A full run (create, update, patch, conflict, prune, the daemon's cache and lease),
    and the audit log's (resource, verb) pairs of syncd's user: nothing granted unused."""
    core = k8s.CoreV1Api(admin_api)
    core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "theirs"}, "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]}},
    )
    mark = apiserver.audit.mark()
    backends = tmp_path / "b.yaml"
    backends.write_text(yaml.safe_dump(["198.51.100.1:8080", "198.51.100.2:8080"]))
    both = {**target(namespace, "both", []), "output": "both", "guards": {"confirm_after": 1}}
    both["sources"] = [{"type": "static", "file": str(backends)}]
    config = write_config(
        tmp_path / "c.yaml", both, target(namespace, "theirs", ["198.51.100.3:80"])
    )
    run_once(config, apiserver.syncd_kubeconfig, "--owner-id", namespace, check=1)  # a conflict
    backends.write_text(yaml.safe_dump([]))  # a removal held, then the target read again
    run_once(config, apiserver.syncd_kubeconfig, "--owner-id", namespace, check=1)
    backends.write_text(yaml.safe_dump(["198.51.100.1:8080", "198.51.100.2:8080"]))
    run_once(config, apiserver.syncd_kubeconfig, "--owner-id", namespace, check=1)
    backends.write_text(yaml.safe_dump(["198.51.100.1:8080"]))  # slices and Endpoints updated
    run_once(config, apiserver.syncd_kubeconfig, "--owner-id", namespace, check=1)
    changed = {**both, "ports": [{"name": "http", "port": 81}]}  # the Service is patched
    write_config(tmp_path / "c.yaml", changed)
    run_once(config, apiserver.syncd_kubeconfig, "--owner-id", namespace, check=0)
    write_config(tmp_path / "c.yaml", target(namespace, "other", ["198.51.100.4:80"]))
    run_once(config, apiserver.syncd_kubeconfig, "--owner-id", namespace, check=0)  # prunes
    process = daemon(config, "--leader-elect", "--lease-namespace", "syncd")
    wait_for(lambda: "became the leader" in process.log_path.read_text(), "the lease")
    time.sleep(5)  # a renewal or two
    used = {(e.resource, e.verb) for e in apiserver.audit.since(mark) if e.code != 403}
    unused = _granted() - used
    assert not unused, f"granted but never used: {sorted(unused)}"
