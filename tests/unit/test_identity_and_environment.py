"""Instance identity, Consul addresses and the CONSUL_* environment, checked before use."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from syncd.addresses import parse_http_address
from syncd.errors import ConfigError
from syncd.model import ConsulConnection, Snapshot
from syncd.ownership import derivation_note, derive_owner_id, valid_owner_id
from syncd.sources.base import ChangeEmitter
from syncd.sources.consul_api import resolve_endpoint


@pytest.mark.parametrize(
    ("path", "owner"),
    [
        ("config/ceph-rgw.yaml", "ceph-rgw"),
        ("/etc/syncd/config.yaml", "config"),
        ("team a (prod).yml", "team-a-prod"),
        ("-.yaml", "syncd"),
        ("x" * 80 + ".yaml", "x" * 63),
        ("My Config.v2.yaml", "my-config.v2"),
        ("Ceph_RGW.yaml", "ceph-rgw"),
        ("a._b..c.yaml", "a.b.c"),
    ],
)
def test_the_default_identity_is_the_config_file_name_made_a_valid_owner_id(path, owner):
    assert derive_owner_id(Path(path)) == owner
    assert valid_owner_id(derive_owner_id(Path(path)))


@pytest.mark.parametrize(
    "owner", ["Ceph_RGW", "ceph_rgw", "Ceph", "a..b", "-a", "a-", "x" * 64, "", "a b"]
)
def test_an_owner_id_must_be_a_label_value_and_a_lease_name_suffix(owner):
    assert not valid_owner_id(owner)


def test_a_file_name_made_an_owner_id_says_so_and_a_cut_one_says_that_too():
    assert derivation_note(Path("ceph-rgw.yaml")) == ""
    assert "'Ceph_RGW' made a valid owner id" in derivation_note(Path("Ceph_RGW.yaml"))
    assert "cut to 63 characters" in derivation_note(Path("y" * 70 + ".yaml"))


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:8500", ("http", "127.0.0.1", 8500)),
        ("consul.internal", ("http", "consul.internal", 8500)),
        ("https://consul.internal", ("https", "consul.internal", 443)),
        ("http://[::1]:8501/", ("http", "[::1]", 8501)),
    ],
)
def test_consul_addresses_parse(text, parsed):
    assert parse_http_address(text, 8500) == parsed


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("http://[::1", "is not host:port"),
        ("http://127.0.0.1:99999", "is not host:port"),
        ("127.0.0.1:0", "port 0 is out of range"),
        ("ftp://host", "the scheme must be http or https"),
        ("http://user@host", "credentials in the address are neither used nor allowed"),
        ("http://host/v1", "is not host:port"),
        ("bad_host!:1", "is not a host name or IP address"),
        ("", "an address is required"),
    ],
)
def test_bad_consul_addresses_say_what_is_wrong(text, says):
    with pytest.raises(ValueError) as caught:
        parse_http_address(text, 8500)
    assert says in str(caught.value)


def test_the_consul_environment_is_checked_and_each_problem_names_its_variable(tmp_path):
    env = {
        "CONSUL_HTTP_ADDR": "http://127.0.0.1:99999",
        "CONSUL_HTTP_SSL": "maybe",
        "CONSUL_HTTP_TOKEN": "secret\nsecond line",
        "CONSUL_CACERT": str(tmp_path / "missing.pem"),
        "CONSUL_CLIENT_CERT": str(tmp_path / "missing-cert.pem"),
    }
    with pytest.raises(ConfigError) as caught:
        resolve_endpoint(ConsulConnection(), env)
    problems = caught.value.problems
    assert any(p.startswith("CONSUL_HTTP_ADDR: ") for p in problems)
    assert "CONSUL_HTTP_SSL: 'maybe' is not true or false" in problems
    assert any(p.startswith("CONSUL_HTTP_TOKEN: ") for p in problems)
    assert f"CONSUL_CACERT: cannot read {tmp_path / 'missing.pem'}" in problems
    assert any("go together" in p for p in problems)
    assert all("secret" not in p for p in problems)  # the token is never printed


def test_the_config_wins_over_the_environment_and_ssl_turns_on_https():
    endpoint = resolve_endpoint(
        ConsulConnection(address="consul.internal:8501"), {"CONSUL_HTTP_ADDR": "http://[::1"}
    )
    assert endpoint.url == "http://consul.internal:8501"
    endpoint = resolve_endpoint(
        ConsulConnection(), {"CONSUL_HTTP_ADDR": "c:1", "CONSUL_HTTP_SSL": "true"}
    )
    assert endpoint.url == "https://c:1"
    assert "token" not in repr(resolve_endpoint(ConsulConnection(), {"CONSUL_HTTP_TOKEN": "s3"}))


def test_a_dropped_registry_entry_is_logged_once_when_it_appears(caplog):
    answers = []
    emitter = ChangeEmitter(answers.append, "ns/svc")
    bad = "n1/meta: '169.254.169.254' is a link-local address; dropped"
    with caplog.at_level(logging.WARNING):
        for n in range(5):  # the registry answers again and again, other entries changing
            emitter.answer(Snapshot(frozenset(), f"consul service rgw #{n}", (bad,)))
    assert [r.getMessage() for r in caplog.records].count(
        f"ns/svc: consul service rgw #0: {bad}"
    ) == 1
    assert len(caplog.records) == 1
    assert len(answers) == 5


def test_every_consul_setting_in_the_config_beats_the_environment(tmp_path):
    token_file, ca = tmp_path / "token", tmp_path / "ca.pem"
    token_file.write_text("  from-the-config-file \n")
    ca.write_text("x")
    env = {
        "CONSUL_HTTP_ADDR": "http://env-host:1",
        "CONSUL_HTTP_TOKEN": "from-the-environment",
        "CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "missing"),
        "CONSUL_CACERT": str(tmp_path / "missing-ca.pem"),
        "CONSUL_TLS_SERVER_NAME": "env.name",
    }
    endpoint = resolve_endpoint(
        ConsulConnection(
            address="https://config-host:8501",
            token_file=token_file,
            ca_file=ca,
            tls_server_name="config.name",
        ),
        env,
    )
    assert endpoint.url == "https://config-host:8501"
    assert endpoint.token.current() == "from-the-config-file"  # and stripped
    assert endpoint.ca_file == str(ca)
    assert endpoint.server_name == "config.name"


def test_the_token_comes_from_the_variable_then_the_variable_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    both = {"CONSUL_HTTP_TOKEN": "from-the-variable", "CONSUL_HTTP_TOKEN_FILE": str(token_file)}
    assert resolve_endpoint(ConsulConnection(), both).token.current() == "from-the-variable"
    only_file = {"CONSUL_HTTP_TOKEN_FILE": str(token_file)}
    assert resolve_endpoint(ConsulConnection(), only_file).token.current() == "from-the-file"
    assert resolve_endpoint(ConsulConnection(), {}).token.current() is None  # no ACLs: fine


@pytest.mark.parametrize("where", ["variable", "variable file", "config file"])
def test_an_empty_token_from_anywhere_is_an_error_never_an_anonymous_request(where, tmp_path):
    empty = tmp_path / "token"
    empty.write_text("\n  \n")
    connection, env = ConsulConnection(), {}
    if where == "variable":
        env = {"CONSUL_HTTP_TOKEN": " "}
    elif where == "variable file":
        env = {"CONSUL_HTTP_TOKEN_FILE": str(empty)}
    else:
        connection = ConsulConnection(token_file=empty)
    with pytest.raises(ConfigError) as caught:
        resolve_endpoint(connection, env)
    assert any("empty" in p for p in caught.value.problems), caught.value.problems


def test_a_rotated_token_file_is_read_again_and_a_blank_moment_keeps_the_last(tmp_path):
    path = tmp_path / "token"
    path.write_text("first\n")
    source = resolve_endpoint(ConsulConnection(token_file=path), {}).token
    assert source.current() == "first"
    path.write_text("")  # a rotation caught half-way
    assert source.current() == "first"
    path.write_text("second\n")
    assert source.current() == "second" and source.generation == 1
    assert "second" not in repr(source)


def test_the_node_agent_address_expands_the_host_ip_from_the_environment():
    env = {"CONSUL_HTTP_ADDR": "http://$(HOST_IP):8500", "HOST_IP": "10.0.0.7"}
    assert resolve_endpoint(ConsulConnection(), env).url == "http://10.0.0.7:8500"
