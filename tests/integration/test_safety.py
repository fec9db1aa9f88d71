"""Safe by default: drain protection against real Consul agents, and instance identity."""

from __future__ import annotations

import time
import uuid

import pytest

from harness.helpers import (
    endpoint_pairs,
    readiness,
    slices_of,
    syncd,
    target,
    target_with,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.apiserver

THREE = [f"203.0.113.{n}" for n in (1, 2, 3)]


def _consul_config(path, agent, namespace, service, **extra):
    return write_config(
        path,
        target_with(namespace, service, {"type": "consul", "service": service}, **extra),
        consul={"address": agent.address},
    )


def _events(admin, namespace, reason):
    return [e for e in admin.list("Event", namespace) if e["reason"] == reason]


def test_an_emptied_catalog_keeps_the_endpoints_until_the_registry_recovers(
    daemon, consul, admin, apiserver, namespace, tmp_path
):
    service = f"drain-{namespace}"
    for n, address in enumerate(THREE):
        consul.register(f"{service}-{n}", service, address, 8080)
    quick_guard = {"confirm_after": 1}  # the recovered answer replaces every backend
    process = daemon(
        _consul_config(tmp_path / "c.yaml", consul, namespace, service, guards=quick_guard)
    )
    wait_for(lambda: len(endpoint_pairs(slices_of(admin, namespace, service))) == 3, "3")

    for n in range(3):  # the catalog is wiped by mistake (one instance after the other:
        consul.deregister(f"{service}-{n}")  # 3 -> 2 -> 1 may apply, 1 -> 0 may not)
    wait_for(lambda: _events(admin, namespace, "DrainProtected"), "a DrainProtected event")
    log = process.log_path.read_text()
    assert "PROTECTED: drain protection" in log and "lists 0 ready backends" in log
    kept = readiness(slices_of(admin, namespace, service))
    mark = apiserver.audit.mark()
    time.sleep(2)  # long after the removal guard's confirm_after would have let it through
    assert [w for w in apiserver.audit.writes_since(mark) if w.resource != "events"] == []
    assert readiness(slices_of(admin, namespace, service)) == kept
    assert kept and all(kept.values()) and set(kept) <= {(a, 8080) for a in THREE}

    consul.register(f"{service}-new", service, "203.0.113.9", 8080)  # the registry recovers
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, service)) == {("203.0.113.9", 8080)},
        "the recovered registry's answer",
    )
    assert _events(admin, namespace, "DrainProtectionEnded")


def test_a_consul_agent_that_restarts_empty_does_not_drain_the_service(
    daemon, consul_dev, admin, namespace, tmp_path
):
    service = f"restart-{namespace}"
    for n, address in enumerate(THREE):
        consul_dev.register(f"{service}-{n}", service, address, 8080)
    process = daemon(_consul_config(tmp_path / "c.yaml", consul_dev, namespace, service))
    wait_for(lambda: len(endpoint_pairs(slices_of(admin, namespace, service))) == 3, "3")
    consul_dev.restart()  # in memory: it comes back with an empty catalog
    wait_for(lambda: "drain protection" in process.log_path.read_text(), "protection", timeout=20)
    time.sleep(1)
    assert len(endpoint_pairs(slices_of(admin, namespace, service))) == 3


def test_once_protects_too_and_a_lower_tier_still_takes_over(
    run_syncd, consul, admin, namespace, tmp_path
):
    service = f"tiers-{namespace}"
    consul.register(f"{service}-1", service, "203.0.113.1", 8080)
    config = _consul_config(tmp_path / "c.yaml", consul, namespace, service)
    run_syncd(config)
    consul.deregister(f"{service}-1")
    result = run_syncd(config, check=1)
    assert f"{namespace}/{service}: PROTECTED: drain protection" in result.stderr
    assert endpoint_pairs(slices_of(admin, namespace, service)) == {("203.0.113.1", 8080)}

    fallback = {"type": "static", "backends": ["203.0.113.50:8080"]}
    write_config(
        config,
        target_with(namespace, service, {"type": "consul", "service": service}, fallback),
        consul={"address": consul.address},
    )
    run_syncd(config)  # failover is not drain: the static tier has a ready backend
    assert endpoint_pairs(slices_of(admin, namespace, service)) == {("203.0.113.50", 8080)}


def test_drain_floor_0_lets_the_registry_empty_the_service(
    run_syncd, consul, admin, namespace, tmp_path
):
    service = f"allow-{namespace}"
    consul.register(f"{service}-1", service, "203.0.113.1", 8080)
    config = _consul_config(tmp_path / "c.yaml", consul, namespace, service, drain_floor=0)
    run_syncd(config)
    consul.deregister(f"{service}-1")
    run_syncd(config)
    assert endpoint_pairs(slices_of(admin, namespace, service)) == set()
    assert [s["metadata"]["name"] for s in slices_of(admin, namespace, service)] == [
        f"{service}-empty"
    ]


def test_an_operator_emptying_a_static_list_is_applied(run_syncd, admin, namespace, tmp_path):
    config = write_config(tmp_path / "c.yaml", target(namespace, "mine", ["203.0.113.1:80"]))
    run_syncd(config)
    write_config(config, target(namespace, "mine", [], guards={"confirm_after": 1}))
    run_syncd(config)  # the removal guard reads it again a second later, then applies it
    assert endpoint_pairs(slices_of(admin, namespace, "mine")) == set()


def test_two_configs_with_default_flags_never_prune_each_other(
    apiserver, admin, namespace, tmp_path
):
    """No --owner-id anywhere: each config is its own instance, named after its file."""
    team_a = tmp_path / f"team-a-{namespace}.yaml"
    team_b = tmp_path / f"team-b-{namespace}.yaml"
    kube = apiserver.syncd_kubeconfig

    def once(config, check=0):
        return syncd("run", "--config", config, "--kubeconfig", kube, "--once", check=check)

    write_config(
        team_a,
        target(namespace, "a-one", ["203.0.113.1:80"]),
        target(namespace, "a-two", ["203.0.113.2:80"]),
    )
    write_config(team_b, target(namespace, "b-one", ["203.0.113.3:80"]))
    once(team_a)
    once(team_b)  # b's run sees a's objects: not its own, never pruned
    for name in ("a-one", "a-two", "b-one"):
        assert slices_of(admin, namespace, name), name
    assert admin.get("Service", namespace, "a-one")["metadata"]["labels"]["syncd.io/owner"] == (
        f"team-a-{namespace}"
    )

    write_config(team_a, target(namespace, "a-one", ["203.0.113.1:80"]))  # a-two removed
    result = once(team_a)
    assert f"{namespace}/a-two: 2 changes applied; target removed from the config" in result.stderr
    assert admin.get("Service", namespace, "a-two") is None
    assert slices_of(admin, namespace, "a-one") and slices_of(admin, namespace, "b-one")

    clash = tmp_path / f"team-c-{namespace}.yaml"  # a third config claims b's Service
    write_config(clash, target(namespace, "b-one", ["203.0.113.9:80"]))
    result = once(clash, check=1)
    assert f"another syncd instance (owner 'team-b-{namespace}'" in result.stderr
    assert endpoint_pairs(slices_of(admin, namespace, "b-one")) == {("203.0.113.3", 80)}


def test_objects_of_the_old_shared_identity_are_adopted_not_pruned(
    run_syncd, admin, namespace, tmp_path
):
    old = write_config(
        tmp_path / "old.yaml",
        target(namespace, "kept", ["203.0.113.1:80"]),
        target(namespace, "left", ["203.0.113.2:80"]),
    )
    run_syncd(old, owner="default")  # as syncd 0.1 wrote everything
    new = write_config(
        tmp_path / "new.yaml", target(namespace, "kept", ["203.0.113.1:80"]), owner_id="storage"
    )
    result = run_syncd(new, owner=None)
    assert (
        admin.get("Service", namespace, "kept")["metadata"]["labels"]["syncd.io/owner"] == "storage"
    )
    assert admin.get("Service", namespace, "left") is not None  # never pruned by "storage"
    assert "left" not in result.stderr


@pytest.mark.parametrize(
    "namespace, service",
    [
        ("default", "kubernetes"),
        ("kube-system", "kube-dns"),
        ("kube-system", "new-one"),
        ("kube-public", "x"),
        ("kube-node-lease", "x"),
        ("openshift", "x"),
        ("openshift-ingress", "router"),
    ],
)
def test_a_protected_service_is_refused_by_check_render_and_run(namespace, service, tmp_path):
    manage = not (namespace == "default" and service == "kubernetes")
    config = write_config(
        tmp_path / "c.yaml",
        target(namespace, service, ["198.51.100.1:8080"], manage_service=manage),
    )
    for command in (["check"], ["render"], ["run", "--once"]):
        result = syncd(*command, "--config", config, check=2)
        (line,) = result.stderr.strip().splitlines()
        assert f"target {namespace}/{service}: " in line and "allow_protected" in line
    allowed = syncd(
        "check", "--config", config, "--allow-protected", f"{namespace}/{service}", check=0
    )
    assert "OK" in allowed.stdout


def test_the_sink_refuses_a_protected_service_however_it_got_there(apiserver, admin):
    """The loader refuses protected targets first; should one reach the sink any other way
    (a reload, a future source of targets), nothing is written and an Event says why."""
    from syncd.cache import ClusterCache
    from syncd.kube import Kube, KubeSettings
    from syncd.live import LiveState
    from syncd.model import Backend, EndpointPort, ServicePort, Target, port_set
    from syncd.pipeline import plan_target
    from syncd.policy import Decision
    from syncd.results import Outcome
    from syncd.sink import Sink
    from syncd.sources.static import StaticSourceConfig

    kube = Kube.connect(KubeSettings(kubeconfig=str(apiserver.syncd_kubeconfig)))
    try:
        target = Target(
            "kube-system",
            f"hijack-{uuid.uuid4().hex[:6]}",
            (ServicePort("http", 80),),
            (StaticSourceConfig(backends=()),),
        )
        backends = frozenset({Backend("198.51.100.9", port_set(EndpointPort("http", 8080, "TCP")))})
        plan = plan_target(target, Decision(backends, 0, "static", "test"), LiveState(), "t")
        mark = apiserver.audit.mark()
        result = Sink(kube, ClusterCache(kube), "t").apply(plan)
        assert result.outcome is Outcome.REFUSED, result
        writes = apiserver.audit.writes_since(mark)
        assert [(w.resource, w.namespace) for w in writes] == [("events", "kube-system")]
        events = [e for e in admin.list("Event", "kube-system") if e["reason"] == "SyncRefused"]
        assert any(e["involvedObject"]["name"] == target.service for e in events)
        assert admin.get("Service", "kube-system", target.service) is None
    finally:
        kube.close()
