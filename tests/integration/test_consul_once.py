"""The Consul source in one-shot mode, against a real Consul agent and kube-apiserver."""

from __future__ import annotations

import pytest

from harness.helpers import (
    endpoint_pairs,
    only_stale_events,
    readiness,
    slices_of,
    target_with,
    write_config,
)

pytestmark = pytest.mark.apiserver

GATEWAYS = [f"192.0.2.{n}" for n in range(50, 56)]


def consul_target(namespace: str, service: str, **source) -> dict:
    return target_with(namespace, service, {"type": "consul", "service": service, **source})


def write(path, agent, *targets, **consul):
    return write_config(path, *targets, consul={**agent.config_section(), **consul})


def register_gateways(agent, service: str) -> None:
    for address in GATEWAYS:
        for port in (8080, 8081):
            agent.register(f"{service}-{address}-{port}", service, address, port)


def test_twelve_gateways_on_two_ports_become_two_slices(
    run_syncd, consul, admin, namespace, tmp_path
):
    register_gateways(consul, f"rgw-{namespace}")
    target = consul_target(namespace, f"rgw-{namespace}")
    result = run_syncd(write(tmp_path / "c.yaml", consul, target))
    slices = slices_of(admin, namespace, f"rgw-{namespace}")
    assert endpoint_pairs(slices) == {(a, p) for a in GATEWAYS for p in (8080, 8081)}
    assert len(slices) == 2
    assert "consul service" in result.stderr and "12 backends, 12 ready" in result.stderr


def test_check_states_map_to_readiness(run_syncd, consul, admin, namespace, tmp_path):
    service = f"states-{namespace}"
    for n, status in enumerate(["passing", "warning", "critical", "passing"], start=1):
        consul.register(f"{service}-{n}", service, f"192.0.2.{n}", 8080, status=status)
    consul.maintenance(f"{service}-4", True)
    target = consul_target(namespace, service)
    config = write(tmp_path / "c.yaml", consul, target)
    run_syncd(config)
    state = readiness(slices_of(admin, namespace, service))
    assert state == {
        ("192.0.2.1", 8080): True,
        ("192.0.2.2", 8080): True,
        ("192.0.2.3", 8080): False,
        ("192.0.2.4", 8080): False,
    }

    target = consul_target(namespace, service, warning_is_ready=False)
    consul.set_status(f"{service}-3", "passing")  # critical and back
    run_syncd(write(config, consul, target))
    state = readiness(slices_of(admin, namespace, service))
    assert state[("192.0.2.2", 8080)] is False and state[("192.0.2.3", 8080)] is True


def test_tag_filter_needs_all_tags(run_syncd, consul, admin, namespace, tmp_path):
    service = f"tags-{namespace}"
    consul.register(f"{service}-1", service, "192.0.2.1", 8080, tags=("prod", "rgw"))
    consul.register(f"{service}-2", service, "192.0.2.2", 8080, tags=("prod",))
    consul.register(f"{service}-3", service, "192.0.2.3", 8080, tags=("rgw",))
    target = consul_target(namespace, service, tags=["prod", "rgw"])
    run_syncd(write(tmp_path / "c.yaml", consul, target))
    assert endpoint_pairs(slices_of(admin, namespace, service)) == {("192.0.2.1", 8080)}


def test_bad_registry_entries_are_dropped_and_the_rest_applied(
    run_syncd, consul, admin, namespace, tmp_path
):
    service = f"untrusted-{namespace}"
    consul.register(f"{service}-ok", service, "192.0.2.1", 8080)
    consul.register(f"{service}-metadata", service, "169.254.169.254", 80)
    consul.register(f"{service}-loopback", service, "127.0.0.1", 8080)
    consul.register(f"{service}-dup", service, "192.0.2.1", 8080)
    target = consul_target(namespace, service)
    result = run_syncd(write(tmp_path / "c.yaml", consul, target), "--log-level", "warning")
    assert endpoint_pairs(slices_of(admin, namespace, service)) == {("192.0.2.1", 8080)}
    assert "'169.254.169.254' is a link-local address" in result.stderr
    assert "'127.0.0.1' is a loopback address" in result.stderr
    assert "duplicates 192.0.2.1 port 8080; merged" in result.stderr


def test_zero_instances_is_a_real_answer_applied_as_an_empty_slice_when_allowed(
    run_syncd, consul, admin, namespace, tmp_path
):
    service = f"empty-{namespace}"
    consul.register(f"{service}-1", service, "192.0.2.1", 8080)
    target = consul_target(namespace, service)
    config = write(tmp_path / "c.yaml", consul, target)
    run_syncd(config)
    consul.deregister(f"{service}-1")
    protected = run_syncd(config, check=1)  # by default, drain protection keeps the endpoint
    assert "PROTECTED: drain protection" in protected.stderr
    assert endpoint_pairs(slices_of(admin, namespace, service)) == {("192.0.2.1", 8080)}
    run_syncd(write(config, consul, {**target, "drain_floor": 0}))
    (placeholder,) = slices_of(admin, namespace, service)
    assert placeholder["metadata"]["name"] == f"{service}-empty"
    assert not placeholder.get("endpoints")


def test_acl_token_that_reads_only_the_watched_service(
    run_syncd, consul_acl, admin, namespace, tmp_path
):
    service = f"acl-{namespace}"
    consul_acl.register(f"{service}-1", service, "192.0.2.1", 8080)
    token = consul_acl.create_token(
        f'service "{service}" {{ policy = "read" }}\nnode_prefix "" {{ policy = "read" }}'
    )
    (tmp_path / "token").write_text(token + "\n")
    target = consul_target(namespace, service)
    config = write(tmp_path / "c.yaml", consul_acl, target, token_file="token")
    result = run_syncd(config, "--log-level", "debug")
    assert endpoint_pairs(slices_of(admin, namespace, service)) == {("192.0.2.1", 8080)}
    assert token not in result.stdout + result.stderr


def test_acl_filtered_answer_is_an_error_not_an_empty_service(
    run_syncd, consul_acl, admin, namespace, tmp_path
):
    service = f"aclf-{namespace}"
    consul_acl.register(f"{service}-1", service, "192.0.2.1", 8080)
    good = consul_acl.create_token(
        f'service "{service}" {{ policy = "read" }}\nnode_prefix "" {{ policy = "read" }}'
    )
    (tmp_path / "token").write_text(good)
    target = consul_target(namespace, service)
    config = write(tmp_path / "c.yaml", consul_acl, target, token_file="token")
    run_syncd(config)

    # A token that may read another service only: Consul answers 200 with nothing in it.
    (tmp_path / "token").write_text(
        consul_acl.create_token(
            'service "other" { policy = "read" }\nnode_prefix "" { policy = "read" }'
        )
    )
    result = run_syncd(config, check=1)
    assert "STALE" in result.stderr and "filtered the answer by ACLs" in result.stderr
    assert endpoint_pairs(slices_of(admin, namespace, service)) == {("192.0.2.1", 8080)}

    (tmp_path / "token").write_text("00000000-0000-0000-0000-000000000000")  # unknown token
    result = run_syncd(config, check=1)
    assert "ACL token lacks read access" in result.stderr
    assert endpoint_pairs(slices_of(admin, namespace, service)) == {("192.0.2.1", 8080)}


def test_unreachable_consul_in_once_mode_keeps_what_is_applied(
    run_syncd, consul, admin, apiserver, namespace, tmp_path
):
    from harness.kube_apiserver import free_port

    service = f"down-{namespace}"
    consul.register(f"{service}-1", service, "192.0.2.1", 8080)
    target = consul_target(namespace, service)
    run_syncd(write(tmp_path / "c.yaml", consul, target))
    config = write_config(
        tmp_path / "c.yaml", target, consul={"address": f"127.0.0.1:{free_port()}", "timeout": 1}
    )
    mark = apiserver.audit.mark()
    result = run_syncd(config, check=1)
    assert f"{namespace}/{service}: STALE: no source answered" in result.stderr
    assert ": connection refused" in result.stderr  # the cause, not ConnectionError
    assert only_stale_events(apiserver.audit.writes_since(mark))  # no object written
    assert endpoint_pairs(slices_of(admin, namespace, service)) == {("192.0.2.1", 8080)}


def test_tls_with_ca_client_certificate_and_server_name(
    run_syncd, consul_tls, admin, namespace, tmp_path
):
    service = f"tls-{namespace}"
    consul_tls.register(f"{service}-1", service, "192.0.2.1", 8080)
    certs = consul_tls.certs
    target = consul_target(namespace, service)
    tls = {
        "ca_file": str(certs / "ca.pem"),
        "cert_file": str(certs / "client.pem"),
        "key_file": str(certs / "client.key"),
    }

    def write(path, agent, target, **consul):  # each setting as given, none implied
        return write_config(path, target, consul={"address": agent.address, **consul})

    config = write(
        tmp_path / "c.yaml", consul_tls, target, **tls, tls_server_name=consul_tls.SERVER_NAME
    )
    run_syncd(config)
    assert endpoint_pairs(slices_of(admin, namespace, service)) == {("192.0.2.1", 8080)}

    # The certificate names consul.test, not 127.0.0.2: without the server name it must fail.
    result = run_syncd(write(tmp_path / "c.yaml", consul_tls, target, **tls), check=1)
    assert "STALE" in result.stderr
    assert (
        "TLS: the certificate does not verify (IP address mismatch, certificate is not valid"
        in (result.stderr)
    ), result.stderr
    # And the agent insists on a client certificate.
    no_client = {"ca_file": tls["ca_file"]}
    result = run_syncd(
        write(
            tmp_path / "c.yaml",
            consul_tls,
            target,
            **no_client,
            tls_server_name=consul_tls.SERVER_NAME,
        ),
        check=1,
    )
    assert "STALE" in result.stderr


def test_instances_are_named_from_a_meta_key_and_a_bad_name_is_left_out(
    run_syncd, consul, admin, namespace, tmp_path
):
    service = f"named-{namespace}"
    consul.register(f"{service}-1", service, "192.0.2.61", 8080, Meta={"dns": "RGW-61"})
    consul.register(f"{service}-2", service, "192.0.2.62", 8080, Meta={"dns": "rgw_62"})
    consul.register(f"{service}-3", service, "192.0.2.63", 8080)
    target = consul_target(namespace, service, hostname_from="meta:dns")
    result = run_syncd(write(tmp_path / "c.yaml", consul, target))
    names = {
        e["addresses"][0]: e.get("hostname")
        for s in slices_of(admin, namespace, service)
        for e in s["endpoints"]
    }
    assert names == {"192.0.2.61": "rgw-61", "192.0.2.62": None, "192.0.2.63": None}
    assert f"{service}-2: meta dns 'rgw_62' is not a hostname" in result.stderr
