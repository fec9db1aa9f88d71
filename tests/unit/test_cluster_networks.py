"""The cluster's own networks: what they are made of, and a resource pointing into them is
refused whole, its endpoints withdrawn, whatever the removal guard and drain protection
would otherwise hold; a file target is only warned."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from syncd.cluster_networks import (
    ClusterNetworks,
    describe_networks,
    file_target_warnings,
    networks_of,
)
from syncd.errors import SourceError
from syncd.live import LiveState, seed_memory
from syncd.model import (
    AddressPolicy,
    Backend,
    EndpointPort,
    ResourceRef,
    ServicePort,
    Snapshot,
    Target,
)
from syncd.pipeline import run
from syncd.plan import Action
from syncd.policy import PolicyState
from syncd.render import render_target
from syncd.results import Outcome
from syncd.sources.consul_config import ConsulSourceConfig
from syncd.sources.static import StaticSourceConfig

NODES = [
    {
        "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "172.18.0.2"},
                {"type": "Hostname", "address": "node-1"},
            ]
        },
    },
    {"metadata": {"name": "node-2"}, "spec": {"podCIDR": "10.244.2.0/24"}, "status": {}},
]
SERVICE_CIDRS = [{"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16"]}}]
NETWORKS = networks_of(NODES, SERVICE_CIDRS, AddressPolicy())

PORT = (EndpointPort("http", 8080),)
RESOURCE = Target(
    "team-a",
    "db",
    (ServicePort("http", 80),),
    (ConsulSourceConfig("db", "http"),),
    resource=ResourceRef("db", "uid-r"),
)
FILE_TARGET = replace(RESOURCE, resource=None)


def _backends(*addresses: str) -> frozenset[Backend]:
    return frozenset(Backend(a, PORT) for a in addresses)


def _step(target, answer, memory=None, live=None, networks=NETWORKS, policy=None):
    return run(
        target,
        [answer],
        memory or PolicyState(),
        live or LiveState(),
        now=100.0,
        address_policy=policy or AddressPolicy(),
        owner_id="me",
        networks=networks,
    )


def _applied(target, backends) -> LiveState:
    objects = render_target(target, backends, "me", (), "uid-1")
    for obj in objects:
        obj["metadata"].update(uid="uid-1", resourceVersion="7")
    return LiveState.of(service=objects[0], slices=tuple(objects[1:]))


def test_pod_networks_node_addresses_and_service_networks_are_the_clusters():
    found = {str(a): n.what for a in ("10.244.1.5", "fd00:10:244:1::9", "172.18.0.2",
                                      "10.244.2.200", "10.96.12.1")
             if (n := NETWORKS.containing(a)) is not None}  # fmt: skip
    assert found == {
        "10.244.1.5": "the pod network of Node node-1",
        "fd00:10:244:1::9": "the pod network of Node node-1",
        "172.18.0.2": "an address of Node node-1",
        "10.244.2.200": "the pod network of Node node-2",
        "10.96.12.1": "the Service network, ServiceCIDR kubernetes",
    }
    assert NETWORKS.containing("192.0.2.10") is None
    assert NETWORKS.containing("172.18.0.3") is None  # a node's address, not its subnet
    assert "2 pod networks" not in describe_networks(NETWORKS)  # three: one is IPv6
    assert "3 pod networks, 1 node addresses, Service network 10.96.0.0/16" in describe_networks(
        NETWORKS
    )


def test_the_most_specific_network_names_an_address():
    policy = AddressPolicy(cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
    networks = networks_of(NODES, (), policy)
    assert networks.containing("10.244.1.5").what == "the pod network of Node node-1"
    assert networks.containing("10.244.9.5").what == (
        "a cluster network, address_policy.cluster_cidrs"
    )


def test_a_resource_pointing_at_a_pod_is_refused_and_nothing_is_written():
    step = _step(RESOURCE, Snapshot(_backends("192.0.2.10", "10.244.1.5"), "consul db"))
    assert step.plan is None and step.result is not None
    assert step.result.outcome is Outcome.CLUSTER_ADDRESS
    assert "10.244.1.5 is in 10.244.1.0/24 (the pod network of Node node-1)" in (
        step.result.message
    )
    assert "CVE-2021-25740" in step.result.message


def test_an_applied_resource_whose_address_joins_a_cluster_network_is_withdrawn():
    """The network changed, not the spec: its endpoint objects are deleted, at once, though
    the removal guard and drain protection would hold a registry's removal of them all."""
    applied = _backends("10.244.3.7", "10.244.3.8")
    live = _applied(RESOURCE, applied)
    memory = seed_memory(RESOURCE, live, "me", one_shot=False)
    assert _step(RESOURCE, Snapshot(applied, "consul db"), memory, live).result is None
    grown = networks_of(
        [*NODES, {"metadata": {"name": "node-3"}, "spec": {"podCIDR": "10.244.3.0/24"}}],
        SERVICE_CIDRS,
        AddressPolicy(),
    )
    step = _step(RESOURCE, Snapshot(applied, "consul db"), memory, live, grown)
    assert step.result is not None and step.result.outcome is Outcome.CLUSTER_ADDRESS
    assert step.plan is not None
    assert [(c.action, c.kind) for c in step.plan.changes] == [
        (Action.DELETE, "EndpointSlice")
    ]  # the Service stays: its name resolves, clients are refused
    assert step.memory.applied is None  # nothing holds the next decision back


def test_a_withdrawn_resource_stays_withdrawn_while_its_source_fails():
    live = _applied(RESOURCE, _backends("10.244.1.9"))
    step = _step(RESOURCE, SourceError("consul down"), live=live)
    assert step.result.outcome is Outcome.CLUSTER_ADDRESS
    assert step.plan is not None and step.plan.changes[0].action is Action.DELETE


def test_the_admins_config_lets_a_namespace_through_and_a_file_target_is_only_warned():
    answer = Snapshot(_backends("10.244.1.5"), "consul db")
    policy = AddressPolicy(cluster_network_namespaces=("team-a",))
    assert _step(RESOURCE, answer, policy=policy).plan is not None
    step = _step(FILE_TARGET, answer)
    assert step.plan is not None
    assert any("10.244.1.5 is in 10.244.1.0/24" in w for w in step.evaluation.warnings)


def test_unknown_networks_write_nothing_and_withdraw_nothing_for_a_resource():
    live = _applied(RESOURCE, _backends("192.0.2.10"))
    unknown = ClusterNetworks(unknown="nodes is forbidden")
    step = _step(RESOURCE, Snapshot(_backends("192.0.2.11"), "consul db"), live=live,
                 networks=unknown)  # fmt: skip
    assert step.plan is None and step.result.outcome is Outcome.STALE
    assert "nodes is forbidden" in step.result.message
    file_step = _step(FILE_TARGET, Snapshot(_backends("192.0.2.11"), "c"), networks=unknown)
    assert file_step.plan is not None  # the admin's targets go on


def test_without_a_cluster_nothing_is_refused():
    answer = Snapshot(_backends("10.244.1.5"), "static list")
    assert _step(RESOURCE, answer, networks=None).plan is not None
    assert file_target_warnings(FILE_TARGET, None, answer.backends) == []


def test_a_static_resource_with_a_cluster_address_is_refused_like_any_other():
    target = replace(
        RESOURCE, sources=(StaticSourceConfig(backends=tuple(_backends("10.96.0.1"))),)
    )
    step = _step(target, Snapshot(_backends("10.96.0.1"), "static list"))
    assert step.result.outcome is Outcome.CLUSTER_ADDRESS
    assert "the Service network, ServiceCIDR kubernetes" in step.result.message
