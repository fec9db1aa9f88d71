"""charts/syncd as users install it: `helm lint` and `helm template` (the real helm, built
from its Go module like the servers) for each combination of its values, every rendered
object accepted by the API server (server-side dry run) with every pod template admitted
where the "restricted" Pod Security Standard is enforced, and the same choices as
deploy/'s components."""

from __future__ import annotations

import copy
import itertools
import re
import subprocess

import pytest
import yaml
from kubernetes import client as k8s

from harness.helpers import (
    dry_run_apply,
    kustomize_build,
    pod_templates,
    slices_of,
    syncd,
    target,
)
from harness.kube_apiserver import REPO, server_binaries

pytestmark = pytest.mark.apiserver

CHART = REPO / "charts" / "syncd"
RELEASE_NAMESPACE = "syncd"
CHOICES = {
    "cronjob": ["--set", "mode=cronjob"],
    "namespaced": ["--set", "namespaces={storage}"],
    "endpoints": ["--set", "endpoints=true"],
    "consul": ["--set", "consul.enabled=true"],
    "monitoring": [
        "--set",
        "monitoring.serviceMonitor=true,monitoring.prometheusRule=true,monitoring.dashboard=true",
    ],
    "single": ["--set", "replicas=1"],
}
EXTRA_CHOICES = {
    "external-services": ["--set", "externalServices.enabled=true"],
    "for-editors": ["--set", "externalServices.forEditors=true"],
    "restricted-endpoints": ["--set", "openshift.restrictedEndpoints=true"],
    "owner-id": ["--set", "ownerId=odf-rgw"],
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


# deploy/'s config: the chart has no default one (an install must not point Services
# anywhere by itself)
CONFIG = ["--set-file", f"config={REPO / 'deploy' / 'config.yaml'}"]


def _template(choices: tuple[str, ...], release: str = "syncd", *values: str) -> list[dict]:
    flags = [flag for choice in choices for flag in {**CHOICES, **EXTRA_CHOICES}[choice]]
    result = _helm(
        "template", release, str(CHART), "--namespace", RELEASE_NAMESPACE, *CONFIG, *flags,
        *values,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_helm_lint_passes_for_every_combination_of_values():
    for choices in VARIANTS.values():
        flags = [flag for choice in choices for flag in CHOICES[choice]]
        result = _helm("lint", "--strict", str(CHART), *CONFIG, *flags)
        assert result.returncode == 0, (choices, result.stdout, result.stderr)


def test_a_mistake_in_the_values_is_refused_at_install_not_ignored():
    """`--set mode=cron` used to install no workload and "succeed"; no config installed
    the Ceph example's targets."""
    cron = _helm("template", "x", str(CHART), *CONFIG, "--set", "mode=cron")
    assert cron.returncode != 0 and "at '/mode': value must be one of 'daemon', 'cronjob'" in (
        cron.stderr
    )
    typo = _helm("template", "x", str(CHART), *CONFIG, "--set", "replica=3")
    assert typo.returncode != 0 and "additional properties 'replica' not allowed" in typo.stderr
    bad_id = _helm("template", "x", str(CHART), *CONFIG, "--set", "ownerId=Ceph_RGW")
    assert bad_id.returncode != 0 and "/ownerId" in bad_id.stderr
    nothing = _helm("template", "x", str(CHART))
    assert nothing.returncode != 0 and "config: give syncd's config file" in nothing.stderr


def test_resources_alone_need_no_config_and_syncd_accepts_the_one_written(tmp_path):
    documents = _helm("template", "x", str(CHART), "--set", "externalServices.enabled=true")
    assert documents.returncode == 0, documents.stderr
    (config_map,) = [
        d
        for d in yaml.safe_load_all(documents.stdout)
        if d and d["metadata"]["name"] == "x-syncd-config"
    ]
    config = tmp_path / "config.yaml"
    config.write_text(config_map["data"]["config.yaml"])
    syncd("check", "--config", config, "--resources", check=0)


def test_one_replica_keeps_leader_election_as_a_rolling_update_runs_two_pods():
    documents = _template(("single",))
    args = pod_templates(documents)[0]["spec"]["containers"][0]["args"]
    assert "--leader-elect" in args
    assert any(d["metadata"]["name"] == "syncd-leader-election" for d in documents)


def test_operator_values_reach_the_pods_and_the_monitoring(tmp_path):
    """What operators set in charts like external-dns's (charts/syncd/README.md)."""
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "imagePullSecrets": [{"name": "registry"}],
                "extraArgs": ["--resync-interval=600"],
                "env": [{"name": "TZ", "value": "UTC"}],
                "envFrom": [{"secretRef": {"name": "extra"}}],
                "serviceAccount": {"create": True, "name": "robot", "annotations": {"a": "b"}},
                "podLabels": {"team": "storage"},
                "podSecurityContext": {"fsGroup": 1000},
                "containerSecurityContext": {"runAsUser": 1000},
                "priorityClassName": "system-cluster-critical",
                "topologySpreadConstraints": [
                    {"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
                ],
                "extraVolumes": [{"name": "backends", "configMap": {"name": "rgw"}}],
                "extraVolumeMounts": [{"name": "backends", "mountPath": "/etc/syncd/backends"}],
                "monitoring": {
                    "serviceMonitor": True,
                    "prometheusRule": True,
                    "interval": "15s",
                    "serviceMonitorLabels": {"release": "kube-prometheus-stack"},
                    "prometheusRuleLabels": {"release": "kube-prometheus-stack"},
                },
                "networkPolicy": {"extraFrom": [{"namespaceSelector": {}}]},
                "livenessProbe": {"tcpSocket": {"port": "http"}},
                "fullnameOverride": "rgw-sync",
            }
        )
    )
    documents = _template((), "x", "--values", str(values))
    by_kind = {d["kind"]: d for d in documents}
    pod = pod_templates(documents)[0]
    container = pod["spec"]["containers"][0]
    assert by_kind["Deployment"]["metadata"]["name"] == "rgw-sync"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["spec"]["serviceAccountName"] == "robot"
    assert by_kind["ServiceAccount"]["metadata"]["annotations"] == {"a": "b"}
    assert pod["metadata"]["labels"]["team"] == "storage"
    assert pod["spec"]["securityContext"] == {
        "fsGroup": 1000, "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert container["securityContext"]["runAsUser"] == 1000
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["topologySpreadConstraints"][0]["topologyKey"] == "zone"
    assert "--resync-interval=600" in container["args"]
    assert {"name": "TZ", "value": "UTC"} in container["env"]
    assert container["envFrom"] == [{"secretRef": {"name": "extra"}}]
    assert {"name": "backends", "mountPath": "/etc/syncd/backends"} in container["volumeMounts"]
    assert container["livenessProbe"] == {"tcpSocket": {"port": "http"}}
    monitor = by_kind["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert by_kind["PrometheusRule"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert {"namespaceSelector": {}} in by_kind["NetworkPolicy"]["spec"]["ingress"][0]["from"]


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
    dry_run_apply(admin_api, documents, RELEASE_NAMESPACE)  # `helm install --dry-run=server`
    for template in pod_templates(documents):
        pod = {"apiVersion": "v1", "kind": "Pod", **template}
        pod["metadata"] = {"generateName": "syncd-check-", "labels": template["metadata"]["labels"]}
        core.create_namespaced_pod("syncd", pod, dry_run="All")  # enforces "restricted"
    kinds = {d["kind"] for d in documents}
    workload = "CronJob" if "cronjob" in chosen else "Deployment"
    assert {workload, "ServiceAccount", "ConfigMap", "NetworkPolicy"} <= kinds, kinds
    assert ("Role" in kinds) or "namespaced" not in chosen
    cluster_roles = {d["metadata"]["name"] for d in documents if d["kind"] == "ClusterRole"}
    assert ("syncd" in cluster_roles) == ("namespaced" not in chosen)
    assert "syncd-cluster-networks" in cluster_roles  # read-only, in namespaced mode too
    container = pod_templates(documents)[0]["spec"]["containers"][0]
    args = container["args"]
    assert ("--once" in args) == ("cronjob" in chosen)
    # a rolling update overlaps two pods even with one replica: a Lease whenever a Deployment
    assert ("--leader-elect" in args) == (workload == "Deployment")
    assert ("PodDisruptionBudget" in kinds) == (workload == "Deployment" and "single" not in chosen)
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


def test_the_chart_renders_the_config_given_and_the_release_names_every_object(tmp_path):
    """The config given is the one mounted (`syncd check` takes it), and the release name
    gives every object its own name (two releases never share RBAC or a Lease)."""
    (config_map,) = [d for d in _template(()) if d["kind"] == "ConfigMap"]
    config = tmp_path / "config.yaml"
    config.write_text(config_map["data"]["config.yaml"])
    assert config.read_text() == (REPO / "deploy" / "config.yaml").read_text()
    syncd("check", "--config", config, check=0)
    names_a = {(d["kind"], d["metadata"]["name"]) for d in _template((), "team-a")}
    names_b = {(d["kind"], d["metadata"]["name"]) for d in _template((), "team-b")}
    assert not names_a & names_b
    deployment = next(d for d in _template((), "team-a") if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(arg.startswith("--lease-name") for arg in args)  # syncd-<owner id>


def _owner_env(documents: list[dict]) -> dict[str, str]:
    container = pod_templates(documents)[0]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if e["name"].endswith("OWNER_ID")}


def test_two_releases_with_no_owner_id_in_their_config_do_not_prune_each_other(
    apiserver, admin, namespace, tmp_path
):
    """Each release has its own identity (namespace and name), though both mount their
    config as config.yaml; ownerId beats the config's owner_id. Run as the pods would, on
    a real API server: the second release's run leaves the first's target alone."""
    one = _owner_env(_template((), "gateways"))
    assert one == {"SYNCD_DEFAULT_OWNER_ID": "syncd-gateways"}
    other = _owner_env(_template((), "databases"))
    assert other == {"SYNCD_DEFAULT_OWNER_ID": "syncd-databases"}
    assert _owner_env(_template(("owner-id",))) == {"SYNCD_OWNER_ID": "odf-rgw"}
    for release, env, service in (("a", one, "rgw"), ("b", other, "db")):
        directory = tmp_path / release
        directory.mkdir()
        config = directory / "config.yaml"  # as the chart mounts it
        config.write_text(
            yaml.safe_dump(
                {"version": 1, "targets": [target(namespace, service, ["192.0.2.7:80"])]}
            )
        )
        syncd("run", "--config", config, "--kubeconfig", apiserver.syncd_kubeconfig, "--once",
              check=0, env=env)  # fmt: skip
    assert slices_of(admin, namespace, "rgw") and slices_of(admin, namespace, "db")


# What only Helm adds: its release bookkeeping (labels, the annotation that rolls the pods
# on a config change, which kustomize does with a hash in the ConfigMap's name, the default
# owner id of the release).
HELM_ONLY_LABELS = {
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}
GENERATED_NAME = re.compile(r"^(syncd-config)-[a-z0-9]{10}$")  # kustomize's hash suffix


def _comparable(document: dict, rendered_by: str) -> dict:
    """An object as both tools should agree on it: without Helm's bookkeeping, without the
    namespace (Helm sets it at install), kustomize's hashed ConfigMap name without its hash,
    and without deploy/'s optional hooks (envFrom ConfigMaps and a Secret volume marked
    optional, which components fill; absent, they add nothing)."""
    document = copy.deepcopy(document)

    def clean(node):
        if isinstance(node, dict):
            for key in ("labels", "matchLabels", "selector"):
                if isinstance(node.get(key), dict):
                    node[key] = {k: v for k, v in node[key].items() if k not in HELM_ONLY_LABELS}
            (node.get("annotations") or {}).pop("checksum/config", None)
            if node.get("annotations") == {}:
                del node["annotations"]
            return {key: clean(value) for key, value in node.items()}
        if isinstance(node, list):
            return [clean(item) for item in node]
        if isinstance(node, str):
            return GENERATED_NAME.sub(r"\1", node)
        return node

    document["metadata"].pop("namespace", None)
    if rendered_by == "helm":  # the default owner id per release (deploy/'s config has one)
        for template in pod_templates([document]):
            for container in template["spec"]["containers"]:
                container["env"] = [
                    e for e in container["env"] if e["name"] != "SYNCD_DEFAULT_OWNER_ID"
                ]
    if rendered_by == "kustomize":
        for template in pod_templates([document]):
            spec = template["spec"]
            hooks = {
                v["name"] for v in spec.get("volumes", []) if v.get("secret", {}).get("optional")
            }
            spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in hooks]
            for container in spec["containers"]:
                container.pop("envFrom", None)  # every entry is an optional hook
                mounts = container.get("volumeMounts", [])
                container["volumeMounts"] = [m for m in mounts if m["name"] not in hooks]
    return clean(document)


@pytest.mark.parametrize(
    ("values", "components"),
    [
        ((), []),
        (("monitoring",), ["components/monitoring"]),
        (("cronjob",), ["components/cronjob"]),
    ],
    ids=["defaults", "monitoring", "cronjob"],
)
def test_the_chart_renders_the_same_objects_as_deploy(values, components, tmp_path):
    """The chart and deploy/ cannot drift: with the matching values, `helm template` gives
    exactly the objects of `kustomize build` (the Namespace aside: Helm installs into one)."""
    from_chart = {
        (d["kind"], d["metadata"]["name"]): _comparable(d, "helm") for d in _template(values)
    }
    from_deploy = {
        (d["kind"], GENERATED_NAME.sub(r"\1", d["metadata"]["name"])): _comparable(d, "kustomize")
        for d in kustomize_build(tmp_path, components)
        if d["kind"] != "Namespace"
    }
    assert sorted(from_chart) == sorted(from_deploy)
    for key, expected in from_deploy.items():
        assert from_chart[key] == expected, key


def test_external_services_bring_the_crd_of_deploy_and_their_roles(admin_api):
    """externalServices.enabled: the CRD (the same as deploy/components/resources'), syncd's
    ClusterRole to read them and write their status, the aggregated roles, --resources;
    every object accepted by the API server."""
    documents = _template(("external-services",))
    by_kind: dict[str, list[dict]] = {}
    for document in documents:
        by_kind.setdefault(document["kind"], []).append(document)
    (crd,) = by_kind["CustomResourceDefinition"]
    assert crd == yaml.safe_load((REPO / "deploy/components/resources/crd.yaml").read_text())
    roles = {r["metadata"]["name"]: r for r in by_kind["ClusterRole"]}
    assert roles["syncd-externalservices"]["rules"] == [
        {"apiGroups": ["syncd.io"], "resources": ["externalservices"], "verbs": ["list", "watch"]},
        {"apiGroups": ["syncd.io"], "resources": ["externalservices/status"], "verbs": ["patch"]},
    ]
    labels = roles["syncd-externalservices-edit"]["metadata"]["labels"]
    assert "rbac.authorization.k8s.io/aggregate-to-edit" not in labels  # a choice (below)
    assert (
        roles["syncd-externalservices-view"]["metadata"]["labels"][
            "rbac.authorization.k8s.io/aggregate-to-view"
        ]
        == "true"
    )
    for_editors = _template(("external-services", "for-editors"))
    (edit,) = [d for d in for_editors if d["metadata"]["name"] == "syncd-externalservices-edit"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    args = pod_templates(documents)[0]["spec"]["containers"][0]["args"]
    assert "--resources" in args
    dry_run_apply(admin_api, documents, RELEASE_NAMESPACE)
