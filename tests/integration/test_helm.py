"""charts/syncd as users install it: `helm lint` and `helm template` (the real helm, built
from its Go module like the servers) for each combination of its values, every rendered
object accepted by the API server (server-side dry run) with every pod template admitted
where the "restricted" Pod Security Standard is enforced, and the same choices as
deploy/'s components."""

from __future__ import annotations

import itertools
import subprocess

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from harness.helpers import pod_templates, syncd
from harness.kube_apiserver import REPO, server_binaries

pytestmark = pytest.mark.apiserver

CHART = REPO / "charts" / "syncd"
RELEASE_NAMESPACE = "syncd"
CHOICES = {
    "cronjob": ["--set", "mode=cronjob"],
    "namespaced": ["--set", "namespaces={storage}"],
    "endpoints": ["--set", "endpoints=true"],
    "consul": ["--set", "consul.enabled=true"],
    "monitoring": ["--set", "monitoring.serviceMonitor=true,monitoring.prometheusRule=true"],
    "single": ["--set", "replicas=1"],
}
VARIANTS = {
    "+".join(subset) or "defaults": subset
    for size in range(len(CHOICES) + 1)
    for subset in itertools.combinations(sorted(CHOICES), size)
    if not {"namespaced", "endpoints"} <= set(subset)  # namespaced Roles include Endpoints
    if not {"cronjob", "single"} <= set(subset)  # replicas do not apply to the CronJob
}


def _helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [server_binaries()["helm"], *args], capture_output=True, text=True, check=False
    )


def _template(choices: tuple[str, ...], release: str = "syncd") -> list[dict]:
    flags = [flag for choice in choices for flag in CHOICES[choice]]
    result = _helm("template", release, str(CHART), "--namespace", RELEASE_NAMESPACE, *flags)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_helm_lint_passes_for_every_combination_of_values():
    for choices in VARIANTS.values():
        flags = [flag for choice in choices for flag in CHOICES[choice]]
        result = _helm("lint", "--strict", str(CHART), *flags)
        assert result.returncode == 0, (choices, result.stdout, result.stderr)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_accepted_and_every_pod_passes_restricted(
    variant,
    admin_api,
    monitoring_crds,
    tmp_path,
):
    chosen = set(VARIANTS[variant])
    documents = _template(VARIANTS[variant])
    core = k8s.CoreV1Api(admin_api)
    for namespace in {RELEASE_NAMESPACE, "storage"}:
        try:
            core.read_namespace(namespace)
        except k8s.ApiException:
            core.create_namespace({"metadata": {"name": namespace}})
    dynamic = DynamicClient(admin_api)
    for document in documents:  # `helm install --dry-run=server`: validated, not stored
        resource = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        dynamic.server_side_apply(
            resource,
            body=document,
            name=document["metadata"]["name"],
            namespace=document["metadata"].get("namespace")
            or (RELEASE_NAMESPACE if resource.namespaced else None),
            field_manager="syncd-tests",
            force_conflicts=True,
            dry_run="All",
        )
    for template in pod_templates(documents):
        pod = {"apiVersion": "v1", "kind": "Pod", **template}
        pod["metadata"] = {"generateName": "syncd-check-", "labels": template["metadata"]["labels"]}
        core.create_namespaced_pod("syncd", pod, dry_run="All")  # enforces "restricted"
    kinds = {d["kind"] for d in documents}
    workload = "CronJob" if "cronjob" in chosen else "Deployment"
    assert {workload, "ServiceAccount", "ConfigMap", "NetworkPolicy"} <= kinds, kinds
    assert ("Role" in kinds) or "namespaced" not in chosen
    assert ("ClusterRole" in kinds) == ("namespaced" not in chosen)
    container = pod_templates(documents)[0]["spec"]["containers"][0]
    args = container["args"]
    assert ("--once" in args) == ("cronjob" in chosen)
    leading = workload == "Deployment" and "single" not in chosen
    assert ("--leader-elect" in args) == leading
    assert ("PodDisruptionBudget" in kinds) == leading
    if "namespaced" in chosen:
        assert "--namespaces=storage" in args
        roles = [d for d in documents if d["kind"] == "Role"]
        (role,) = [d for d in roles if d["metadata"].get("namespace") == "storage"]
        assert any("endpoints" in r["resources"] for r in role["rules"])
    writes_endpoints = any(
        "endpoints" in rule["resources"] and "create" in rule["verbs"]
        for d in documents
        if d["kind"] == "ClusterRole"
        for rule in d["rules"]
    )
    assert writes_endpoints == ("endpoints" in chosen)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ("CONSUL_HTTP_TOKEN_FILE" in env) == ("consul" in chosen)
    if "monitoring" in chosen:
        assert "PrometheusRule" in kinds
        assert ("ServiceMonitor" in kinds) == (workload == "Deployment")


def test_the_chart_and_deploy_render_the_same_config_and_syncd_checks_it(tmp_path):
    """The chart's default config is a valid syncd config (`syncd check`), and the release
    name gives every object its own name (two releases never share RBAC or a Lease)."""
    (config_map,) = [d for d in _template(()) if d["kind"] == "ConfigMap"]
    config = tmp_path / "config.yaml"
    config.write_text(config_map["data"]["config.yaml"])
    syncd("check", "--config", config, check=0)
    names_a = {(d["kind"], d["metadata"]["name"]) for d in _template((), "team-a")}
    names_b = {(d["kind"], d["metadata"]["name"]) for d in _template((), "team-b")}
    assert not names_a & names_b
    deployment = next(d for d in _template((), "team-a") if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--lease-name=team-a-syncd" in args
