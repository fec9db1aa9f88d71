"""ExternalService resources on the real API server: the CRD from deploy/ rejecting at the
door what `syncd check` rejects, `run --once --resources` applying them with a status that
says what happened (written only when it changes), a file target and a resource side by
side, ownership references, invalid and protected resources, and deletion pruning."""

from __future__ import annotations

import copy
import time

import pytest
import yaml
from kubernetes import client as k8s

from harness.helpers import REPO, slices_of, target, wait_for, write_config

pytestmark = pytest.mark.apiserver

GROUP, VERSION, PLURAL = "syncd.io", "v1alpha1", "externalservices"


def _resource(name: str, backends: list, **spec) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExternalService",
        "metadata": {"name": name},
        "spec": {
            "ports": [{"name": "http", "port": 80}],
            "sources": [{"type": "static", "backends": backends}],
            **spec,
        },
    }


class Resources:
    """kubectl for ExternalServices in one namespace, as the admin."""

    def __init__(self, admin_api, namespace: str):
        self.api = k8s.CustomObjectsApi(admin_api)
        self.namespace = namespace

    def create(self, body: dict) -> dict:
        return self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body, field_validation="Strict"
        )

    def get(self, name: str) -> dict:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def patch_spec(self, name: str, spec: dict) -> dict:
        return self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def condition(self, name: str, kind: str) -> dict:
        status = self.get(name).get("status") or {}
        return next((c for c in status.get("conditions", ()) if c["type"] == kind), {})

    def wait_until_true(self, name: str, kind: str, timeout: float = 30) -> dict:
        """The condition, once syncd has set it True."""

        def true() -> dict | None:
            condition = self.condition(name, kind)
            return condition if condition.get("status") == "True" else None

        return wait_for(true, f"{name}: {kind}", timeout=timeout)


@pytest.fixture
def resources(external_services, admin_api, namespace) -> Resources:
    return Resources(admin_api, namespace)


def resources_in(namespace: str) -> tuple[str, ...]:
    """Resources of this test's namespace only: others' are in the shared API server."""
    return ("--resources", "--namespaces", namespace)


def _no_targets(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("version: 1\n")
    return config


# -- validation at the door


INVALID = {
    "a port out of range": {"ports": [{"name": "http", "port": 70000}]},
    "an unknown source type": {"sources": [{"type": "etcd"}]},
    "no sources": {"sources": None},
    "a file in syncd's pod": {"sources": [{"type": "static", "file": "/etc/shadow"}]},
    "a consul source without a service": {"sources": [{"type": "consul"}]},
    "a consul_query source without a query": {"sources": [{"type": "consul_query"}]},
    "a dns source with srv and name": {"sources": [{"type": "dns", "srv": "a", "name": "b"}]},
    "min_ttl over max_ttl": {"sources": [{"type": "dns", "name": "a", "min_ttl": 9, "max_ttl": 2}]},
    "another namespace": {"namespace": "elsewhere"},
    "two ports without names": {"ports": [{"port": 80}, {"port": 81}]},
    "a duplicate port name": {"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]},
    "an unknown key": {"bogus": 1},
    "a CA file in syncd's pod": {"health_check": {"type": "https", "ca_file": "/x"}},
    "a probe timeout over its interval": {"health_check": {"type": "tcp", "timeout": 9}},
    "an unknown output": {"output": "both-ways"},
    "a bad Service name": {"service": "Not_A_Name"},
}


@pytest.mark.parametrize("mistake", sorted(INVALID))
def test_the_crd_rejects_at_the_door_what_check_rejects(mistake, resources):
    body = _resource("door", ["192.0.2.1:80"])
    for key, value in INVALID[mistake].items():
        if value is None:
            del body["spec"][key]
        else:
            body["spec"][key] = value
    with pytest.raises(k8s.ApiException) as refused:
        resources.create(body)
    assert refused.value.status in (400, 422), refused.value.body


def test_a_valid_resource_is_accepted_and_kubectl_explain_has_descriptions(resources, admin_api):
    resources.create(_resource("fine", ["192.0.2.1:80", {"address": "192.0.2.2", "port": 80}]))
    crd = k8s.ApiextensionsV1Api(admin_api).read_custom_resource_definition(
        "externalservices.syncd.io"
    )
    spec = crd.spec.versions[0].schema.open_apiv3_schema.properties["spec"]
    assert spec.description
    undescribed = [name for name, field in spec.properties.items() if not field.description]
    assert undescribed == [], "kubectl explain would say nothing of these"


# -- run --once --resources


def test_once_applies_a_resource_and_says_so_in_its_status(
    run_syncd, resources, admin, apiserver, namespace, tmp_path
):
    created = resources.create(_resource("rgw", ["192.0.2.10:8080", "192.0.2.11:8080"]))
    config = _no_targets(tmp_path)
    result = run_syncd(config, *resources_in(namespace))
    assert f"created Service {namespace}/rgw" in result.stderr

    service = admin.get("Service", namespace, "rgw")
    refs = service["metadata"]["ownerReferences"]
    assert refs == [
        {
            "apiVersion": "syncd.io/v1alpha1",
            "kind": "ExternalService",
            "name": "rgw",
            "uid": created["metadata"]["uid"],
            "controller": True,
        }
    ]
    assert service["metadata"]["labels"]["syncd.io/resource"] == "rgw"
    (piece,) = slices_of(admin, namespace, "rgw")
    assert piece["metadata"]["ownerReferences"][0]["kind"] == "Service"  # deleted with it

    status = resources.get("rgw")["status"]
    assert status["observedGeneration"] == created["metadata"]["generation"]
    assert status["backendSummary"] == "2/2" and status["service"] == "rgw"
    assert status["objects"] == ["EndpointSlice/" + piece["metadata"]["name"], "Service/rgw"]
    assert resources.condition("rgw", "Ready")["status"] == "True"
    assert resources.condition("rgw", "Valid")["status"] == "True"
    assert status["lastSyncTime"]

    mark = apiserver.audit.mark()
    run_syncd(config, *resources_in(namespace))
    assert apiserver.audit.writes_since(mark) == []  # converged: no object, no status write

    resources.patch_spec("rgw", {"sources": [{"type": "static", "backends": ["192.0.2.10:8080"]}]})
    mark = apiserver.audit.mark()
    run_syncd(config, *resources_in(namespace))
    writes = apiserver.audit.writes_since(mark)
    assert sorted((w.resource, "/status" in w.uri) for w in writes) == [
        ("endpointslices", False),
        ("externalservices", True),
    ], writes
    assert resources.get("rgw")["status"]["backendSummary"] == "1/1"


def test_an_invalid_edit_is_reported_in_status_and_keeps_what_is_applied(
    run_syncd, resources, admin, namespace, tmp_path
):
    resources.create(_resource("db", ["192.0.2.20:5432"]))
    config = _no_targets(tmp_path)
    run_syncd(config, *resources_in(namespace))
    resources.patch_spec("db", {"sources": [{"type": "static", "backends": ["10.0.0.300:5432"]}]})
    run_syncd(config, *resources_in(namespace))
    valid = resources.condition("db", "Valid")
    assert valid["status"] == "False" and "'10.0.0.300' is not an IP address" in valid["message"]
    assert resources.condition("db", "Ready")["reason"] == "Invalid"
    assert slices_of(admin, namespace, "db")  # a typo does not empty the Service


def test_deleting_a_resource_prunes_what_was_written_for_it(
    run_syncd, resources, admin, namespace, tmp_path
):
    resources.create(_resource("gone", ["192.0.2.30:80"]))
    config = _no_targets(tmp_path)
    run_syncd(config, *resources_in(namespace))
    assert slices_of(admin, namespace, "gone")
    plain = write_config(tmp_path / "plain.yaml", target(namespace, "other", ["192.0.2.31:80"]))
    without = run_syncd(plain, "--namespaces", namespace)  # reads no resources: prunes none
    assert "deleted" not in without.stderr and slices_of(admin, namespace, "gone")
    resources.delete("gone")
    result = run_syncd(config, *resources_in(namespace))
    assert f"{namespace}/gone: 2 changes applied; target removed from the config" in result.stderr
    assert admin.get("Service", namespace, "gone") is None
    assert not slices_of(admin, namespace, "gone")


def test_a_file_target_and_a_resource_run_side_by_side_and_a_shared_service_is_a_conflict(
    run_syncd, resources, admin, namespace, tmp_path
):
    config = write_config(tmp_path / "c.yaml", target(namespace, "from-file", ["192.0.2.40:80"]))
    resources.create(_resource("from-resource", ["192.0.2.41:80"]))
    resources.create(_resource("claims-file", ["192.0.2.42:80"], service="from-file"))
    run_syncd(config, *resources_in(namespace))
    assert slices_of(admin, namespace, "from-file") and slices_of(admin, namespace, "from-resource")
    conflict = resources.condition("claims-file", "Conflict")
    assert conflict["status"] == "True" and "is a target of the config file" in conflict["message"]
    assert resources.condition("claims-file", "Ready")["reason"] == "Conflict"
    pairs = {
        e["addresses"][0] for s in slices_of(admin, namespace, "from-file") for e in s["endpoints"]
    }
    assert pairs == {"192.0.2.40"}  # the file's target is applied


def test_a_resource_cannot_reach_a_protected_service(
    run_syncd, external_services, admin_api, tmp_path
):
    system = Resources(admin_api, "kube-system")
    body = copy.deepcopy(_resource("hijack", ["192.0.2.50:53"]))
    body["spec"]["service"] = "kube-dns"
    system.create(body)
    try:
        run_syncd(_no_targets(tmp_path), *resources_in("kube-system"))
        valid = wait_for(lambda: system.condition("hijack", "Valid") or None, "a status")
        assert valid["status"] == "False" and "protected namespace" in valid["message"]
    finally:
        system.delete("hijack")


# -- the daemon with --resources


def _consul_resource(name: str, service: str) -> dict:
    body = _resource(name, [])
    body["spec"]["sources"] = [{"type": "consul", "service": service}]
    return body


def test_the_daemon_follows_resources_and_their_status_tells_what_happens(
    daemon, resources, admin, apiserver, consul_dev, namespace, tmp_path
):
    """Create -> objects and Ready; an edit -> one object write and at most one status
    write; idle -> nothing written; the registry draining it -> DrainProtected; Consul down
    -> Stale; a Service someone else owns -> Conflict; delete -> pruned."""
    consul_dev.register("web-1", "web", "192.0.2.60", 8080)
    consul_dev.register("web-2", "web", "192.0.2.61", 8080)
    config = tmp_path / "c.yaml"
    config.write_text(f"version: 1\nconsul: {{address: '{consul_dev.address}'}}\n")
    daemon(config, *resources_in(namespace), "--resync-interval", "2")
    resources.create(_resource("files", ["192.0.2.70:80"]))
    resources.create(_consul_resource("web", "web"))

    resources.wait_until_true("files", "Ready")
    resources.wait_until_true("web", "Ready")
    assert resources.get("web")["status"]["backendSummary"] == "2/2"
    assert len(slices_of(admin, namespace, "web")[0]["endpoints"]) == 2

    mark = apiserver.audit.mark()
    resources.patch_spec(
        "files", {"sources": [{"type": "static", "backends": ["192.0.2.70:80", "192.0.2.71:80"]}]}
    )
    wait_for(lambda: resources.get("files")["status"].get("backendSummary") == "2/2", "the edit")
    wait_for(lambda: len(apiserver.audit.writes_since(mark)) >= 2, "its writes")
    idle = apiserver.audit.mark()  # from here: two resync rounds with nothing to do
    writes = apiserver.audit.writes_since(mark)
    assert sorted((w.resource, "/status" in w.uri) for w in writes) == [
        ("endpointslices", False),
        ("externalservices", True),
    ], writes
    time.sleep(6)
    assert apiserver.audit.writes_since(idle) == []

    consul_dev.set_status("web-1", "critical")
    consul_dev.set_status("web-2", "critical")
    protected = resources.wait_until_true("web", "DrainProtected")
    assert "drain" in protected["message"]
    assert resources.condition("web", "Ready")["reason"] == "DrainProtected"

    consul_dev.stop()
    resources.wait_until_true("web", "Stale", timeout=60)

    admin.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "theirs", "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }
    )
    resources.create(_resource("theirs", ["192.0.2.80:80"]))
    conflict = resources.wait_until_true("theirs", "Conflict")
    assert "not managed by syncd" in conflict["message"]

    resources.delete("files")
    wait_for(lambda: admin.get("Service", namespace, "files") is None, "pruned", timeout=30)
    assert not slices_of(admin, namespace, "files")


def test_the_example_in_config_is_accepted_and_applied(
    run_syncd, resources, admin, namespace, tmp_path
):
    example = yaml.safe_load((REPO / "config" / "resources" / "ceph-rgw.yaml").read_text())
    example["metadata"]["namespace"] = namespace  # the shared API server: the test's own
    resources.create(example)
    config = tmp_path / "syncd.yaml"
    config.write_text((REPO / "config" / "resources" / "syncd.yaml").read_text())
    run_syncd(config, *resources_in(namespace))
    status = resources.get("ocs-external-rgw-lb")["status"]
    assert status["backendSummary"] == "12/12"
    assert len(slices_of(admin, namespace, "ocs-external-rgw-lb")) == 2
