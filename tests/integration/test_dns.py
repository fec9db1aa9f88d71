"""The DNS source against a real BIND server changed with RFC 2136 updates."""

from __future__ import annotations

import time

import pytest

from harness.helpers import (
    endpoint_pairs,
    only_stale_events,
    readiness,
    slices_of,
    syncd,
    target_with,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.apiserver


def dns_config(path, server, namespace, service, target_extra=None, **source):
    source = {
        "type": "dns",
        "nameservers": [server.nameserver],
        "timeout": 1,
        "min_ttl": 1,
        **source,
    }
    return write_config(path, target_with(namespace, service, source, **(target_extra or {})))


def test_srv_priorities_are_a_failover_order(run_syncd, bind, admin, namespace, tmp_path):
    srv = f"_rgw._tcp.{namespace}.example.test."
    bind.update(
        ("add", f"gw1.{namespace}", 2, "A", "192.0.2.1"),
        ("add", f"gw2.{namespace}", 2, "A", "192.0.2.2"),
        ("add", f"gw3.{namespace}", 2, "A", "198.51.100.3"),
        ("add", srv, 2, "SRV", f"10 60 8080 gw1.{namespace}.example.test."),
        ("add", srv, 2, "SRV", f"10 40 8080 gw2.{namespace}.example.test."),
        ("add", srv, 2, "SRV", f"20 100 8081 gw3.{namespace}.example.test."),
    )
    config = dns_config(tmp_path / "c.yaml", bind, namespace, "rgw", srv=srv)
    run_syncd(config)
    assert readiness(slices_of(admin, namespace, "rgw")) == {
        ("192.0.2.1", 8080): True,
        ("192.0.2.2", 8080): True,
        ("198.51.100.3", 8081): False,
    }
    # The primary group's targets become unusable: the next priority takes over.
    bind.update(
        ("replace", f"gw1.{namespace}", 2, "A", "127.0.0.1"), ("delete", f"gw2.{namespace}")
    )
    result = run_syncd(config)
    assert readiness(slices_of(admin, namespace, "rgw")) == {("198.51.100.3", 8081): True}
    assert "does not resolve; skipped" in result.stderr
    assert "'127.0.0.1' is a loopback address" in result.stderr


def test_a_and_aaaa_records_give_two_slices(run_syncd, bind, admin, namespace, tmp_path):
    bind.update(
        ("add", f"www.{namespace}", 2, "A", "192.0.2.20"),
        ("add", f"www.{namespace}", 2, "AAAA", "2001:db8::20"),
        ("add", f"alias.{namespace}", 2, "CNAME", f"www.{namespace}.example.test."),
    )
    config = dns_config(
        tmp_path / "c.yaml",
        bind,
        namespace,
        "www",
        name=f"alias.{namespace}.example.test",
        port=8443,
    )
    run_syncd(config)
    slices = {s["addressType"]: s for s in slices_of(admin, namespace, "www")}
    assert set(slices) == {"IPv4", "IPv6"}
    assert endpoint_pairs(slices.values()) == {("192.0.2.20", 8443), ("2001:db8::20", 8443)}


def test_nxdomain_is_a_real_empty_answer(run_syncd, bind, admin, namespace, tmp_path):
    bind.update(("add", f"gone.{namespace}", 2, "A", "192.0.2.30"))
    config = dns_config(
        tmp_path / "c.yaml", bind, namespace, "gone", name=f"gone.{namespace}.example.test", port=80
    )
    run_syncd(config)
    bind.update(("delete", f"gone.{namespace}"))
    assert "PROTECTED" in run_syncd(config, check=1).stderr  # drain protection, by default
    name = f"gone.{namespace}.example.test"
    dns_config(config, bind, namespace, "gone", {"drain_floor": 0}, name=name, port=80)
    run_syncd(config)
    (placeholder,) = slices_of(admin, namespace, "gone")
    assert placeholder["metadata"]["name"] == "gone-empty"


def test_a_name_that_does_not_exist_is_warned_and_never_creates_an_empty_service(
    run_syncd, bind, admin, namespace, tmp_path
):
    """A typo (rgw.ceph.exmaple.com) looks like NXDOMAIN: render and run say so, and a
    target never applied is not created empty from it; once the name exists it is."""
    name = f"typo.{namespace}.example.test"
    config = dns_config(tmp_path / "c.yaml", bind, namespace, "typo", name=name, port=80)
    rendered = syncd("render", "--config", config, check=1)
    assert f"{name} does not exist (NXDOMAIN)" in rendered.stderr
    assert "not creating an empty Service" in rendered.stderr
    result = run_syncd(config, check=1)
    assert "EMPTY" in result.stderr and "does not exist (NXDOMAIN)" in result.stderr
    assert admin.get("Service", namespace, "typo") is None and not slices_of(
        admin, namespace, "typo"
    )
    bind.update(("add", f"typo.{namespace}", 2, "A", "192.0.2.35"))
    run_syncd(config)
    assert endpoint_pairs(slices_of(admin, namespace, "typo")) == {("192.0.2.35", 80)}


def test_refused_is_an_error_that_keeps_what_is_applied(
    run_syncd, bind, admin, apiserver, namespace, tmp_path
):
    bind.update(("add", f"keep.{namespace}", 2, "A", "192.0.2.40"))
    config = dns_config(
        tmp_path / "c.yaml", bind, namespace, "keep", name=f"keep.{namespace}.example.test", port=80
    )
    run_syncd(config)
    dns_config(config, bind, namespace, "keep", name="keep.not-served.test", port=80)
    mark = apiserver.audit.mark()
    result = run_syncd(config, check=1)
    assert "STALE" in result.stderr and "REFUSED" in result.stderr
    assert only_stale_events(apiserver.audit.writes_since(mark))  # no object written
    assert endpoint_pairs(slices_of(admin, namespace, "keep")) == {("192.0.2.40", 80)}


def test_records_added_and_removed_show_within_ttl_plus_one_second(
    daemon,
    bind,
    admin,
    namespace,
    tmp_path,
):
    srv = f"_live._tcp.{namespace}.example.test."
    bind.update(
        ("add", f"a.{namespace}", 2, "A", "192.0.2.51"),
        ("add", f"b.{namespace}", 2, "A", "192.0.2.52"),
        ("add", srv, 2, "SRV", f"10 1 8080 a.{namespace}.example.test."),
    )
    daemon(dns_config(tmp_path / "c.yaml", bind, namespace, "live", srv=srv))
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, "live")) == {("192.0.2.51", 8080)},
        "first answer",
    )

    bind.update(("add", srv, 2, "SRV", f"10 1 8080 b.{namespace}.example.test."))
    started = time.monotonic()
    wait_for(
        lambda: ("192.0.2.52", 8080) in endpoint_pairs(slices_of(admin, namespace, "live")),
        "added target",
        timeout=10.0,
    )  # TTL 2 s + a lookup
    bind.update(("delete", srv, "SRV", f"10 1 8080 a.{namespace}.example.test."))
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, "live")) == {("192.0.2.52", 8080)},
        "removed target",
        timeout=10.0,
    )
    assert time.monotonic() - started < 15  # following the TTL, not a fixed long refresh


def test_nameserver_down_keeps_state_then_recovers(
    daemon,
    bind_private,
    admin,
    apiserver,
    namespace,
    tmp_path,
):
    server = bind_private
    server.update(("add", "svc", 2, "A", "192.0.2.61"))
    process = daemon(
        dns_config(tmp_path / "c.yaml", server, namespace, "down", name="svc.example.test", port=80)
    )
    wait_for(
        lambda: endpoint_pairs(slices_of(admin, namespace, "down")) == {("192.0.2.61", 80)},
        "first answer",
    )
    server.stop()
    mark = apiserver.audit.mark()
    time.sleep(4)
    assert only_stale_events(apiserver.audit.writes_since(mark))  # no object written
    assert endpoint_pairs(slices_of(admin, namespace, "down")) == {("192.0.2.61", 80)}
    assert "keeping the last state" in process.log_path.read_text()

    server.start()  # same port and zone (its journal keeps the update)
    server.update(("add", "svc", 2, "A", "192.0.2.62"))
    wait_for(
        lambda: (
            endpoint_pairs(slices_of(admin, namespace, "down"))
            == {("192.0.2.61", 80), ("192.0.2.62", 80)}
        ),
        "recovery",
        timeout=10,
    )


def test_srv_targets_name_their_endpoints(run_syncd, bind, admin, namespace, tmp_path):
    srv = f"_named._tcp.{namespace}.example.test."
    bind.update(
        ("add", f"RGW-71.{namespace}", 2, "A", "192.0.2.71"),
        ("add", f"rgw_72.{namespace}", 2, "A", "192.0.2.72"),
        ("add", srv, 2, "SRV", f"10 50 8080 RGW-71.{namespace}.example.test."),
        ("add", srv, 2, "SRV", f"10 50 8080 rgw_72.{namespace}.example.test."),
    )
    config = dns_config(tmp_path / "c.yaml", bind, namespace, "rgw", srv=srv)
    run_syncd(config)
    unnamed = {
        e.get("hostname") for s in slices_of(admin, namespace, "rgw") for e in s["endpoints"]
    }
    assert unnamed == {None}  # names are asked for
    config = dns_config(
        tmp_path / "c.yaml", bind, namespace, "rgw", srv=srv, hostname_from="srv_target"
    )
    result = run_syncd(config)
    names = {
        e["addresses"][0]: e.get("hostname")
        for s in slices_of(admin, namespace, "rgw")
        for e in s["endpoints"]
    }
    assert names == {"192.0.2.71": "rgw-71", "192.0.2.72": None}  # lowercased; '_' cannot be
    assert "'rgw_72' is not a hostname" in result.stderr
