"""Per-backend DNS names, asked of a real CoreDNS that reads syncd's slices from the API
server, as a cluster's DNS does (its `kubernetes` plugin)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.query
import pytest
import yaml
from kubernetes import client as k8s

from harness.coredns_server import ZONE
from harness.helpers import CEPH_EXAMPLE, ceph_target, run_once, target, wait_for, write_config

pytestmark = pytest.mark.apiserver

SERVICE = "ocs-external-rgw-lb"


def answers(coredns, name: str, rdtype: str, wanted, timeout: float = 30):
    """Wait until CoreDNS answers `wanted` (it follows the API server by a watch)."""
    seen = []

    def check():
        seen.append(coredns.ask(name, rdtype))
        return seen[-1] == wanted

    try:
        wait_for(check, f"{rdtype} {name} -> {wanted}", timeout=timeout, interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer: {seen[-1]!r}") from None


def fqdn(*labels: str) -> str:
    return ".".join((*labels, "svc", ZONE)) + "."


def test_the_ceph_example_names_each_gateway_in_the_cluster_dns(apiserver, admin_api, coredns):
    """The example as shipped, in its own namespace: rgw-50...storage.svc answers .50."""
    core = k8s.CoreV1Api(admin_api)
    if not any(ns.metadata.name == "storage" for ns in core.list_namespace().items):
        core.create_namespace({"metadata": {"name": "storage"}})
    run_once(CEPH_EXAMPLE, apiserver.syncd_kubeconfig)
    for host in range(50, 56):
        answers(coredns, fqdn(f"rgw-{host}", SERVICE, "storage"), "A", [f"192.168.7.{host}"])
    cluster_ip = core.read_namespaced_service(SERVICE, "storage").spec.cluster_ip
    answers(coredns, fqdn(SERVICE, "storage"), "A", [cluster_ip])  # not headless: its ClusterIP
    srv = fqdn("_http._tcp." + SERVICE, "storage")  # ... and SRV names the Service's port
    answers(coredns, srv, "SRV", [f"0 100 80 {fqdn(SERVICE, 'storage')}"])


def test_a_headless_target_answers_every_ready_backend_and_each_by_name(
    run_syncd, coredns, namespace, tmp_path
):
    backends = [
        {"address": "192.168.7.50", "port": 8080, "hostname": "rgw-50"},
        {"address": "192.168.7.51", "port": 8080, "hostname": "rgw-51"},
        {"address": "192.168.7.52", "port": 8080, "hostname": "rgw-52", "ready": False},
        {"address": "2001:db8::53", "port": 8080, "hostname": "rgw-53"},
    ]
    config = write_config(tmp_path / "c.yaml", target(namespace, "rgw", backends, headless=True))
    run_syncd(config)
    answers(coredns, fqdn("rgw", namespace), "A", ["192.168.7.50", "192.168.7.51"])
    answers(coredns, fqdn("rgw", namespace), "AAAA", ["2001:db8::53"])
    answers(coredns, fqdn("rgw-50", "rgw", namespace), "A", ["192.168.7.50"])
    answers(coredns, fqdn("rgw-53", "rgw", namespace), "AAAA", ["2001:db8::53"])
    # not ready: out of DNS, by name too
    answers(coredns, fqdn("rgw-52", "rgw", namespace), "A", "NXDOMAIN")


def test_srv_of_a_named_port_lists_every_host_and_port_under_its_name(
    run_syncd, coredns, namespace, tmp_path
):
    """Six gateways on 8080 and 8081 under one name each: one SRV record per (name, port),
    twelve. They do not fit in a plain 512-byte UDP answer: CoreDNS truncates it (TC) and
    a resolver asks again over TCP; a client that does not sees some of them only."""
    config = write_config(tmp_path / "c.yaml", ceph_target(namespace, headless=True))
    run_syncd(config)
    srv = fqdn("_http._tcp." + SERVICE, namespace)
    wanted = sorted(
        f"0 8 {port} {fqdn(f'rgw-{host}', SERVICE, namespace)}"
        for host in range(50, 56)
        for port in (8080, 8081)
    )
    answers(coredns, srv, "SRV", wanted)
    udp = dns.query.udp(dns.message.make_query(srv, "SRV"), "127.0.0.1", port=coredns.port)
    assert udp.flags & dns.flags.TC
    assert 0 < sum(len(rrset) for rrset in udp.answer) < 12
    for host in range(50, 56):  # each target answers its host
        assert coredns.ask(fqdn(f"rgw-{host}", SERVICE, namespace), "A") == [f"192.168.7.{host}"]


def test_the_answers_follow_a_backend_turning_not_ready_removed_or_moved(
    run_syncd, coredns, namespace, tmp_path
):
    def config(**changes):
        backends = [
            {"address": f"192.168.7.{n}", "port": 8080, "hostname": f"rgw-{n}"}
            for n in range(50, 54)
        ]
        for entry in backends:
            entry.update(changes.get(entry["hostname"], {}))
        kept = [b for b in backends if b.get("address")]
        return write_config(tmp_path / "c.yaml", target(namespace, "rgw", kept, headless=True))

    run_syncd(config())
    answers(coredns, fqdn("rgw", namespace), "A", [f"192.168.7.{n}" for n in range(50, 54)])
    run_syncd(
        config(
            **{
                "rgw-51": {"ready": False},
                "rgw-52": {"address": None},  # removed
                "rgw-53": {"address": "192.168.7.63"},  # moved
            }
        )
    )
    answers(coredns, fqdn("rgw", namespace), "A", ["192.168.7.50", "192.168.7.63"])
    answers(coredns, fqdn("rgw-51", "rgw", namespace), "A", "NXDOMAIN")
    answers(coredns, fqdn("rgw-52", "rgw", namespace), "A", "NXDOMAIN")
    answers(coredns, fqdn("rgw-53", "rgw", namespace), "A", ["192.168.7.63"])
    run_syncd(config())  # back
    answers(coredns, fqdn("rgw-51", "rgw", namespace), "A", ["192.168.7.51"])


def test_an_endpoint_address_reverses_to_its_cluster_names(run_syncd, coredns, namespace, tmp_path):
    """In-cluster reverse DNS of a backend changes once it is in a slice: one PTR per
    Service that lists it (an address no other test uses)."""
    backends = [{"address": "192.168.77.50", "port": 8080, "hostname": "rgw-50"}]
    run_syncd(write_config(tmp_path / "c.yaml", target(namespace, "rgw", backends)))
    ptr = "50.77.168.192.in-addr.arpa."
    answers(coredns, ptr, "PTR", [fqdn("rgw-50", "rgw", namespace)])
    second = target(namespace, "s3", ["192.168.77.50:8080"])
    run_syncd(write_config(tmp_path / "c.yaml", target(namespace, "rgw", backends), second))
    unnamed = fqdn("192-168-77-50", "s3", namespace)  # no hostname: the dashed address
    answers(coredns, ptr, "PTR", sorted([fqdn("rgw-50", "rgw", namespace), unnamed]))


def test_a_clusterip_service_cannot_become_headless_and_syncd_says_what_to_do(
    run_syncd, apiserver, admin, namespace, tmp_path
):
    backends = ["192.168.7.50:8080"]
    run_syncd(write_config(tmp_path / "c.yaml", target(namespace, "rgw", backends)))
    before = admin.get("Service", namespace, "rgw")
    assert before["spec"]["clusterIP"] not in ("", "None")
    headless = write_config(tmp_path / "h.yaml", target(namespace, "rgw", backends, headless=True))
    said = (
        f"Service {namespace}/rgw has a ClusterIP and headless: true asks for none; a "
        "Service's clusterIP cannot change in place: delete it "
        f"(kubectl delete service -n {namespace} rgw)"
    )
    from harness.helpers import syncd

    checked = syncd(
        "check", "--config", headless, "--kubeconfig", apiserver.syncd_kubeconfig,
        "--owner-id", namespace,
    )  # fmt: skip
    dry = run_syncd(headless, "--dry-run")
    run = run_syncd(headless)
    for result in (checked, dry, run):
        assert said in result.stdout + result.stderr, result.stdout + result.stderr
    after = admin.get("Service", namespace, "rgw")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # never deleted
    assert after["spec"]["clusterIP"] == before["spec"]["clusterIP"]
    # deleted by its owner, it comes back headless
    admin.delete("Service", namespace, "rgw")
    run_syncd(headless)
    assert admin.get("Service", namespace, "rgw")["spec"]["clusterIP"] == "None"


def test_the_rendered_example_keeps_one_name_per_gateway_on_both_ports():
    from harness.helpers import syncd

    rendered = syncd("render", "--config", CEPH_EXAMPLE, check=0).stdout
    slices = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "EndpointSlice"]
    for obj in slices:
        names = {e["addresses"][0]: e.get("hostname") for e in obj["endpoints"]}
        assert names == {f"192.168.7.{n}": f"rgw-{n}" for n in range(50, 56)}
